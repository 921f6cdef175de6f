"""Gated PixelCNN with vertical and horizontal stacks: an autoregressive decoder without the
blind spot (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders",
Sec. 2.1-2.2, Fig. 2).

A masked k x k stack never sees the pixels up and to the right that fall outside its growing
triangle (the blind spot). Two stacks remove it:
- the vertical stack sees every pixel of the rows above, in a window that widens by k//2
  columns each side per layer: a (k//2 + 1) x k convolution over rows i - k//2 .. i of the
  vertical features, which at row i already see only the rows above (the first layer reads the
  image rows i - k0//2 .. i - 1);
- the horizontal stack sees the pixels to the left in the same row: a 1 x (k//2 + 1)
  convolution over columns j - k//2 .. j (the first layer: j - k0//2 .. j - 1), plus a 1x1
  link from the vertical stack's pre-activations at the same position, and is residual.
Both use gated units tanh(W_f * h + V_f c) * sigmoid(W_g * h + V_g c), and what z adds (c,
`stages.model.autoregressive.ZPathway`) enters both stacks of every layer. The logits are read
off the horizontal stack. With a 7x7 first layer and 12 layers of 5x5 (PixelVAE's MNIST
decoder, Gulrajani et al. 2017, Appendix) every pixel of a 28x28 image sees its whole raster
past: 3 + 12 * 2 = 27 rows up, 27 columns left and right.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from stages.model.autoregressive import AutoregressiveDecoder, box, conv1x1_add, gate
from stages.model.pixelcnn import KernelSize
from stages.model.registry import IMAGE_SHAPE, register
from stages.schema import config


def vertical_taps(kernel_size: int, first: bool) -> list[tuple[int, int]]:
    """The vertical stack's taps: the k//2 rows above (first layer, from the image) or the
    rows i - k//2 .. i of the vertical features, k columns wide."""
    r = kernel_size // 2
    return box(range(-r, 0) if first else range(-r, 1), range(-r, r + 1))


def horizontal_taps(kernel_size: int, first: bool) -> list[tuple[int, int]]:
    """The horizontal stack's taps in its own row: left of the pixel (first layer) or up to it."""
    r = kernel_size // 2
    return box(range(0, 1), range(-r, 0) if first else range(-r, 1))


class GatedLayer(nn.Module):
    """One layer of both stacks. The first layer reads the image (strictly causal taps); the
    others read the previous layer's vertical and horizontal features."""

    def __init__(self, c_in: int, channels: int, kernel_size: int, first: bool, last: bool) -> None:
        super().__init__()
        r, c = kernel_size // 2, channels
        self.first, self.last, self.r = first, last, r
        self.v_conv = nn.Conv2d(c_in, 2 * c, (r if first else r + 1, kernel_size))
        self.h_conv = nn.Conv2d(c_in, 2 * c, (1, r if first else r + 1))
        self.vh = nn.Conv2d(2 * c, 2 * c, 1, bias=False)  # vertical -> horizontal (rows above only)
        self.h_out = nn.Conv2d(c, c, 1, bias=first)  # later layers: a residual (h_conv has the bias)

    def pre_activations(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """v, h: (N,C_in,H,28) -> vertical and horizontal pre-activations (N,2C,H,28) each,
        before what z adds; causal by the padding (rows on top, columns on the left)."""
        rows, r = v.shape[2], self.r
        v_pre = self.v_conv(F.pad(v, (r, r, r, 0)))[:, :, :rows]  # first: rows i-r..i-1; else i-r..i
        h_pre = self.h_conv(F.pad(h, (r, 0, 0, 0)))[..., : h.shape[3]]  # first: cols j-r..j-1; else j-r..j
        return v_pre, conv1x1_add(h_pre, v_pre, self.vh)

    def forward(self, h: torch.Tensor | None, v_pre: torch.Tensor, h_pre: torch.Tensor):
        """Pre-activations with z's part included -> the vertical features (None after the last
        layer) and the horizontal ones (N,C,H,28) each."""
        v = None if self.last else gate(v_pre)
        g = gate(h_pre)
        return v, self.h_out(g) if self.first else conv1x1_add(h, g, self.h_out)


@register("gated_pixelcnn")
class GatedPixelCNNDecoder(AutoregressiveDecoder):
    """A first gated layer of first_kernel_size, n_layers - 1 of kernel_size, a 1x1 head."""

    power_rank = 4

    @config
    class Config:
        n_layers: int = Field(13, ge=1, le=64, description="gated layers of both stacks (the first included)")
        channels: int = Field(16, ge=1, le=1024)
        kernel_size: KernelSize = Field(5, description="every layer after the first")
        first_kernel_size: KernelSize = Field(7, description="the first layer")
        conditional: bool = Field(True, description="false: ignore z (the decoder-alone baseline)")
        z_pathway: Literal["spatial", "bias"] = Field(
            "spatial", description="how z reaches both stacks of every layer: a (C,28,28) map or a bias")

    def __init__(self, config: Config, latent_dim: int) -> None:
        super().__init__(config, latent_dim)
        c, n = config.channels, config.n_layers
        self.layers = nn.ModuleList(
            GatedLayer(IMAGE_SHAPE[0] if i == 0 else c, c,
                       config.first_kernel_size if i == 0 else config.kernel_size,
                       first=i == 0, last=i == n - 1)
            for i in range(n))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, 1, 1))
        self._build_pathway(latent_dim)

    def _conditioned_widths(self) -> list[int]:
        """2C for each stack of every layer, vertical then horizontal; the last layer's
        vertical features are never read, so it has the horizontal one only."""
        w = 2 * self.config.channels
        return [w] * (2 * self.config.n_layers - 1)

    def causal_support(self, start):
        c = self.config
        v = start.through(vertical_taps(c.first_kernel_size, first=True))
        h = start.through(horizontal_taps(c.first_kernel_size, first=True)) | v  # via the link
        for _ in range(c.n_layers - 1):  # horizontal_taps keeps the centre: the residual is inside
            v = v.through(vertical_taps(c.kernel_size, first=False))
            h = h.through(horizontal_taps(c.kernel_size, first=False)) | v
        return h

    def _input(self, x):
        return self.layers[0].pre_activations(x, x)  # (N,2C,H',28) twice: x only

    def _logits_from_input(self, a0, context):
        v_pre, h_pre = a0
        v = h = None
        for i, layer in enumerate(self.layers):
            if i > 0:
                v_pre, h_pre = layer.pre_activations(v, h)
            if not layer.last:  # the last layer's vertical features are never read
                v_pre = self._cond(v_pre, context, 2 * i)
            v, h = layer(h, v_pre, self._cond(h_pre, context, 2 * i + (not layer.last)))
        return self._head(h)  # (N,1,H',28)
