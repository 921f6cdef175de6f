"""Factorized Bernoulli decoders: p(x|z) = prod_i Bernoulli(x_i | sigmoid(f(z)_i)).

The pixels are independent given z, so everything the image shares across pixels has to
pass through z: these decoders cannot model the data without the latent and do not collapse
(Kingma & Welling 2014; the `conv` rung follows the DCGAN-style transposed-convolution
decoders used e.g. by Gulrajani et al. 2017).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from stages.model.registry import (IMAGE_SHAPE, N_PIXELS, Decoder, Widths, bernoulli_log_prob, fp32_layer,
                                   register)
from stages.schema import config


class FactorizedDecoder(Decoder):
    """Logits depend on z alone: K samples cost K logit maps and no copies of x."""

    def logits_z(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B,D) -> logits (B,1,28,28)"""
        raise NotImplementedError

    def logits(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.logits_z(z)

    def log_prob_k(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        b, k, d = z.shape
        logits = self.logits_z(z.reshape(b * k, d)).reshape(b, k, N_PIXELS)  # (B,K,784)
        x_k = x.reshape(b, 1, N_PIXELS).expand(b, k, N_PIXELS)  # (B,K,784), a view
        return bernoulli_log_prob(logits, x_k)  # (B,K)

    @torch.no_grad()
    def sample(self, z, generator=None):
        probs = torch.sigmoid(self.logits_z(z).float())  # (B,1,28,28)
        return torch.bernoulli(probs, generator=generator), probs


@register("linear")
class LinearDecoder(FactorizedDecoder):
    """Logits affine in z: the weakest rung, a probabilistic PCA for binary pixels."""

    power_rank = 0

    @config
    class Config:
        pass

    def __init__(self, config: Config, latent_dim: int) -> None:
        super().__init__(config, latent_dim)
        self.net = nn.Linear(latent_dim, N_PIXELS)

    def logits_z(self, z):
        return fp32_layer(self.net, z).view(-1, *IMAGE_SHAPE)


@register("mlp")
class MLPDecoder(FactorizedDecoder):
    """The classic VAE decoder: an MLP from z to 784 logits."""

    power_rank = 1

    @config
    class Config:
        hidden: Widths = Field((500, 500), description="hidden layer widths")

    def __init__(self, config: Config, latent_dim: int) -> None:
        super().__init__(config, latent_dim)
        layers: list[nn.Module] = []
        width = latent_dim
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(width, N_PIXELS)

    def logits_z(self, z):
        return fp32_layer(self.out, self.net(z)).view(-1, *IMAGE_SHAPE)


class ConvTrunk(nn.Module):
    """z -> a (C, 28, 28) feature map: a linear layer to (2C, 7, 7), then two stride-2
    transposed convolutions (7 -> 14 -> 28), ReLU after each (the DCGAN-style decoder body).

    The factorized `conv` decoder reads its logits off this map; a PixelCNN with the spatial
    z pathway adds a 1x1 projection of the same map to every masked layer (PixelVAE), so the
    two families share how z becomes an image-shaped signal.
    """

    def __init__(self, latent_dim: int, channels: int) -> None:
        super().__init__()
        c = channels
        self.fc = nn.Sequential(nn.Linear(latent_dim, 2 * c * 7 * 7), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1),  # 7 -> 14
            nn.ReLU(),
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1),  # 14 -> 28
            nn.ReLU(),
        )
        self.c = c

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B,D) -> (B,C,28,28)"""
        return self.deconv(self.fc(z).view(-1, 2 * self.c, 7, 7))


@register("conv")
class ConvDecoder(FactorizedDecoder):
    """z -> ConvTrunk -> a 3x3 convolution to 28x28 logits: the PixelCNN of the spatial
    pathway with no masked layer, hence the strongest factorized rung."""

    power_rank = 2

    @config
    class Config:
        channels: int = Field(32, ge=1, le=1024, description="channels at 28x28; twice that at 7x7")

    def __init__(self, config: Config, latent_dim: int) -> None:
        super().__init__(config, latent_dim)
        self.trunk = ConvTrunk(latent_dim, config.channels)
        self.out = nn.Conv2d(config.channels, 1, 3, padding=1)

    def logits_z(self, z):
        return fp32_layer(self.out, self.trunk(z))  # (B,1,28,28)
