"""The binarized splits as tensors, and minibatches of binary images.

A split holds binary images, or (the dynamic training split) intensities in [0, 1] from
which every batch draws fresh binary pixels with the caller's generator (Burda et al. 2016).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stages.errors import DataError
from stages.model.registry import IMAGE_SHAPE, N_PIXELS

SPLITS = ("train", "valid", "test")


@dataclass
class Split:
    x: torch.Tensor  # (N,1,28,28) float32: binary pixels, or intensities when dynamic
    labels: torch.Tensor  # (N,) int64
    dynamic: bool = False

    def __len__(self) -> int:
        return len(self.x)

    def images(self, index: torch.Tensor | slice, generator: torch.Generator | None = None):
        """Binary images at `index`; a dynamic split draws them now.  -> (B,1,28,28)"""
        x = self.x[index]
        return torch.bernoulli(x, generator=generator) if self.dynamic else x

    def head(self, n: int | None) -> Split:
        return self if n is None or n >= len(self) else Split(self.x[:n], self.labels[:n], self.dynamic)

    def subset(self, indices: torch.Tensor) -> Split:
        """The images and labels at `indices` (int64), in that order."""
        return Split(self.x[indices], self.labels[indices], self.dynamic)


def _unpack(bits: np.ndarray) -> torch.Tensor:
    x = np.unpackbits(bits, axis=1, count=N_PIXELS).reshape(-1, *IMAGE_SHAPE)  # (N,1,28,28) uint8
    return torch.from_numpy(x.astype(np.float32))


def load_splits(path: str | Path) -> dict[str, Split]:
    path = Path(path)
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DataError(f"{path}: missing (run the binarize stage first)") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # EOFError: an empty file
        raise DataError(f"{path}: not a readable binarized-MNIST file ({e or 'empty'}); rerun the "
                        "binarize stage (or `dvc checkout` it)") from None
    splits = {}
    for name in SPLITS:
        labels = arrays.get(f"{name}_labels")
        if labels is None:
            raise DataError(f"{path}: no {name}_labels array (rerun the binarize stage)")
        if f"{name}_bits" in arrays:
            x, dynamic = _unpack(arrays[f"{name}_bits"]), False
        elif f"{name}_intensity" in arrays:
            intensity = arrays[f"{name}_intensity"].reshape(-1, *IMAGE_SHAPE)
            x, dynamic = torch.from_numpy(intensity.astype(np.float32) / 255.0), True
        else:
            raise DataError(f"{path}: no {name} images (rerun the binarize stage)")
        if len(x) != len(labels):
            raise DataError(f"{path}: {len(x)} {name} images but {len(labels)} labels")
        splits[name] = Split(x, torch.from_numpy(labels.astype(np.int64)), dynamic)
    return splits
