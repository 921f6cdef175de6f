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
pixels a pixel's distribution can depend on (`causal_receptive_field`, counted exactly from
the masks, blind spot included). A single mask-A layer of size k sees k//2 full rows of k
pixels and k//2 pixels to its left: 4, 12 and 24 pixels for k = 3, 5, 7.

With `conditional: false` the decoder ignores z: the "decoder alone" reference model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stages.model.factorized import ConvTrunk
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


def causal_offsets(kernel_size: int, mask_type: str) -> list[tuple[int, int]]:
    """(row, column) offsets of the input taps a masked kernel keeps, relative to its centre."""
    r = kernel_size // 2
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
            if dy < 0 or (dy == 0 and (dx < 0 or (dx == 0 and mask_type == "B")))]


def causal_receptive_field(layers: list[tuple[int, str]]) -> int:
    """How many input pixels one output pixel depends on through a stack of masked
    convolutions [(kernel_size, mask_type), ...] (input layer first) on an unbounded image.

    Follows the support backwards from one output pixel through every layer; residual
    connections and 1x1 convolutions add no offsets. Stacks of masked 3x3 convolutions have
    the PixelCNN's blind spot (pixels up and to the right that no path reaches): it is
    counted as unseen, as it is.
    """
    support = {(0, 0)}
    for kernel_size, mask_type in reversed(layers):
        offsets = causal_offsets(kernel_size, mask_type)
        support = {(y + dy, x + dx) for y, x in support for dy, dx in offsets}
    return len(support)


class ResidualBlock(nn.Module):
    """h + W_1x1 act(masked_conv(h) + cond): gated (2C pre-activations) or ReLU (C)."""

    def __init__(self, channels: int, kernel_size: int, gated: bool) -> None:
        super().__init__()
        self.gated = gated
        self.conv = MaskedConv2d(channels, (2 if gated else 1) * channels, kernel_size, "B")
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        a = self.conv(h)  # (N,2C,H,W) gated, (N,C,H,W) ReLU
        if cond is not None:
            a = a + cond  # (N,2C|C,1,1) bias or (N,2C|C,H,W) spatial
        return h + self.proj(gate(a) if self.gated else torch.relu(a))


def _odd(k: int) -> str | None:
    return None if k % 2 == 1 else "kernel_size must be odd (the mask is centred)"


@register("pixelcnn")
class PixelCNNDecoder(Decoder):
    autoregressive = True
    power_rank = 3

    @dataclass(frozen=True)
    class Config:
        n_layers: int = spec(4, min=1, max=64, doc="masked conv layers (mask A + n-1 mask B)")
        channels: int = spec(32, min=1, max=1024)
        kernel_size: int = spec(3, min=3, max=15, check=_odd, doc="mask-B layers")
        first_kernel_size: int = spec(7, min=3, max=15, check=_odd, doc="the mask-A layer")
        conditional: bool = spec(True, doc="false: ignore z (the decoder-alone baseline)")
        z_pathway: str = spec("spatial", choices=("spatial", "bias"),
                              doc="how z reaches every masked layer: a (C,28,28) map or a bias")
        gated: bool = spec(False, doc="gated tanh*sigmoid units instead of ReLU (2x the work)")

    def __init__(self, config: Config, latent_dim: int) -> None:
        super().__init__(config, latent_dim)
        c, k, n = config.channels, config.kernel_size, config.n_layers
        width = (2 if config.gated else 1) * c  # pre-activation channels of every layer
        self.input = MaskedConv2d(IMAGE_SHAPE[0], width, config.first_kernel_size, "A")
        self.blocks = nn.ModuleList(ResidualBlock(c, k, config.gated) for _ in range(n - 1))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, 1, 1))
        self.trunk: ConvTrunk | None = None
        self.cond: nn.Module | None = None
        if config.conditional and config.z_pathway == "spatial":
            self.trunk = ConvTrunk(latent_dim, c)
            self.cond = nn.Conv2d(c, n * width, 1)  # one 1x1 projection per masked layer
        elif config.conditional:
            self.cond = nn.Linear(latent_dim, n * width)

    @property
    def uses_z(self) -> bool:
        return self.config.conditional

    @property
    def receptive_field(self) -> int:
        c = self.config
        return causal_receptive_field([(c.first_kernel_size, "A")]
                                      + [(c.kernel_size, "B")] * (c.n_layers - 1))

    def conditioning(self, z: torch.Tensor) -> list[torch.Tensor | None]:
        """Per masked layer, what z adds to its pre-activations.  z: (N,D) ->
        n_layers x (N,W,28,28) spatial, (N,W,1,1) bias, or None without z (W: width)."""
        n = self.config.n_layers
        if self.cond is None:
            return [None] * n
        if self.trunk is not None:
            return list(self.cond(self.trunk(z)).chunk(n, dim=1))  # (N,n*W,28,28) -> n x (N,W,28,28)
        return [c[:, :, None, None] for c in self.cond(z).chunk(n, dim=1)]  # n x (N,W,1,1)

    def _logits_from_input(self, a0: torch.Tensor, conds: list[torch.Tensor | None]) -> torch.Tensor:
        """a0: mask-A pre-activations (N,W,H',28), H' <= 28 rows -> logits (N,1,H',28)"""
        rows = a0.shape[2]
        conds = [c if c is None else c[:, :, :rows] for c in conds]  # a bias has one row
        a = a0 if conds[0] is None else a0 + conds[0]
        h = gate(a) if self.config.gated else torch.relu(a)  # (N,C,H',28)
        for block, cond in zip(self.blocks, conds[1:]):
            h = block(h, cond)
        return fp32_layer(self.head, h)  # (N,1,H',28): the 1x1 head in fp32 (see fp32_layer)

    def logits(self, x, z):
        return self._logits_from_input(self.input(x), self.conditioning(z))

    def log_prob_k(self, x, z):
        b, k, d = z.shape
        if not self.uses_z:  # log p(x|z) is the same for every z: evaluate it once
            return self.log_prob(x, z[:, 0]).unsqueeze(1).expand(b, k)  # (B,K)
        a0 = self.input(x)  # (B,W,28,28): depends on x only, computed once per image
        conds = self.conditioning(z.reshape(b * k, d))
        logits = self._logits_from_input(a0.repeat_interleave(k, dim=0), conds)  # (B*K,1,28,28)
        x_k = x.reshape(b, 1, N_PIXELS).expand(b, k, N_PIXELS)  # (B,K,784), a view
        return bernoulli_log_prob(logits.reshape(b, k, N_PIXELS), x_k)  # (B,K)

    @torch.no_grad()
    def sample(self, z, generator=None):
        """Exact ancestral sampling, one pixel at a time in raster order (784 passes).

        Pixel (i, j) depends on rows <= i only, so each pass runs on the rows so far; what z
        contributes is computed once.
        """
        b = z.shape[0]
        _, height, width = IMAGE_SHAPE
        conds = self.conditioning(z)
        x = torch.zeros(b, *IMAGE_SHAPE, device=z.device)  # (B,1,28,28)
        probs = torch.zeros_like(x)
        for i in range(height):
            for j in range(width):
                logit = self._logits_from_input(self.input(x[:, :, : i + 1]), conds)[:, :, i, j]  # (B,1)
                p = torch.sigmoid(logit.float())
                probs[:, :, i, j] = p
                x[:, :, i, j] = torch.bernoulli(p, generator=generator)
        return x, probs
