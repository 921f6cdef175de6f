"""Autoregressive PixelCNN decoder: p(x|z) = prod_i p(x_i | x_<i, z), raster-scan order.

Masked convolutions (van den Oord et al. 2016, "Pixel Recurrent Neural Networks", Sec. 3.4)
make the logit of pixel i a function of the pixels before it only: mask A (first layer)
hides the centre pixel, mask B (later layers) shows the centre of the feature map, which
already holds only the past. Layers are residual blocks with ReLU units, or with the gated
units tanh(a1) * sigmoid(a2) of van den Oord et al. 2016 ("Conditional Image Generation with
PixelCNN Decoders") when `gated: true`.

How z reaches the masked layers decides whether a VAE can use it (`z_pathway`):
- `spatial` (default): z -> the factorized conv decoder's trunk (`ConvTrunk`: transposed
  convolutions to a (C, 28, 28) map) -> a 1x1 convolution added to every masked layer's
  pre-activations, as in PixelVAE (Gulrajani et al. 2017, Sec. 3). z can say *where* a stroke
  is, so even a decoder with a tiny causal window can draw a digit from it. With no masked
  layer this is exactly the `conv` decoder: the ladder is one family with a growing
  autoregressive part.
- `bias`: z enters every layer as a per-channel bias, the same at every pixel (the
  conditional PixelCNN's global conditioning, van den Oord et al. 2016, Eq. 4). Kept as a
  comparison: it cannot place strokes, and every PixelCNN of the study collapses with it.

The power of the autoregressive part is its causal receptive field: the number of earlier
pixels a pixel's distribution can depend on (`receptive_field`, counted exactly from
the masks, blind spot included). A single mask-A layer of size k sees k//2 full rows of k
pixels and k//2 pixels to its left: 4, 12 and 24 pixels for k = 3, 5, 7.

With `conditional: false` the decoder ignores z: the "decoder alone" reference model. The
gate, the z pathway, the support count and the K-sample and sampling loops are shared with the
gated two-stack family (`stages.model.autoregressive`).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field
from torch import nn

from stages.model.autoregressive import AutoregressiveDecoder, conv1x1_add, gate
from stages.model.registry import IMAGE_SHAPE, register
from stages.schema import config


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


def causal_offsets(kernel_size: int, mask_type: str) -> list[tuple[int, int]]:
    """(row, column) offsets of the input taps a masked kernel keeps, relative to its centre."""
    r = kernel_size // 2
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
            if dy < 0 or (dy == 0 and (dx < 0 or (dx == 0 and mask_type == "B")))]


class ResidualBlock(nn.Module):
    """h + W_1x1 act(masked_conv(h) + what z adds): gated (2C pre-activations) or ReLU (C)."""

    def __init__(self, channels: int, kernel_size: int, gated: bool) -> None:
        super().__init__()
        self.gated = gated
        self.conv = MaskedConv2d(channels, (2 if gated else 1) * channels, kernel_size, "B")
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """h: (N,C,H,W), a: this layer's pre-activations (N,2C|C,H,W), z's part included."""
        return conv1x1_add(h, gate(a) if self.gated else torch.relu(a), self.proj)


def odd(k: int) -> int:
    if k % 2 == 0:
        raise ValueError("kernel_size must be odd (the mask is centred)")
    return k


KernelSize = Annotated[int, Field(ge=3, le=15), AfterValidator(odd)]


@register("pixelcnn")
class PixelCNNDecoder(AutoregressiveDecoder):
    """One masked stack: a mask-A layer, then n-1 residual mask-B layers, then a 1x1 head."""

    power_rank = 3

    @config
    class Config:
        n_layers: int = Field(4, ge=1, le=64, description="masked conv layers (mask A + n-1 mask B)")
        channels: int = Field(32, ge=1, le=1024)
        kernel_size: KernelSize = Field(3, description="mask-B layers")
        first_kernel_size: KernelSize = Field(7, description="the mask-A layer")
        conditional: bool = Field(True, description="false: ignore z (the decoder-alone baseline)")
        z_pathway: Literal["spatial", "bias"] = Field(
            "spatial", description="how z reaches every masked layer: a (C,28,28) map or a bias")
        gated: bool = Field(False, description="gated tanh*sigmoid units instead of ReLU (2x the work)")

    def __init__(self, config: Config, latent_dim: int) -> None:
        super().__init__(config, latent_dim)
        c, k, n = config.channels, config.kernel_size, config.n_layers
        self.width = (2 if config.gated else 1) * c  # pre-activation channels of every layer
        self.input = MaskedConv2d(IMAGE_SHAPE[0], self.width, config.first_kernel_size, "A")
        self.blocks = nn.ModuleList(ResidualBlock(c, k, config.gated) for _ in range(n - 1))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, 1, 1))
        self._build_pathway(latent_dim)

    def _conditioned_widths(self) -> list[int]:
        return [self.width] * self.config.n_layers  # one map per masked layer

    def causal_support(self, start):
        c = self.config
        s = start.through(causal_offsets(c.first_kernel_size, "A"))
        for _ in range(c.n_layers - 1):  # the residual adds no tap: mask B keeps the centre
            s = s.through(causal_offsets(c.kernel_size, "B"))
        return s

    def _input(self, x):
        return self.input(x)  # (N,W,H',28): mask-A pre-activations

    def _logits_from_input(self, a0, context):
        a = self._cond(a0, context, 0)
        h = gate(a) if self.config.gated else torch.relu(a)  # (N,C,H',28)
        for i, block in enumerate(self.blocks, start=1):
            h = block(h, self._cond(block.conv(h), context, i))
        return self._head(h)  # (N,1,H',28)
