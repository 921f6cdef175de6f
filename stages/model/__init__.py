"""Models of the study: the encoder, the VAE and the registered decoder families.

Importing this package registers every family (linear, mlp, conv, pixelcnn, gated_pixelcnn). A new family is
one module with one `@register`-ed class, imported here.
"""

from stages.model import factorized, gated, pixelcnn  # noqa: F401  (registers the families)
from stages.model.registry import DECODERS, Decoder, build_decoder
from stages.model.vae import VAE, EncoderConfig, GaussianEncoder

__all__ = ["DECODERS", "Decoder", "build_decoder", "VAE", "EncoderConfig", "GaussianEncoder"]
