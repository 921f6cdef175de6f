"""The evaluate stage on a tiny trained study: metrics, the shared random test subset,
per-image estimates, the MI cap, bad inputs, unsafe checkpoints, bf16."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import TINY_PARAMS, build_tiny_study, run_stage

from stages import closure, evaluate, train
from stages.checkpoint import load_checkpoint, load_model
from stages.data import load_splits
from stages.errors import CheckpointError, DataError
from stages.layout import Layout
from stages.runtime import Precision

METRIC_KEYS = {"nll_iw_nats", "nll_iw_stderr_nats", "iw_k", "n_test", "nll_elbo_nats", "kl_nats",
               "rec_nats", "bound_gap_nats", "mi_nats", "mi_cap_nats", "active_units", "probe_accuracy",
               "seconds"}
PER_IMAGE_COLUMNS = ["test_index", "log_px_iw_nats", "elbo_nats", "log_px_given_z_nats",
                     "log_px_independent_nats"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny project with synthetic data and both rungs trained."""
    root = tmp_path_factory.mktemp("study")
    params, layout = build_tiny_study(root)
    return root, params, layout


def test_evaluate_writes_every_metric_and_artifact(study):
    root, params, layout = study
    metrics = evaluate.run(params, "pixelcnn_2", 0, layout, progress=False)
    assert set(metrics) == METRIC_KEYS
    assert json.loads(layout.metrics("pixelcnn_2", 0).read_text()) == metrics
    assert metrics["iw_k"] == 8 and metrics["n_test"] == 40
    assert metrics["nll_iw_nats"] <= metrics["nll_elbo_nats"]
    assert metrics["bound_gap_nats"] >= 0
    assert metrics["nll_elbo_nats"] == pytest.approx(metrics["kl_nats"] + metrics["rec_nats"], abs=1e-3)
    assert 0 <= metrics["active_units"] <= 4 and 0 <= metrics["probe_accuracy"] <= 1
    assert metrics["mi_nats"] <= metrics["mi_cap_nats"] + 1e-9
    out = layout.eval_dir("pixelcnn_2", 0)
    curve = pd.read_csv(out / "k_curve.csv")
    assert list(curve.k) == [1, 8]
    assert curve.nll_iw_nats.iloc[-1] == pytest.approx(metrics["nll_iw_nats"])
    dims = pd.read_csv(out / "latent_dims.csv")
    assert len(dims) == 4 and dims.kl_nats.sum() == pytest.approx(metrics["kl_nats"], rel=1e-4)
    images = np.load(out / "images.npz")
    assert images["recon"].shape == images["samples"].shape == (3, 28, 28)
    info = json.loads((out / "info.json").read_text())
    assert info["family"] == "pixelcnn" and info["uses_z"] is True


def test_evaluate_is_deterministic(study):
    root, params, layout = study
    first = evaluate.run(params, "linear", 0, layout, progress=False)
    second = evaluate.run(params, "linear", 0, layout, progress=False)
    assert {k: v for k, v in first.items() if k != "seconds"} == \
           {k: v for k, v in second.items() if k != "seconds"}


def test_test_subset_is_sorted_seeded_and_random():
    first = evaluate.test_subset(10_000, 1000, 0)
    assert first.dtype == torch.int64 and first.shape == (1000,)
    assert torch.equal(first, first.sort().values) and len(first.unique()) == 1000
    assert 0 <= int(first.min()) and int(first.max()) < 10_000
    assert int(first.max()) > 9000  # not the first 1000 (the cleaner half of MNIST's test set)
    assert torch.equal(first, evaluate.test_subset(10_000, 1000, 0))
    assert not torch.equal(first, evaluate.test_subset(10_000, 1000, 1))
    assert torch.equal(evaluate.test_subset(10_000, None, 0), torch.arange(10_000))
    with pytest.raises(DataError, match="the test split has only 10000 images"):
        evaluate.test_subset(10_000, 10_001, 0)


def test_evaluation_scores_a_seeded_random_test_subset_shared_by_every_rung(study):
    root, params, layout = study
    train.run(params, "linear", 1, layout, progress=False)  # a second training seed
    runs = [("linear", 0), ("linear", 1), ("pixelcnn_2", 0)]
    for rung, seed in runs:
        evaluate.run(params, rung, seed, layout, progress=False)
    index = {run: pd.read_csv(layout.per_image(*run)).test_index.to_numpy() for run in runs}
    expected = evaluate.test_subset(200, 40, params.evaluate.seed).numpy()
    for run in runs:
        assert list(index[run]) == list(expected), run  # the same 40 images for every rung and seed
    assert list(expected) != list(range(40)) and expected.max() >= 100  # not the first n_test
    splits = load_splits(layout.binarized)
    shown = np.load(layout.eval_images("linear", 1))["x"]  # (n_show,28,28)
    assert (shown == splits["test"].x[expected[:3], 0].numpy()).all()  # the subset's first images

    other_seed = dataclasses.replace(params.evaluate, seed=1)
    result = evaluate.evaluate_model(load_model(layout.model("linear", 0))[0], splits["test"],
                                     splits["train"], other_seed, Precision(torch.device("cpu"), None),
                                     progress=False)
    moved = result.per_image.test_index.to_numpy()
    assert len(moved) == 40 and list(moved) != list(expected)  # evaluate.seed picks the images


def test_per_image_estimates_average_to_the_reported_metrics(study):
    root, params, layout = study
    metrics = evaluate.run(params, "pixelcnn_2", 0, layout, progress=False)
    per_image = pd.read_csv(layout.per_image("pixelcnn_2", 0))
    assert list(per_image.columns) == PER_IMAGE_COLUMNS and len(per_image) == metrics["n_test"]
    assert per_image.test_index.dtype.kind == "i"
    assert per_image.log_px_iw_nats.mean() == pytest.approx(-metrics["nll_iw_nats"], abs=1e-5)
    assert per_image.elbo_nats.mean() == pytest.approx(-metrics["nll_elbo_nats"], abs=1e-5)
    assert per_image.log_px_given_z_nats.mean() == pytest.approx(-metrics["rec_nats"], abs=1e-5)
    # independent pixels at the (add-one smoothed) training means, scored on the same images
    splits = load_splits(layout.binarized)
    p = (splits["train"].x.double().sum(0) + 1) / (len(splits["train"]) + 2)  # (1,28,28)
    x = splits["test"].x[int(per_image.test_index[0])].double()
    expected = float((x * p.log() + (1 - x) * (-p).log1p()).sum())
    assert per_image.log_px_independent_nats[0] == pytest.approx(expected, abs=1e-6)
    stderr = per_image.log_px_iw_nats.std(ddof=1) / math.sqrt(len(per_image))
    assert stderr == pytest.approx(metrics["nll_iw_stderr_nats"], rel=1e-4)
    assert per_image.log_px_iw_nats.std() > 0.1  # one value per image, not the mean repeated


def test_the_mi_cap_is_log_of_the_mixture_size_and_probe_train_size_null_means_every_image(study):
    root, params, layout = study
    metrics = evaluate.run(params, "linear", 0, layout, progress=False)
    n_probe_train = params.evaluate.probe_train_size
    assert metrics["mi_cap_nats"] == pytest.approx(math.log(metrics["n_test"] + n_probe_train), abs=1e-12)
    assert metrics["mi_nats"] <= metrics["mi_cap_nats"] + 1e-9
    splits = load_splits(layout.binarized)
    every = dataclasses.replace(params.evaluate, probe_train_size=None)
    result = evaluate.evaluate_model(load_model(layout.model("linear", 0))[0], splits["test"],
                                     splits["train"], every, Precision(torch.device("cpu"), None),
                                     progress=False)
    assert len(splits["train"]) == 500  # 600 synthetic training images less 100 for validation
    assert result.metrics["mi_cap_nats"] == pytest.approx(math.log(40 + 500), abs=1e-12)


def test_n_test_beyond_the_test_split_is_a_clear_error(study):
    root, params, layout = study
    too_many = dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate, n_test=201))
    with pytest.raises(DataError, match="evaluate.n_test: 201, but the test split has only 200 images"):
        evaluate.run(too_many, "linear", 0, layout, progress=False)


def test_a_missing_checkpoint_is_a_clear_error(study, tmp_path):
    root = Path(shutil.copytree(study[0], tmp_path / "copy"))
    (root / "params.yaml").write_text(yaml.safe_dump({**TINY_PARAMS, "seeds": [0, 5]}))
    proc = run_stage(root, "evaluate", "linear", "--seed", "5")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "seed5.pt: checkpoint missing (run its train stage first)" in proc.stderr
    assert not Layout(root).metrics("linear", 5).exists()


def test_a_seed_outside_seeds_is_refused_before_any_file_is_written(study):
    """Its files would be outputs of no DVC stage: untracked, and never in the report."""
    root, params, layout = study
    for stage in ("train", "evaluate"):
        proc = run_stage(root, stage, "linear", "--seed", "3")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "--seed 3 is not in `seeds` of" in proc.stderr and "(0): add it there first" in proc.stderr
        assert not layout.model("linear", 3).exists() and not layout.history("linear", 3).exists()
        assert not layout.metrics("linear", 3).exists() and not layout.eval_dir("linear", 3).exists()


def test_a_checkpoint_that_does_not_match_the_params_is_refused(study, tmp_path):
    root, params, layout = study
    other = dataclasses.replace(params.rung("pixelcnn_2"),
                                decoder=dataclasses.replace(params.rung("pixelcnn_2").decoder, channels=8))
    changed = dataclasses.replace(params, decoders={**params.decoders, "pixelcnn_2": other})
    with pytest.raises(CheckpointError, match="does not match params.yaml") as err:
        evaluate.run(changed, "pixelcnn_2", 0, layout, progress=False)
    assert "'channels': 4" in str(err.value) and "'channels': 8" in str(err.value)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the crafted file is plain pickle
def test_a_malicious_pickle_checkpoint_is_refused_without_running_it(study, tmp_path):
    root, params, layout = study
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": 1, "model_state": Exploit()}, f)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    torch.save({"format": 1, "payload": Exploit()}, tmp_path / "evil2.pt")
    with pytest.raises(CheckpointError, match="never unpickled with code execution"):
        load_checkpoint(tmp_path / "evil2.pt")
    assert not marker.exists()


def test_bad_k_is_refused_before_any_work(study, tmp_path):
    root, params, layout = study
    bad = {**TINY_PARAMS, "evaluate": {**TINY_PARAMS["evaluate"], "k": 0}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    proc = run_stage(tmp_path, "evaluate", "linear")
    assert proc.returncode == 1 and "evaluate.k: got 0" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_bf16_evaluation_agrees_with_fp32_within_five_hundredths_of_a_nat(study):
    """The reduced-precision path (bf16 autocast, channels_last) against plain fp32."""
    root, params, layout = study
    splits = load_splits(layout.binarized)
    config = dataclasses.replace(params.evaluate, k=50, n_show=1)
    nll = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        model, _, _ = load_model(layout.model("pixelcnn_2", 0))
        result = evaluate.evaluate_model(model, splits["test"], splits["train"], config,
                                         Precision(torch.device("cpu"), dtype), progress=False)
        nll[name] = result.metrics["nll_iw_nats"]
    assert abs(nll["bf16"] - nll["fp32"]) < 0.05, nll


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.1, 0.5, 0.99])
def test_a_truncated_checkpoint_is_named_with_what_to_do(study, tmp_path, fraction):
    root, params, layout = study
    data = layout.model("linear", 0).read_bytes()
    path = tmp_path / "data/models/linear/seed0.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(data[:int(len(data) * fraction)])
    expected = re.escape(f"{path}: ") + ".*truncated.*`dvc checkout` its train"
    with pytest.raises(CheckpointError, match=expected):
        load_model(path, params.rung("linear"), params.encoder)


def test_a_truncated_resume_file_says_it_can_be_deleted(study, tmp_path):
    root = Path(shutil.copytree(study[0], tmp_path / "copy"))
    scratch = Layout(root).scratch("linear", 0)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    scratch.write_bytes(Layout(root).model("linear", 0).read_bytes()[:5000])
    proc = run_stage(root, "train", "linear")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{scratch}: refused: not a complete checkpoint archive" in proc.stderr
    assert "resume state: delete it, and the run starts over" in proc.stderr


@pytest.mark.parametrize("craft, expected", [
    (lambda s: s.update(model_state=list(s["model_state"].values())),
     "model_state is not a mapping of tensors"),
    (lambda s: s["model_state"]["encoder.net.0.weight"].fill_(float("nan")),
     "weight encoder.net.0.weight of model_state is not finite"),
    (lambda s: s.pop("epoch"), "no valid `epoch` (got None)"),
    (lambda s: s.update(valid_kl_nats="a lot"), "no valid `valid_kl_nats` (got 'a lot')"),
])
def test_a_crafted_checkpoint_is_refused_before_any_evaluation(study, tmp_path, craft, expected):
    root = Path(shutil.copytree(study[0], tmp_path / "copy"))
    layout = Layout(root)
    for earlier in (root / "data/metrics", root / "data/eval"):  # from the tests above, if any ran
        shutil.rmtree(earlier, ignore_errors=True)
    state = load_checkpoint(layout.model("linear", 0))
    craft(state)
    torch.save(state, layout.model("linear", 0))
    proc = run_stage(root, "evaluate", "linear")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{layout.model('linear', 0)}: {expected}" in proc.stderr, proc.stderr
    assert "evaluate linear seed 0: K=" not in proc.stdout  # refused before the evaluation started
    assert not layout.metrics("linear", 0).exists()


def test_an_empty_binarized_file_is_a_clear_error(study, tmp_path):
    root = Path(shutil.copytree(study[0], tmp_path / "copy"))
    Layout(root).binarized.write_bytes(b"")
    proc = run_stage(root, "evaluate", "linear")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "Aborted" not in proc.stderr
    assert f"{Layout(root).binarized}: not a readable binarized-MNIST file" in proc.stderr


def test_the_code_digest_follows_exactly_the_code_dvc_tracks_for_evaluate(tmp_path):
    """code_sha256 covers the evaluate command's import closure, which is what the evaluate
    stage lists as its code deps (tests/test_closure.py), so DVC reruns an evaluation whenever
    its digest would change and a report never refuses runs DVC calls up to date; it changes
    with any file of the closure and with no other."""
    copy = Path(shutil.copytree(closure.STAGES, tmp_path / "stages",
                                ignore=shutil.ignore_patterns("__pycache__")))
    assert evaluate.code_sha256(copy) == evaluate.code_sha256()
    (copy / "report" / "page.py").write_text("# not evaluation code\n")
    assert evaluate.code_sha256(copy) == evaluate.code_sha256()
    with open(copy / "model" / "gated.py", "a") as f:
        f.write("\n# an edit\n")
    assert evaluate.code_sha256(copy) != evaluate.code_sha256()
