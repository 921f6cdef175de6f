"""What both PixelCNN families share: the gate, the z pathway, the causal-support count, and
the autoregressive decoder's K-sample and sampling loops.

p(x|z) = prod_i p(x_i | x_<i, z) in raster order (van den Oord et al. 2016, "Pixel Recurrent
Neural Networks"). A family (`stages.model.pixelcnn`: one masked stack, with the blind spot;
`stages.model.gated`: vertical + horizontal stacks, without it) supplies three things:

- `_input(x)`: the first layer's pre-activations, a function of x alone (computed once per image
  when K latents are scored);
- `_logits_from_input(a0, context)`: the rest of the network, given what every stack reads of z;
- `causal_support(start)`: its stack geometry, written once against a support type
  (`OffsetSupport` on an unbounded image, `GridSupport` on the 28x28 one), from
  which both the power measure (`receptive_field`, the count on an unbounded image) and the
  share of the 28x28 raster past that is seen (`raster_share`) are computed exactly.

The z pathway (`ZPathway`) is the same for every autoregressive rung: z -> `ConvTrunk` (the
factorized conv decoder's transposed convolutions, a (C,28,28) map) -> one 1x1 convolution per
conditioned stack of every layer, fused with its add (PixelVAE, Gulrajani et al. 2017, Sec. 3),
or, as a comparison, z -> a linear layer -> a per-channel bias (the global
conditioning of van den Oord et al. 2016b, Eq. 4).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from stages.model.factorized import ConvTrunk
from stages.model.registry import IMAGE_SHAPE, N_PIXELS, Decoder, bernoulli_log_prob, fp32_layer

Offsets = list[tuple[int, int]]  # (row, column) taps of one convolution, relative to its output


def gate(a: torch.Tensor) -> torch.Tensor:
    """tanh(a1) * sigmoid(a2) over the two channel halves.  (N,2C,H,W) -> (N,C,H,W) in fp32

    The units run in fp32 even under bf16 autocast, on each half first copied to a dense fp32
    tensor of the input's layout: on CPUs, tanh and sigmoid on a channel slice of a
    channels_last tensor take slow strided paths, and bf16 ones slower still (measured: the
    copies make the gate's forward and backward 1.3x faster; bf16 units were 3-8x slower, and
    a bf16 result made the next padded convolution 2-5x slower).
    """
    layout = torch.channels_last if a.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format
    a1, a2 = (half.to(torch.float32, memory_format=layout) for half in a.chunk(2, dim=1))
    return torch.tanh(a1) * torch.sigmoid(a2)


def conv1x1_add(acc: torch.Tensor, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """acc + conv(x) for a 1x1 convolution: one fused multiply-add (addmm) over the pixels when
    both are dense channels_last maps of one size, else a convolution and an add.
    acc: (N,C_out,H,W), x: (N,C_in,H,W) -> (N,C_out,H,W)

    The add rides inside the matrix product instead of a separate pass over the activations,
    which on a CPU cost as much as the 1x1 product itself.
    """
    cl = torch.channels_last
    if (acc.shape[0] == x.shape[0] and acc.shape[2:] == x.shape[2:] and acc.is_contiguous(memory_format=cl)
            and x.is_contiguous(memory_format=cl)):
        n, c_out, h, w = acc.shape
        base = acc.permute(0, 2, 3, 1).reshape(-1, c_out)  # (NHW,C_out), a view
        if conv.bias is not None:
            base = base + conv.bias
        out = torch.addmm(base, x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]),
                          conv.weight.flatten(1).t())  # (NHW,C_out)
        return out.view(n, h, w, c_out).permute(0, 3, 1, 2)  # (N,C_out,H,W) channels_last
    return acc + conv(x)


def box(rows: range, cols: range) -> Offsets:
    """Every tap (dy, dx) with dy in rows and dx in cols."""
    return [(dy, dx) for dy in rows for dx in cols]


class OffsetSupport:
    """The inputs one output depends on, as offsets from it, on an unbounded image."""

    def __init__(self, offsets: Iterable[tuple[int, int]] = ((0, 0),)) -> None:
        self.offsets = frozenset(offsets)

    def through(self, taps: Offsets) -> OffsetSupport:
        """After one more convolution with these taps: the Minkowski sum."""
        return OffsetSupport((y + dy, x + dx) for y, x in self.offsets for dy, dx in taps)

    def __or__(self, other: OffsetSupport) -> OffsetSupport:
        return OffsetSupport(self.offsets | other.offsets)

    def count(self) -> int:
        return len(self.offsets)


class GridSupport:
    """The same on the bounded 28x28 image with zero padding: a (784,784) boolean matrix whose
    row p holds the input pixels output pixel p depends on (raster index)."""

    def __init__(self, matrix: np.ndarray | None = None) -> None:
        self.matrix = np.eye(N_PIXELS, dtype=bool) if matrix is None else matrix

    @staticmethod
    def layer(taps: Offsets) -> np.ndarray:
        """(784,784): output p reads input p + tap, where that lies inside the image."""
        _, h, w = IMAGE_SHAPE
        y, x = np.divmod(np.arange(N_PIXELS), w)  # (784,) each
        m = np.zeros((N_PIXELS, N_PIXELS), dtype=bool)
        for dy, dx in taps:
            qy, qx = y + dy, x + dx
            inside = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w)
            m[np.flatnonzero(inside), (qy * w + qx)[inside]] = True
        return m

    def through(self, taps: Offsets) -> GridSupport:
        reach = self.layer(taps).astype(np.float32) @ self.matrix.astype(np.float32)  # (784,784)
        return GridSupport(reach > 0)

    def __or__(self, other: GridSupport) -> GridSupport:
        return GridSupport(self.matrix | other.matrix)


class ZPathway(nn.Module):
    """What z adds to the pre-activations of every conditioned stack of every layer.

    `widths`: the pre-activation channels of each stack, in the order the decoder adds them.
    spatial: z -> ConvTrunk -> a (C,28,28) map m, and stack i adds W_i m (a 1x1 convolution,
    fused into one multiply-add, `conv1x1_add`); bias: z -> linear -> per-channel values, the
    same at every pixel. One projection per stack, never one wide map split afterwards: the
    backward pass of a split concatenates every stack's gradient into one (N, sum(widths), 28,
    28) tensor (measured: a third of a 13-layer gated decoder's training step).
    """

    def __init__(self, latent_dim: int, channels: int, widths: list[int], pathway: str) -> None:
        super().__init__()
        self.trunk: ConvTrunk | None = ConvTrunk(latent_dim, channels) if pathway == "spatial" else None
        self.proj = nn.ModuleList(nn.Conv2d(channels, w, 1, bias=False) if self.trunk is not None
                                  else nn.Linear(latent_dim, w, bias=False) for w in widths)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The context every stack reads: z (N,D) -> the map m (N,C,28,28), or z itself (bias)."""
        return z if self.trunk is None else self.trunk(z)

    def add(self, a: torch.Tensor, context: torch.Tensor, i: int) -> torch.Tensor:
        """a + what z adds to stack i.  a: (N,W_i,H',28), H' <= 28 rows (sampling runs on the
        rows drawn so far)."""
        if self.trunk is None:
            return a + self.proj[i](context)[:, :, None, None]  # (N,W_i,1,1) broadcast
        return conv1x1_add(a, context[:, :, : a.shape[2]], self.proj[i])


class AutoregressiveDecoder(Decoder):
    """A PixelCNN family: log p(x|z) from one causal pass, exact sampling in raster order."""

    autoregressive = True

    def _conditioned_widths(self) -> list[int]:
        """Pre-activation channels of every conditioned stack, in the order consumed."""
        raise NotImplementedError

    def _input(self, x: torch.Tensor):
        """x: (N,1,H',28) -> the first layer's pre-activations (depend on x only)."""
        raise NotImplementedError

    def _logits_from_input(self, a0, context: torch.Tensor | None) -> torch.Tensor:
        """a0 from `_input` (H' <= 28 rows), context from `conditioning` -> logits (N,1,H',28)"""
        raise NotImplementedError

    def causal_support(self, start):
        """The support of one logit, following the stack geometry from `start` (the identity
        support of the input image): an OffsetSupport or a GridSupport."""
        raise NotImplementedError

    def _build_pathway(self, latent_dim: int) -> None:
        c = self.config
        self.z_path = (ZPathway(latent_dim, c.channels, self._conditioned_widths(), c.z_pathway)
                       if c.conditional else None)

    @property
    def uses_z(self) -> bool:
        return self.config.conditional

    @property
    def trunk(self) -> ConvTrunk | None:
        return None if self.z_path is None else self.z_path.trunk

    @property
    def receptive_field(self) -> int:
        """Causal receptive field on an unbounded image: the power measure (it grows with every
        layer, so it orders the rungs; on 28x28 the share of the past seen saturates at 1)."""
        return self.causal_support(OffsetSupport()).count()

    @property
    def raster_share(self) -> float:
        """Share of the (pixel, earlier pixel) pairs of the 28x28 image that are connected:
        1.0 when every pixel sees its whole raster past."""
        seen = self.causal_support(GridSupport()).matrix  # (784,784)
        return float(seen.sum()) / (N_PIXELS * (N_PIXELS - 1) / 2)

    def conditioning(self, z: torch.Tensor) -> torch.Tensor | None:
        """What every stack reads of z (`ZPathway`): computed once per z; None without z."""
        return None if self.z_path is None else self.z_path(z)

    def _cond(self, a: torch.Tensor, context: torch.Tensor | None, i: int) -> torch.Tensor:
        """Stack i's pre-activations a plus what z adds to them (nothing without z)."""
        return a if context is None else self.z_path.add(a, context, i)

    def logits(self, x, z):
        return self._logits_from_input(self._input(x), self.conditioning(z))

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return fp32_layer(self.head, h)  # the 1x1 head in fp32 (see fp32_layer)

    def log_prob_k(self, x, z):
        b, k, d = z.shape
        a0 = self._input(x)  # depends on x only: computed once per image
        context = self.conditioning(z.reshape(b * k, d))
        a0_k = tuple(a.repeat_interleave(k, dim=0) for a in a0) if isinstance(a0, tuple) \
            else a0.repeat_interleave(k, dim=0)
        logits = self._logits_from_input(a0_k, context)  # (B*K,1,28,28)
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
        context = self.conditioning(z)
        x = torch.zeros(b, *IMAGE_SHAPE, device=z.device)  # (B,1,28,28)
        probs = torch.zeros_like(x)
        for i in range(height):
            for j in range(width):
                logit = self._logits_from_input(self._input(x[:, :, : i + 1]), context)[:, :, i, j]  # (B,1)
                p = torch.sigmoid(logit.float())
                probs[:, :, i, j] = p
                x[:, :, i, j] = torch.bernoulli(p, generator=generator)
        return x, probs
