"""The VAE: a diagonal Gaussian encoder q(z|x), the prior p(z) = N(0, I), and a decoder p(x|z).

ELBO(x) = E_q[log p(x|z)] - KL[q(z|x) || p(z)]  (Kingma & Welling 2014, Eq. 3), with the KL
in closed form (their Appendix B) and kept per latent dimension, which is what free bits
(Kingma et al. 2016) and the active-unit count act on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field
from torch import nn

from stages.model.registry import N_PIXELS, Decoder, Widths
from stages.schema import config

LOG_2PI = math.log(2 * math.pi)


@config
class EncoderConfig:
    latent_dim: int = Field(ge=1, le=1024)
    hidden: Widths = Field(description="MLP widths of q(z|x)")


class GaussianEncoder(nn.Module):
    """q(z|x) = N(mu(x), diag(exp(logvar(x)))) from an MLP on the flattened image."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = N_PIXELS
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 2 * config.latent_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B,1,28,28) -> mu, logvar: (B,D)

        Always fp32, also under autocast: the encoder is a small share of the work, and the
        proposal q(z|x) and the KL term stay exactly the same in every precision.
        """
        with torch.autocast(x.device.type, enabled=False):
            mu, logvar = self.net(x.flatten(1).float()).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)


def gaussian_kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL[N(mu, exp(logvar)) || N(0, 1)] per dimension.  (B,D) -> (B,D)"""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dim.  (..., D) -> (...)"""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I).  (..., D) -> (...)"""
    return -0.5 * (LOG_2PI + z.pow(2)).sum(-1)


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, k: int | None = None, generator=None
) -> torch.Tensor:
    """z = mu + sigma * eps.  (B,D) -> (B,D), or (B,K,D) when k is given."""
    shape = mu.shape if k is None else (mu.shape[0], k, mu.shape[1])
    eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
    if k is not None:
        mu, logvar = mu.unsqueeze(1), logvar.unsqueeze(1)
    return mu + torch.exp(0.5 * logvar) * eps


@dataclass
class ElboTerms:
    """Per-image terms of a one-sample ELBO, all fp32 nats."""

    log_px_z: torch.Tensor  # (B,) log p(x|z), z ~ q(z|x): minus the reconstruction term
    kl_per_dim: torch.Tensor  # (B,D) analytic KL[q(z|x) || p(z)] per latent dimension

    @property
    def kl(self) -> torch.Tensor:  # (B,)
        return self.kl_per_dim.sum(-1)

    @property
    def elbo(self) -> torch.Tensor:  # (B,)
        return self.log_px_z - self.kl


class VAE(nn.Module):
    def __init__(self, encoder: GaussianEncoder, decoder: Decoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    @property
    def latent_dim(self) -> int:
        return self.encoder.config.latent_dim

    def elbo_terms(self, x: torch.Tensor, generator=None) -> ElboTerms:
        """One reparameterized sample per image.  x: (B,1,28,28)"""
        mu, logvar = self.encoder(x)  # (B,D) each
        z = reparameterize(mu, logvar, generator=generator)  # (B,D)
        return ElboTerms(self.decoder.log_prob(x, z), gaussian_kl_per_dim(mu, logvar))

    def describe(self) -> dict[str, Any]:
        n_params = sum(p.numel() for p in self.parameters())
        return {"family": self.decoder.family, "n_params": n_params}
