"""Autoregressive PixelCNN decoder: p(x|z) = prod_i p(x_i | x_<i, z), raster-scan order.

Masked convolutions (van den Oord et al. 2016, "Pixel Recurrent Neural Networks", Sec. 3.4)
make the logit of pixel i a function of the pixels before it only: mask A (first layer)
hides the centre pixel, mask B (later layers) shows the centre of the feature map, which
already holds only the past. Layers are residual blocks with ReLU units, or with the gated
units tanh(a1) * sigmoid(a2) of van den Oord et al. 2016 ("Conditional Image Generation with
PixelCNN Decoders") when `gated: true`; z enters every layer as a per-channel bias, as in the
conditional PixelCNN (Eq. 4 there) and PixelVAE (Gulrajani et al. 2017). As in the original PixelCNN the first
(mask A) layer is 7x7 and later (mask B) layers 3x3; the receptive field grows by
kernel_size // 2 rows and columns per layer, so depth is decoder power: the deeper the
decoder, the more of the image it can model without z, and the sooner the VAE collapses.

With `conditional: false` the decoder ignores z: the "decoder alone" reference model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stages.model.registry import (IMAGE_SHAPE, N_PIXELS, Decoder, bernoulli_log_prob, fp32_layer,
                                   register)
from stages.schema import spec


class MaskedConv2d(nn.Conv2d):
    """A same-padded convolution that sees only pixels above, and left in the same row."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, mask_type: str) -> None:
        super().__init__(c_in, c_out, kernel_size, padding=kernel_size // 2)
        k = kernel_size
        mask = torch.ones(k, k)
        mask[k // 2, k // 2 + (mask_type == "B") :] = 0  # the centre (A) and right of it
        mask[k // 2 + 1 :] = 0  # every row below
        self.register_buffer("mask", mask[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def gate(a: torch.Tensor) -> torch.Tensor:
    """tanh(a1) * sigmoid(a2) over the two channel halves.  (N,2C,H,W) -> (N,C,H,W)

    In fp32 even under bf16 autocast: on CPUs, bf16 tanh and bf16 sigmoid on a channel slice
    of a channels_last tensor take slow scalar paths (measured 3-8x slower here).
    """
    a1, a2 = a.float().chunk(2, dim=1)
    return torch.tanh(a1) * torch.sigmoid(a2)


class ResidualBlock(nn.Module):
    """h + W_1x1 act(masked_conv(h) + V z): gated (2C pre-activations) or ReLU (C)."""

    def __init__(self, channels: int, kernel_size: int, gated: bool) -> None:
        super().__init__()
        self.gated = gated
        self.conv = MaskedConv2d(channels, (2 if gated else 1) * channels, kernel_size, "B")
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        a = self.conv(h)  # (N,2C,H,W) gated, (N,C,H,W) ReLU
        if cond is not None:
            a = a + cond[:, :, None, None]  # z as a per-channel bias
        return h + self.proj(gate(a) if self.gated else torch.relu(a))


def _odd(k: int) -> str | None:
    return None if k % 2 == 1 else "kernel_size must be odd (the mask is centred)"


@register("pixelcnn")
class PixelCNNDecoder(Decoder):
    autoregressive = True

    @dataclass(frozen=True)
    class Config:
        n_layers: int = spec(4, min=1, max=64, doc="masked conv layers (mask A + n-1 mask B)")
        channels: int = spec(32, min=1, max=1024)
        kernel_size: int = spec(3, min=3, max=15, check=_odd, doc="mask-B layers")
        first_kernel_size: int = spec(7, min=3, max=15, check=_odd, doc="the mask-A layer")
        conditional: bool = spec(True, doc="false: ignore z (the decoder-alone baseline)")
        gated: bool = spec(False, doc="gated tanh*sigmoid units instead of ReLU (2x the work)")

    def __init__(self, config: Config, latent_dim: int) -> None:
        super().__init__(config, latent_dim)
        c, k, n = config.channels, config.kernel_size, config.n_layers
        width = (2 if config.gated else 1) * c  # pre-activation channels of every layer
        self.input = MaskedConv2d(IMAGE_SHAPE[0], width, config.first_kernel_size, "A")
        self.blocks = nn.ModuleList(ResidualBlock(c, k, config.gated) for _ in range(n - 1))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, 1, 1))
        self.cond = nn.Linear(latent_dim, n * width) if config.conditional else None

    @property
    def uses_z(self) -> bool:
        return self.config.conditional

    def _logits_from_input(self, a0: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """a0: mask-A pre-activations (N,2C,H,W); z: (N,D) -> logits (N,1,H,W)"""
        n = self.config.n_layers
        conds = self.cond(z).chunk(n, dim=1) if self.cond is not None else [None] * n
        a = a0 if conds[0] is None else a0 + conds[0][:, :, None, None]
        h = gate(a) if self.config.gated else torch.relu(a)  # (N,C,H,W)
        for block, cond in zip(self.blocks, conds[1:]):
            h = block(h, cond)
        return fp32_layer(self.head, h)  # (N,1,H,W): the 1x1 head in fp32 (see fp32_layer)

    def logits(self, x, z):
        return self._logits_from_input(self.input(x), z)

    def log_prob_k(self, x, z):
        b, k, d = z.shape
        if not self.uses_z:  # log p(x|z) is the same for every z: evaluate it once
            return self.log_prob(x, z[:, 0]).unsqueeze(1).expand(b, k)  # (B,K)
        a0 = self.input(x)  # (B,2C,28,28): depends on x only, computed once per image
        logits = self._logits_from_input(a0.repeat_interleave(k, dim=0), z.reshape(b * k, d))
        x_k = x.reshape(b, 1, N_PIXELS).expand(b, k, N_PIXELS)  # (B,K,784), a view
        return bernoulli_log_prob(logits.reshape(b, k, N_PIXELS), x_k)  # (B,K)

    @torch.no_grad()
    def sample(self, z, generator=None):
        """Exact ancestral sampling, one pixel at a time in raster order (784 passes).

        Pixel (i, j) depends on rows <= i only, so each pass runs on the rows so far.
        """
        b = z.shape[0]
        _, height, width = IMAGE_SHAPE
        x = torch.zeros(b, *IMAGE_SHAPE, device=z.device)  # (B,1,28,28)
        probs = torch.zeros_like(x)
        for i in range(height):
            for j in range(width):
                logit = self.logits(x[:, :, : i + 1], z)[:, :, i, j]  # (B,1)
                p = torch.sigmoid(logit.float())
                probs[:, :, i, j] = p
                x[:, :, i, j] = torch.bernoulli(p, generator=generator)
        return x, probs
