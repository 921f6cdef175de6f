"""The IDX format and the binarize stage, on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import RAW_NAMES, synthetic_digits, write_synthetic_mnist

from stages.binarize import binarize, run
from stages.data import load_splits
from stages.errors import DataError
from stages.idx import encode_idx, read_idx, write_idx
from stages.params import BinarizeConfig


def binarize_config(**options) -> BinarizeConfig:
    """Every key is required in params.yaml; these tests vary a few."""
    return BinarizeConfig(**{"method": "static", "seed": 0, "valid_size": 100, "train_subset": None,
                             **options})


def test_idx_round_trip(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "x", x)
    np.testing.assert_array_equal(read_idx(tmp_path / "x", (28, 28)), x)
    labels = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "y", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "y", ()), labels)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"\x00\x00\x09" + b[3:], "magic number"),  # type code 0x09: not unsigned bytes
        (lambda b: b"\x01" + b[1:], "magic number"),
        (lambda b: b[:-5], "bytes"),  # truncated data
        (lambda b: b[:6], "header"),
    ],
)
def test_idx_refuses_corrupt_header_or_size(tmp_path, mutate, message):
    data = encode_idx(np.zeros((3, 28, 28), dtype=np.uint8))
    (tmp_path / "bad").write_bytes(mutate(data))
    with pytest.raises(DataError, match=message):
        read_idx(tmp_path / "bad", (28, 28))


def test_idx_refuses_wrong_dimensions(tmp_path):
    write_idx(tmp_path / "x", np.zeros((3, 28, 27), dtype=np.uint8))
    with pytest.raises(DataError, match="dimensions"):
        read_idx(tmp_path / "x", (28, 28))


def test_static_binarization_is_byte_identical_for_the_same_params(tmp_path):
    raw = write_synthetic_mnist(tmp_path / "raw")
    config = binarize_config(valid_size=100)
    run(raw, tmp_path / "a.npz", tmp_path / "a.json", config)
    run(raw, tmp_path / "b.npz", tmp_path / "b.json", config)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    run(raw, tmp_path / "c.npz", tmp_path / "c.json", binarize_config(valid_size=100, seed=1))
    assert (tmp_path / "a.npz").read_bytes() != (tmp_path / "c.npz").read_bytes()


def test_static_draw_mean_matches_mean_intensity(tmp_path):
    raw = write_synthetic_mnist(tmp_path / "raw", n_train=2000, n_test=100)
    arrays = binarize(raw, binarize_config(valid_size=100))
    bits = np.unpackbits(arrays["train_bits"], axis=1, count=784)
    intensity = read_idx(raw / RAW_NAMES["train"][0], (28, 28))[:1900] / 255.0
    # 1.5M Bernoulli draws: the standard error of the mean is below 3e-4
    assert abs(bits.mean() - intensity.mean()) < 0.002
    assert set(np.unique(bits)) <= {0, 1}


def test_threshold_binarization_is_intensity_above_half(tmp_path):
    raw = write_synthetic_mnist(tmp_path / "raw")
    arrays = binarize(raw, binarize_config(method="threshold", valid_size=100))
    intensity = read_idx(raw / RAW_NAMES["test"][0], (28, 28))
    bits = np.unpackbits(arrays["test_bits"], axis=1, count=784).reshape(-1, 28, 28)
    np.testing.assert_array_equal(bits, (intensity / 255.0 > 0.5).astype(np.uint8))


def test_dynamic_keeps_training_intensities_and_fixes_test_draw(tmp_path):
    raw = write_synthetic_mnist(tmp_path / "raw")
    config = binarize_config(method="dynamic", valid_size=100)
    run(raw, tmp_path / "d.npz", tmp_path / "d.json", config)
    splits = load_splits(tmp_path / "d.npz")
    assert splits["train"].dynamic and not splits["test"].dynamic
    import torch

    g = torch.Generator().manual_seed(0)
    first, second = splits["train"].images(slice(0, 50), g), splits["train"].images(slice(0, 50), g)
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(first, second)  # redrawn every time
    static = binarize(raw, binarize_config(method="static", valid_size=100))
    dynamic = binarize(raw, config)
    np.testing.assert_array_equal(static["test_bits"], dynamic["test_bits"])


def test_train_subset_keeps_valid_and_test_splits(tmp_path):
    raw = write_synthetic_mnist(tmp_path / "raw")
    full = binarize(raw, binarize_config(valid_size=100))
    subset = binarize(raw, binarize_config(valid_size=100, train_subset=50))
    assert len(subset["train_labels"]) == 50
    np.testing.assert_array_equal(full["train_bits"][:50], subset["train_bits"])
    np.testing.assert_array_equal(full["test_bits"], subset["test_bits"])
    np.testing.assert_array_equal(full["valid_bits"], subset["valid_bits"])


def test_valid_size_beyond_the_data_is_refused(tmp_path):
    raw = write_synthetic_mnist(tmp_path / "raw", n_train=600)
    with pytest.raises(DataError, match="binarize.valid_size"):
        binarize(raw, binarize_config(valid_size=600))
    with pytest.raises(DataError, match="binarize.train_subset"):
        binarize(raw, binarize_config(valid_size=100, train_subset=501))


def test_labels_must_match_images(tmp_path):
    raw = write_synthetic_mnist(tmp_path / "raw")
    _, y = synthetic_digits(10, 0)
    write_idx(raw / RAW_NAMES["test"][1], y)
    with pytest.raises(DataError, match="labels"):
        binarize(raw, binarize_config(valid_size=100))
