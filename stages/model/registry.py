"""The decoder interface p(x|z) over binary 28x28 images, and the registry of families.

Every decoder exposes `log_prob(x, z) -> (B,)` in nats and `sample(z) -> x`; training and
evaluation never branch on the family. A family is one class with a `Config` (a `stages.schema.config`),
registered by name; a params entry `{family: name, <options>}` is validated against that
`Config` (unknown options are errors).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from stages.schema import FROM_LIST

IMAGE_SHAPE = (1, 28, 28)
N_PIXELS = 28 * 28
# MLP layer widths, in params.yaml a non-empty list
Widths = Annotated[tuple[Annotated[int, Field(ge=1, le=8192)], ...], Field(min_length=1), FROM_LIST]

DECODERS: dict[str, type[Decoder]] = {}


def register(family: str) -> Callable[[type[Decoder]], type[Decoder]]:
    """Class decorator: make a decoder family available to params.yaml by name."""

    def add(cls: type[Decoder]) -> type[Decoder]:
        if family in DECODERS:
            raise ValueError(f"decoder family {family!r} registered twice")
        cls.family = family
        DECODERS[family] = cls
        return cls

    return add


def fp32_layer(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Run the layer(s) that produce the logits in fp32, even under autocast.

    bf16 keeps 8 significant bits: a logit of 8 would be off by up to 0.03, and 784 such
    errors add up in log p(x|z) (measured: a 0.11 nat bias on a small PixelCNN, 0.03 with
    its 1x1 head in fp32). The last layers are a small share of the work.
    """
    with torch.autocast(h.device.type, enabled=False):
        return layer(h.float())


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i log Bernoulli(x_i | sigmoid(logit_i)) over pixels, in fp32.  (..., 784) -> (...)"""
    return -F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none").sum(-1)


class Decoder(nn.Module):
    """p(x|z): a distribution over binary images given a latent code."""

    family: ClassVar[str]
    Config: ClassVar[type]
    autoregressive: ClassVar[bool] = False
    power_rank: ClassVar[int]  # among families, weakest first; ties are broken by receptive field

    def __init__(self, config: Any, latent_dim: int) -> None:
        super().__init__()
        self.config = config
        self.latent_dim = latent_dim

    @property
    def uses_z(self) -> bool:
        """False for a decoder whose log_prob is the same for every z (the decoder alone)."""
        return True

    @property
    def receptive_field(self) -> int:
        """Causal receptive field: how many other pixels one pixel's distribution can depend
        on given z. 0 for a factorized decoder; the decoder-power measure of the ladder."""
        return 0

    def logits(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of every pixel.  x: (B,1,28,28), z: (B,D) -> (B,1,28,28)"""
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) in nats.  x: (B,1,28,28), z: (B,D) -> (B,)"""
        return bernoulli_log_prob(self.logits(x, z).flatten(1), x.flatten(1))

    def log_prob_k(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z_k) for K latents per image.  x: (B,1,28,28), z: (B,K,D) -> (B,K)

        Subclasses override this where the K evaluations share work.
        """
        b, k, d = z.shape
        x_k = x.repeat_interleave(k, dim=0)  # (B*K,1,28,28)
        return self.log_prob(x_k, z.reshape(b * k, d)).view(b, k)

    @torch.no_grad()
    def sample(
        self, z: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw x ~ p(x|z) exactly.  z: (B,D) -> x (B,1,28,28) in {0,1}, and the Bernoulli
        probability each pixel was drawn from (for an autoregressive decoder, along the path)."""
        raise NotImplementedError


def build_decoder(family: str, config: Any, latent_dim: int) -> Decoder:
    return DECODERS[family](config, latent_dim)
