"""Models of the study: the encoder, the VAE and the registered decoder families.

Importing this package registers every family (linear, mlp, conv, pixelcnn, gated_pixelcnn). A new family is
one module with one `@register`-ed class, imported here.
"""

from stages.model import factorized, gated, pixelcnn  # noqa: F401  (registers the families)
from stages.model.registry import DECODERS, Decoder, build_decoder
from stages.model.vae import VAE, EncoderConfig, GaussianEncoder

__all__ = ["DECODERS", "Decoder", "build_decoder", "build_model", "VAE", "EncoderConfig", "GaussianEncoder"]


def build_model(rung, encoder: EncoderConfig) -> VAE:
    """The VAE of a rung (anything with `family` and `decoder`, the family's Config: a
    `stages.params.Rung`) with the encoder of `encoder`."""
    return VAE(GaussianEncoder(encoder), build_decoder(rung.family, rung.decoder, encoder.latent_dim))
