"""The evaluate stage on a tiny trained study: metrics, bad inputs, unsafe checkpoints, bf16."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle

import pandas as pd
import pytest
import torch
import yaml
from helpers import TINY_PARAMS, build_tiny_study, run_stage

from stages import evaluate
from stages.checkpoint import load_checkpoint
from stages.data import load_splits
from stages.errors import CheckpointError
from stages.runtime import Precision

METRIC_KEYS = {"nll_iw_nats", "nll_iw_stderr_nats", "iw_k", "n_test", "nll_elbo_nats", "kl_nats",
               "rec_nats", "bound_gap_nats", "mi_nats", "active_units", "probe_accuracy", "seconds"}


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
    out = layout.eval_dir("pixelcnn_2", 0)
    curve = pd.read_csv(out / "k_curve.csv")
    assert list(curve.k) == [1, 8]
    assert curve.nll_iw_nats.iloc[-1] == pytest.approx(metrics["nll_iw_nats"])
    dims = pd.read_csv(out / "latent_dims.csv")
    assert len(dims) == 4 and dims.kl_nats.sum() == pytest.approx(metrics["kl_nats"], rel=1e-4)
    import numpy as np

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


def test_a_missing_checkpoint_is_a_clear_error(study):
    root, params, layout = study
    proc = run_stage(root, "evaluate", "linear", "--seed", "5")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "seed5.pt: checkpoint missing (run its train stage first)" in proc.stderr
    assert not layout.metrics("linear", 5).exists()


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
    test = splits["test"].head(40)
    config = dataclasses.replace(params.evaluate, k=50, n_show=1)
    nll = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        from stages.checkpoint import load_model

        model, _, _ = load_model(layout.model("pixelcnn_2", 0))
        result = evaluate.evaluate_model(model, test, splits["train"], config,
                                         Precision(torch.device("cpu"), dtype), progress=False)
        nll[name] = result.metrics["nll_iw_nats"]
    assert abs(nll["bf16"] - nll["fp32"]) < 0.05, nll
