"""Stage `binarize`: fixed train / valid / test splits of binary 28x28 MNIST images.

- `static` (default): one seeded Bernoulli draw per pixel with p = intensity / 255, the
  literature's statically binarized MNIST (Salakhutdinov & Murray 2008; Larochelle & Murray
  2011 published one such draw).
- `threshold`: pixel = intensity / 255 > 0.5.
- `dynamic`: training images keep their intensities and are redrawn every epoch (Burda et al.
  2016); valid and test get one fixed seeded draw so evaluation is deterministic.

Validation is the last `valid_size` images of the official training set (50k/10k/10k by
default); `train_subset` keeps the first N training images for small-scale runs. Each split
is drawn from its own seeded stream, so the test set does not change with the subset.
Binary images are stored as packed bits; the same params give byte-identical files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from stages.errors import DataError
from stages.fsutil import write_json, write_npz
from stages.idx import read_idx
from stages.options import PARAMS, ROOT, STUDY
from stages.schema import Errors, build, config

N_MNIST_TRAIN = 60000

RAW_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_STREAM = {"train": 0, "valid": 1, "test": 2}


@config
class BinarizeConfig:
    method: Literal["static", "threshold", "dynamic"]
    seed: int = Field(ge=0, le=2**31 - 1)
    valid_size: int = Field(ge=1, le=N_MNIST_TRAIN - 1)
    train_subset: int | None = Field(ge=1, le=N_MNIST_TRAIN - 1)


def parse_binarize(raw: Any, errors: Errors) -> BinarizeConfig | None:
    """The `binarize` section, checked against the size of MNIST's training set."""
    b = build(BinarizeConfig, raw, "binarize", errors)
    if b is not None and b.train_subset is not None and b.train_subset + b.valid_size > N_MNIST_TRAIN:
        errors.add("binarize.train_subset", f"got {b.train_subset}; with valid_size "
                   f"{b.valid_size} at most {N_MNIST_TRAIN - b.valid_size} training images exist")
    return b


def read_raw(raw_dir: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name = RAW_FILES[part]
    x = read_idx(raw_dir / images_name, (28, 28))  # (N,28,28) uint8
    y = read_idx(raw_dir / labels_name, ())  # (N,) uint8
    if len(x) != len(y):
        raise DataError(f"{raw_dir}: {len(x)} {part} images but {len(y)} labels")
    if y.max(initial=0) > 9:
        raise DataError(f"{raw_dir / labels_name}: labels must be digits 0-9, found {y.max()}")
    return x, y


def draw(intensity: np.ndarray, method: str, seed: int, split: str) -> np.ndarray:
    """Binary images (N,28,28) uint8 in {0,1} from intensities (N,28,28) uint8."""
    if method == "threshold":
        return (intensity > 127).astype(np.uint8)  # intensity / 255 > 0.5
    rng = np.random.default_rng([seed, SPLIT_STREAM[split]])
    u = rng.random(intensity.shape, dtype=np.float32)  # (N,28,28)
    return (u * 255.0 < intensity).astype(np.uint8)  # P(1) = intensity / 255


def binarize(raw_dir: str | Path, config: BinarizeConfig) -> dict[str, np.ndarray]:
    """The splits as arrays: `<split>_bits` (packed binary images) or, for the dynamic
    training split, `train_intensity`; and `<split>_labels`."""
    raw_dir = Path(raw_dir)
    train_x, train_y = read_raw(raw_dir, "train")
    test_x, test_y = read_raw(raw_dir, "test")
    n = len(train_x)
    if config.valid_size >= n:
        raise DataError(f"binarize.valid_size: {config.valid_size}, but only {n} training "
                        f"images exist (at most {n - 1})")
    n_train = n - config.valid_size
    if config.train_subset is not None and config.train_subset > n_train:
        raise DataError(f"binarize.train_subset: {config.train_subset}, but with valid_size "
                        f"{config.valid_size} only {n_train} training images remain")
    splits = {
        "train": (train_x[:n_train], train_y[:n_train]),
        "valid": (train_x[n_train:], train_y[n_train:]),
        "test": (test_x, test_y),
    }
    out: dict[str, np.ndarray] = {}
    for split, (x, y) in splits.items():
        keep = config.train_subset if split == "train" and config.train_subset else len(x)
        if split == "train" and config.method == "dynamic":
            out["train_intensity"] = np.ascontiguousarray(x[:keep])
        else:
            bits = draw(x, config.method, config.seed, split)[:keep]
            out[f"{split}_bits"] = np.packbits(bits.reshape(len(bits), -1), axis=1)  # (N,98)
        out[f"{split}_labels"] = np.ascontiguousarray(y[:keep])
    return out


def summarize(arrays: dict[str, np.ndarray], config: BinarizeConfig) -> dict:
    summary: dict = {"method": config.method, "seed": config.seed}
    for split in ("train", "valid", "test"):
        if f"{split}_bits" in arrays:
            bits = np.unpackbits(arrays[f"{split}_bits"], axis=1, count=784)
            mean = float(bits.mean())
        else:
            mean = float(arrays[f"{split}_intensity"].mean() / 255.0)
        summary[split] = {"n_images": int(len(arrays[f"{split}_labels"])), "pixel_mean": mean}
    return summary


def run(raw_dir: str | Path, out_path: str | Path, summary_path: str | Path,
        config: BinarizeConfig) -> dict:
    arrays = binarize(raw_dir, config)
    summary = summarize(arrays, config)
    write_npz(out_path, arrays)
    write_json(summary_path, summary)
    return summary


def command(params: Path = PARAMS, root: Path = ROOT, study: str = STUDY) -> None:
    """Write the binary train / valid / test splits."""
    from stages.layout import Layout
    from stages.paramsfile import read_yaml

    errors = Errors()  # only its own section: the validate stage upstream checked the whole file
    raw = read_yaml(params)
    config = parse_binarize(raw.get("binarize") if isinstance(raw, dict) else None, errors)
    errors.raise_if_any(str(params))
    layout = Layout(root, study)
    print(run(layout.raw, layout.binarized, layout.binarized_summary, config))
