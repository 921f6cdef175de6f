"""The report stage on a small synthetic project: every input written by hand with numbers
whose conclusions are known (mlp keeps ~20 nats in z, the PixelCNN collapses), rendered by
the real stage function and once by the real `vae-study report` command."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages import gather, report
from stages.errors import DataError
from stages.evaluate import code_sha256, metrics_text
from stages.layout import Layout
from stages.live import EpochLog, read_history
from stages.params import parse_params

REPO = Path(__file__).resolve().parents[1]
FIGURES = ("headline", "strength", "kl_vs_z_adds", "kl_training", "rate_distortion", "k_convergence", "reconstructions",
           "samples", "latent_kl")
LATENT_DIM, N_SHOW, K, N_TEST = 8, 6, 100, 500

# rung -> (decoder entry, numbers of seed 0). rec + kl = -ELBO; -ELBO - nll = bound gap.
# Deliberately not in power order: the report must order by the measure, not by params.
NUMBERS = ("kl", "rec", "nll", "se", "mi", "au", "probe", "uses_z")
LADDER = {
    "pixelcnn_2": ({"family": "pixelcnn", "n_layers": 2, "channels": 8},
                   dict(zip(NUMBERS, (0.1, 88.4, 88.3, 0.9, 0.02, 0, 0.11, True)))),
    "mlp": ({"family": "mlp", "hidden": [64]},
            dict(zip(NUMBERS, (22.0, 72.0, 89.5, 1.0, 8.5, 8, 0.90, True)))),
    "conv": ({"family": "conv", "channels": 8},
             dict(zip(NUMBERS, (25.0, 68.0, 88.0, 1.0, 8.9, 8, 0.92, True)))),
    "pixelcnn_3x3": ({"family": "pixelcnn", "n_layers": 1, "first_kernel_size": 3, "channels": 8},
                     dict(zip(NUMBERS, (9.0, 78.0, 85.0, 0.9, 6.0, 6, 0.70, True)))),
    "pixelcnn_3x3_bias": ({"family": "pixelcnn", "n_layers": 1, "first_kernel_size": 3, "channels": 8,
                           "z_pathway": "bias"},
                          dict(zip(NUMBERS, (0.6, 110.0, 110.4, 1.1, 0.5, 1, 0.20, True)))),
    "pixelcnn_uncond": ({"family": "pixelcnn", "n_layers": 2, "channels": 8, "conditional": False},
                        dict(zip(NUMBERS, (0.02, 88.0, 88.0, 0.9, 0.0, 0, 0.10, False)))),
}
POWER_ORDER = ["mlp", "conv", "pixelcnn_3x3", "pixelcnn_3x3_bias", "pixelcnn_2", "pixelcnn_uncond"]
INDEPENDENT_NLL = 206.0  # -log p(x) of independent pixels at the training means, every rung's images
TEST_INDEX = np.sort(np.random.default_rng(7).choice(10000, N_TEST, replace=False))


def params_dict(seeds=(0,), threshold=1.0, rungs=tuple(LADDER)) -> dict:
    return {
        "binarize": {"method": "static", "seed": 0, "valid_size": 10000, "train_subset": 2000},
        "encoder": {"latent_dim": LATENT_DIM, "hidden": [32]},
        "train": {"epochs": 3, "batch_size": 64, "lr": 0.001, "precision": "auto", "valid_subset": None,
                  "patience": None, "min_delta_nats": 0.0},
        "evaluate": {"k": K, "n_test": N_TEST, "batch_size": 50, "chunk_size": 100, "precision": "auto",
                     "probe_train_size": None, "mi_samples": 5, "active_unit_threshold": 0.01,
                     "n_show": N_SHOW, "seed": 0},
        "report": {"collapse_threshold_nats": threshold},
        "seeds": list(seeds),
        "decoders": {r: LADDER[r][0] for r in rungs},
    }


def glyphs(n: int) -> np.ndarray:
    """(n,28,28) uint8 binary test 'digits': rings, bars and crosses of varying size."""
    yy, xx = np.mgrid[:28, :28]
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        r = 5 + i % 5
        if i % 3 == 0:
            out[i] = np.abs(np.hypot(yy - 14, xx - 14) - r) < 1.6
        elif i % 3 == 1:
            out[i] = (np.abs(xx - 14) < 2) & (np.abs(yy - 14) < r + 3)
        else:
            out[i] = ((np.abs(xx - yy) < 2) | (np.abs(xx + yy - 27) < 2)) & (np.abs(yy - 14) < r + 2)
    return out


def blur(x: np.ndarray) -> np.ndarray:
    p = x.astype(np.float32)
    for axis in (1, 2):
        p = (np.roll(p, 1, axis) + p + np.roll(p, -1, axis)) / 3
    return np.clip(0.05 + 0.9 * p, 0, 1)


def write_run(layout: Layout, rung: str, seed: int, v: dict, family: str,
              history_extra: dict | None = None) -> None:
    """metrics, eval files and history of one (rung, seed), as evaluate and train write them;
    `history_extra`: more per-epoch columns (3 epochs), as an aggressive run logs them."""
    elbo = v["rec"] + v["kl"]
    metrics = {"nll_iw_nats": v["nll"], "nll_iw_stderr_nats": v["se"], "iw_k": K, "n_test": N_TEST,
               "nll_elbo_nats": elbo, "kl_nats": v["kl"], "rec_nats": v["rec"],
               "bound_gap_nats": elbo - v["nll"], "mi_nats": v["mi"], "mi_cap_nats": math.log(50000 + N_TEST),
               "active_units": v["au"], "probe_accuracy": v["probe"], "seconds": 12.5}
    ev = layout.eval_dir(rung, seed)
    ev.mkdir(parents=True, exist_ok=True)
    difficulty = np.random.default_rng(3).normal(0, 15, N_TEST)  # the same images for every rung
    noise = np.random.default_rng(seed + 100 * len(rung)).normal(0, 0.5, N_TEST)
    centred = difficulty - difficulty.mean() + noise - noise.mean()  # per-image means stay exact
    pd.DataFrame({"test_index": TEST_INDEX, "log_px_iw_nats": -v["nll"] + centred,
                  "elbo_nats": -elbo + centred, "log_px_given_z_nats": -v["rec"] + centred,
                  "log_px_independent_nats": -INDEPENDENT_NLL + difficulty - difficulty.mean()}
                 ).to_csv(layout.per_image(rung, seed), index=False)
    ks = [1, 10, 100]
    pd.DataFrame({"k": ks, "nll_iw_nats": [elbo, (elbo + v["nll"]) / 2 + 0.1 * (elbo - v["nll"]), v["nll"]],
                  "nll_iw_stderr_nats": [v["se"] * 1.05, v["se"] * 1.02, v["se"]]}
                 ).to_csv(ev / "k_curve.csv", index=False)
    weights = 0.5 ** np.arange(LATENT_DIM)
    kl_dim = v["kl"] * weights / weights.sum()
    pd.DataFrame({"dim": range(LATENT_DIM), "kl_nats": kl_dim,
                  "posterior_mean_variance": kl_dim / 5, "active": np.arange(LATENT_DIM) < v["au"]}
                 ).to_csv(ev / "latent_dims.csv", index=False)
    x = glyphs(N_SHOW)
    rng = np.random.default_rng(seed)
    mean_digit = np.broadcast_to(blur(x).mean(0) * 0.6, x.shape)
    recon_probs = mean_digit if v["kl"] < 1 else blur(x)
    sample_probs = blur(glyphs(N_SHOW + 3)[3:])
    sample_probs = 0.5 * sample_probs + 0.5 * mean_digit if v["kl"] >= 1 else sample_probs
    np.savez_compressed(
        ev / "images.npz", x=x, recon=(rng.random(x.shape) < recon_probs).astype(np.uint8),
        recon_probs=np.asarray(recon_probs, np.float16),
        samples=(rng.random(x.shape) < sample_probs).astype(np.uint8),
        sample_probs=np.asarray(sample_probs, np.float16))
    info = {"precision": "fp32", "device": "cpu", "family": family, "uses_z": v["uses_z"],
            "n_params": 1000 + len(rung), "seed": seed, "best_epoch": 3,
            "valid_elbo_nats": -elbo, "valid_kl_nats": v["kl"], "code_sha256": code_sha256()}
    (ev / "info.json").write_text(json.dumps(info))
    set_metrics(layout, rung, seed, metrics)
    epochs = np.arange(1, 4)
    valid_kl = v["kl"] + (3 - epochs) * (2.0 if v["kl"] < 1 else -1.5)
    history = pd.DataFrame({"epoch": epochs, "images_seen": 2000 * epochs, "train_elbo_nats": -elbo - 10 / epochs,
                            "train_kl_nats": valid_kl, "train_rec_nats": v["rec"] + 10 / epochs,
                            "valid_elbo_nats": -elbo - 8 / epochs, "valid_kl_nats": valid_kl,
                            "valid_rec_nats": v["rec"] + 8 / epochs, "beta": 1.0,
                            "seconds": 4.0, **(history_extra or {})})
    epoch_log = EpochLog(layout.history(rung, seed))  # the training stage's own logger
    for row in history.to_dict("records"):
        epoch_log.log(row)
    epoch_log.close()


def set_metrics(layout: Layout, rung: str, seed: int, metrics: dict) -> None:
    """Write one run's metrics as its evaluation would: info.json records their digest."""
    text = metrics_text(metrics)
    layout.metrics(rung, seed).parent.mkdir(parents=True, exist_ok=True)
    layout.metrics(rung, seed).write_text(text)
    info = json.loads(layout.eval_info(rung, seed).read_text())
    info["metrics_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    layout.eval_info(rung, seed).write_text(json.dumps(info))


def update_metrics(layout: Layout, rung: str, seed: int, **changes) -> None:
    """One run's metrics as an evaluation with those settings or numbers would have written them."""
    set_metrics(layout, rung, seed, {**json.loads(layout.metrics(rung, seed).read_text()), **changes})


def rescale_epochs(layout: Layout, rung: str, f) -> None:
    """Relog seed 0's history of `rung` with epoch e renumbered f(e)."""
    history = read_history(layout.history(rung, 0))
    shutil.rmtree(layout.history(rung, 0))
    epoch_log = EpochLog(layout.history(rung, 0))
    for row in history.assign(epoch=f(history["epoch"])).to_dict("records"):
        epoch_log.log(row)
    epoch_log.close()


def make_project(root: Path, seeds=(0,), threshold=1.0, jitter=None, rungs=tuple(LADDER)):
    """A synthetic project under root; jitter(rung, seed) -> {metric: offset} per run."""
    raw = params_dict(seeds, threshold, rungs)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = parse_params(raw)
    layout = Layout(root)
    for rung in rungs:
        entry, values = LADDER[rung]
        for s in seeds:
            offsets = jitter(rung, s) if jitter else {}
            numbers = {k: v + offsets[k] if k in offsets else v for k, v in values.items()}
            write_run(layout, rung, s, numbers, entry["family"])
    layout.binarized_summary.parent.mkdir(parents=True, exist_ok=True)
    layout.binarized_summary.write_text(json.dumps({
        "method": "static", "seed": 0,
        "train": {"n_images": 2000, "pixel_mean": 0.130}, "valid": {"n_images": 10000, "pixel_mean": 0.129},
        "test": {"n_images": 10000, "pixel_mean": 0.133}}))
    layout.reference.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "reference/published.csv", layout.reference)
    return params, layout


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One seed, default threshold: rendered once, inspected by several tests."""
    root = tmp_path_factory.mktemp("study")
    params, layout = make_project(root)
    results = report.run(params, layout)
    return params, layout, results


def test_every_figure_is_written_as_png_and_svg(rendered):
    _, layout, _ = rendered
    for name in FIGURES:
        png, svg = layout.reports / f"figures/{name}.png", layout.reports / f"figures/{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, name
        assert b"<svg" in svg.read_bytes()[:2000] and svg.stat().st_size > 5000, name
    leftovers = [p.name for p in layout.reports.rglob("*.tmp")]
    assert not leftovers


def test_results_csv_orders_the_rungs_by_power_not_by_params(rendered):
    _, layout, _ = rendered
    table = pd.read_csv(layout.reports / "results.csv")
    assert list(table["rung"]) == POWER_ORDER
    by = table.set_index("rung")
    for rung, (_, v) in LADDER.items():
        assert by.loc[rung, "kl_nats"] == pytest.approx(v["kl"], abs=1e-6)
        assert by.loc[rung, "nll_iw_nats"] == pytest.approx(v["nll"], abs=1e-6)
        assert by.loc[rung, "bound_gap_nats"] == pytest.approx(v["rec"] + v["kl"] - v["nll"], abs=1e-5)
        assert by.loc[rung, "probe_accuracy"] == pytest.approx(v["probe"], abs=1e-6)
        assert math.isnan(by.loc[rung, "kl_nats_std"])  # one seed: no spread
    rf = list(table["receptive_field"])
    assert rf[:4] == [0, 0, 4, 4] and rf[4] == rf[5] > 24  # 7x7 mask A + one 3x3 mask B
    assert list(table["role"]) == ["trend", "trend", "trend", "comparison", "trend", "no z"]
    # one seed gives no spread, so no verdict: never "collapsed" on a single draw
    assert list(table["verdict"]) == ["no verdict (one seed)"] * 5 + ["n/a (no z)"]
    assert (table["iw_k"] == K).all() and (table["latent_dim"] == LATENT_DIM).all()


def claims_of(layout) -> dict:
    return json.loads((layout.reports / "claims.json").read_text())


def test_the_report_renders_every_claim_with_its_numbers(rendered):
    _, layout, _ = rendered
    found = claims_of(layout)
    assert {"collapse_optimum", "what_z_adds", "power_trend", "kl_gone_at_top", "verdicts",
            "pathway_pixelcnn_3x3_bias", "training_order", "probe", "mutual_information", "bound_gap",
            "k_convergence"} <= set(found)
    trend = found["power_trend"]
    # KL along the receptive field (mlp, conv: 0, a tie; 3x3: 4; 2-layer) = 22, 25, 9, 0.1
    assert trend["numbers"]["spearman_rho"] == pytest.approx(-math.sqrt(0.9))
    assert trend["numbers"]["spearman_p"] == pytest.approx(4 / 24)
    assert trend["numbers"]["step_words"] == ["undecided", "undecided"]  # one seed: no interval
    assert "`mlp`/`conv` share a receptive field: a tie" in trend["text"] and "falls" not in trend["text"]
    assert found["kl_gone_at_top"]["numbers"]["top_rung"] == "pixelcnn_2"
    assert found["kl_gone_at_top"]["numbers"]["share_gone_percent"]["mean"] == pytest.approx(100 * (1 - 0.1 / 23.5))
    assert "with the spatial pathway `pixelcnn_3x3` keeps 9.00; the difference, 8.40 nats, is unresolved" \
        in found["pathway_pixelcnn_3x3_bias"]["text"]  # one seed: no interval, no decision
    rows = {r["rung"]: r for r in found["what_z_adds"]["numbers"]["rows"]}
    assert rows["pixelcnn_2"]["twin"] == "pixelcnn_uncond"  # the same architecture without z
    assert rows["pixelcnn_2"]["z_adds_iw_nats"] == pytest.approx(-0.3, abs=1e-6)  # paired: -88.3 - (-88.0)
    assert rows["pixelcnn_2"]["z_adds_elbo_nats"] == pytest.approx(-0.5, abs=1e-6)  # -(88.4 + 0.1) + 88.0
    assert rows["mlp"]["twin"] == "independent pixels"  # factorized: no trained twin
    assert rows["mlp"]["z_adds_iw_nats"] == pytest.approx(INDEPENDENT_NLL - 89.5, abs=1e-6)
    assert "pixelcnn_3x3" not in rows  # it has no twin in this ladder
    optimum = found["collapse_optimum"]["numbers"]  # one seed decides nothing
    assert optimum["first_rung"] is None and optimum["unresolved"] == ["mlp", "conv", "pixelcnn_2"]
    assert "it is unresolved at `mlp`, `conv`, `pixelcnn_2`" in found["collapse_optimum"]["text"]
    assert found["abstract"]["sentences"][0].startswith("KL falls at no step up the power axis at 95 %")
    assert found["abstract"]["scope"].startswith("Scope: MNIST, static binarization, ")
    assert found["mutual_information"]["numbers"]["lower_bounds"] == []
    md = (layout.reports / "report.md").read_text()
    for name, claim in found.items():
        assert claim["text"] in md, name  # the page carries every generated claim and the answer
    assert md.index("## The answer") < md.index("## What the numbers show") < md.index("## The question")
    assert "small-scale" in md and "NOT comparable" in md


def test_a_threshold_verdict_needs_its_95_percent_interval_clear_of_the_threshold(tmp_path):
    """3 seeds with KL spread: clear rungs get a verdict, one near the threshold is unresolved."""
    spread = {0: -1.0, 1: 0.0, 2: 1.0}
    kl_offsets = {"pixelcnn_2": 0.05, "pixelcnn_3x3_bias": 0.3, "mlp": 1.0, "conv": 1.0,
                  "pixelcnn_3x3": 1.0}
    params, layout = make_project(tmp_path, seeds=(0, 1, 2),
                                  jitter=lambda r, s: {"kl": kl_offsets.get(r, 0.0) * spread[s]})
    results = report.run(params, layout).set_index("rung")
    # pixelcnn_2: 0.1 ± 0.05 -> [-0.02, 0.22]: collapsed; the bias rung 0.6 ± 0.3 -> [-0.15, 1.35]
    assert results.loc["pixelcnn_2", "verdict"] == "collapsed"
    assert results.loc["pixelcnn_3x3_bias", "verdict"] == "unresolved"
    assert results.loc["mlp", "verdict"] == "not collapsed"
    assert results.loc["pixelcnn_uncond", "verdict"] == "n/a (no z)"
    text = claims_of(layout)["verdicts"]["text"]
    assert "unresolved (the interval contains the threshold): `pixelcnn_3x3_bias` (about 5 seeds" in text
    md = (layout.reports / "report.md").read_text()
    assert "22.00 ± 1.00" in md and "Mean ± standard deviation over seeds 0, 1, 2" in md


def test_several_seeds_give_mean_and_std(tmp_path):
    sign = {0: -1.0, 1: 1.0}
    params, layout = make_project(
        tmp_path, seeds=(0, 1),
        jitter=lambda r, s: {"kl": {"mlp": 2.0, "pixelcnn_uncond": 0.0}.get(r, 0.05) * sign[s],
                             "nll": sign[s]})
    report.run(params, layout)
    table = pd.read_csv(layout.reports / "results.csv").set_index("rung")
    assert table.loc["mlp", "kl_nats"] == pytest.approx(22.0)
    assert table.loc["mlp", "kl_nats_std"] == pytest.approx(2 * math.sqrt(2), abs=1e-5)  # ddof 1
    assert table.loc["pixelcnn_2", "kl_nats_std"] == pytest.approx(0.1 / math.sqrt(2), abs=1e-5)
    assert table.loc["conv", "nll_iw_nats_std"] == pytest.approx(math.sqrt(2), abs=1e-5)
    assert (table["n_seeds"] == 2).all() and (table["seeds"] == "0;1").all()
    trend = claims_of(layout)["power_trend"]
    assert "(95 % intervals: the table of steps.)" in trend["text"] and len(trend["numbers"]["steps"]) == 2


@pytest.mark.parametrize("victim", ["metrics", "images", "history", "summary", "reference"])
def test_a_missing_input_names_the_file_and_writes_nothing(tmp_path, victim):
    params, layout = make_project(tmp_path)
    path = {"metrics": layout.metrics("mlp", 0),
            "images": layout.eval_dir("pixelcnn_2", 0) / "images.npz",
            "history": layout.history("conv", 0),
            "summary": layout.binarized_summary, "reference": layout.reference}[victim]
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    fix = {"metrics": "`dvc repro evaluate@mlp-0`", "images": "`dvc repro evaluate@pixelcnn_2-0`",
           "history": "`dvc repro train@conv-0`", "summary": "`dvc repro binarize`",
           "reference": f"`git checkout -- {path}`"}[victim]
    with pytest.raises(DataError) as err:
        report.run(params, layout)
    assert str(path) in str(err.value) and fix in str(err.value)
    assert "1 input file(s) missing" in str(err.value)
    assert not layout.reports.exists()


@pytest.mark.parametrize("victim", ["metrics", "images", "k_curve", "nan"])
def test_a_corrupt_input_is_a_data_error(tmp_path, victim):
    params, layout = make_project(tmp_path)
    ev = layout.eval_dir("mlp", 0)
    path, content, message = {
        "metrics": (layout.metrics("conv", 0), json.dumps({"kl_nats": 1.0}), "lacks nll_iw_nats"),
        "images": (ev / "images.npz", (ev / "images.npz").read_bytes()[:200], "not a zip file"),
        "k_curve": (ev / "k_curve.csv", "k,nll\n1,2\n", "lacks nll_iw_nats, nll_iw_stderr_nats"),
        "nan": (layout.metrics("mlp", 0), layout.metrics("mlp", 0).read_text()
                .replace('"kl_nats": 22.0', '"kl_nats": NaN'), "no usable numbers \\(kl_nats\\)"),
    }[victim]
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError) as err:
        report.run(params, layout)
    assert str(path) in str(err.value) and re.search(message, str(err.value)), err.value
    assert "`dvc repro evaluate@" in str(err.value)
    assert not layout.reports.exists()


def test_a_report_never_mixes_evaluations_and_names_the_run_that_differs(tmp_path):
    """One run scored at another K (or on another number of test images) is named with its file;
    a per-image table cut short is named as truncated, not as 'other test images'."""
    params, layout = make_project(tmp_path)
    path = layout.metrics("conv", 0)
    update_metrics(layout, "conv", 0, iw_k=20000)
    with pytest.raises(DataError) as err:
        report.run(params, layout)
    assert f"K = {K} for 5 runs, but `conv` seed 0 (K = 20,000; {path})" in str(err.value)
    update_metrics(layout, "conv", 0, iw_k=K)
    table = layout.per_image("pixelcnn_2", 0)
    table.write_text("\n".join(table.read_text().splitlines()[:200]) + "\n")  # a truncated write
    with pytest.raises(DataError, match=rf"{re.escape(str(table))} has 199 rows but .* says {N_TEST} test "
                                        r"images \(truncated"):
        report.run(params, layout)
    assert not layout.reports.exists()


def test_metrics_from_another_evaluation_or_other_code_are_named_with_their_run(tmp_path):
    """A metrics file that is not the one its eval folder was written with (an evaluation
    interrupted between its writes, files of two runs mixed), and a run evaluated by other code,
    are each refused with the run's own files named."""
    params, layout = make_project(tmp_path, seeds=(0, 1))
    path = layout.metrics("conv", 1)
    path.write_text(path.read_text().replace('"kl_nats": 25.0', '"kl_nats": 24.0'))  # not rewritten whole
    with pytest.raises(DataError, match=rf"{re.escape(str(path))} is not the metrics file that "
                                        rf"{re.escape(str(layout.eval_info('conv', 1)))} was written with"):
        report.run(params, layout)
    update_metrics(layout, "conv", 1, kl_nats=25.0)
    info_path = layout.eval_info("mlp", 0)
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "code_sha256": "0" * 64}))
    with pytest.raises(DataError) as err:
        report.run(params, layout)
    assert (f"the evaluation code's sha256 = {code_sha256()[:12]} for 11 runs, but `mlp` seed 0 "
            f"(the evaluation code's sha256 = 000000000000; {info_path})") in str(err.value)
    assert not layout.reports.exists()


def test_a_damaged_file_is_blamed_on_its_own_run_not_on_an_intact_one(tmp_path):
    """The first run read is no yardstick: a truncated latent table of seed 0 names seed 0's
    file; test digits that differ are named where they differ from the other runs."""
    params, layout = make_project(tmp_path, seeds=(0, 1))
    latent = layout.latent_dims("pixelcnn_2", 0)  # the first rung read
    latent.write_text("\n".join(latent.read_text().splitlines()[:4]) + "\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(latent))} has 3 rows, but "
                                        rf"encoder.latent_dim is {LATENT_DIM} \(truncated"):
        report.run(params, layout)
    write_run(layout, "pixelcnn_2", 0, LADDER["pixelcnn_2"][1], "pixelcnn")
    images = layout.eval_images("pixelcnn_2", 0)
    with np.load(images) as f:
        arrays = {k: f[k] for k in f.files}
    np.savez_compressed(images, **{**arrays, "x": 1 - arrays["x"]})
    with pytest.raises(DataError, match=rf"{re.escape(str(images))} shows other test digits than the other runs"):
        report.run(params, layout)


def test_paper_scale_is_decided_from_the_data_and_text_is_escaped(tmp_path):
    """Full split, full schedule, K >= 5000 on all 10,000 test images: comparable; text escaped."""
    params, layout = make_project(tmp_path)
    summary = json.loads(layout.binarized_summary.read_text())
    summary["train"]["n_images"] = 50000
    layout.binarized_summary.write_text(json.dumps(summary))
    for rung in LADDER:
        update_metrics(layout, rung, 0, iw_k=5000, n_test=10000)
        per_image = pd.read_csv(layout.per_image(rung, 0))  # every test image, as evaluate writes them
        pd.concat([per_image] * 20).assign(test_index=range(10000)).to_csv(layout.per_image(rung, 0), index=False)
        rescale_epochs(layout, rung, lambda e: e * 50)
    published = pd.read_csv(layout.reference)
    published.loc[0, "model"] = "<b>Conv</b> & co"
    published.to_csv(layout.reference, index=False)
    report.run(params, layout)
    md, page = (layout.reports / "report.md").read_text(), (layout.reports / "index.html").read_text()
    assert ("This run is paper-scale (50,000 training images for 150 epochs, K = 5,000 on 10,000 "
            "test images)") in md
    assert "NOT comparable" not in md and "NOT comparable" not in page
    assert "&lt;b&gt;Conv&lt;/b&gt; &amp; co" in page and "<b>Conv</b>" not in page
    # a short training schedule is not comparable, whatever K and the test set
    rescale_epochs(layout, "mlp", lambda e: e * 30)
    data = report.collect(params, layout)
    ok, scale = report.paper_scale(data, report.summarize(data, 1.0))
    assert ok is True  # 150 epochs remain the shortest run's
    assert "50,000 training images for 150-4500 epochs" in scale  # runs of unequal length: a span
    for rung in LADDER:
        rescale_epochs(layout, rung, lambda e: e // 2)
    data = report.collect(params, layout)
    assert report.paper_scale(data, report.summarize(data, 1.0))[0] is False  # 75 epochs
    # one rung on another test set: not a mixed report that passes for paper scale, a refusal
    update_metrics(layout, "mlp", 0, n_test=9999)
    with pytest.raises(DataError, match=r"but `mlp` seed 0 \(test images = 9,999"):
        report.collect(params, layout)


def test_reruns_give_identical_bytes(tmp_path, rendered):
    """Same inputs, fresh project: every output byte-identical (no dates, fixed SVG ids)."""
    params, layout = make_project(tmp_path)
    report.run(params, layout)
    first = rendered[1].reports
    for path in sorted(first.rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (layout.reports / path.relative_to(first)).read_bytes(), path


def test_git_revision_is_reported(tmp_path):
    assert report.git_revision(tmp_path) == "unknown"
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.txt").write_text("a")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert report.git_revision(tmp_path) == head
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/report.md").write_text("the report's own output does not count")
    (tmp_path / "profiles/long").mkdir(parents=True)
    (tmp_path / "profiles/long/dvc.lock").write_text("nor a lock file the running repro rewrites")
    assert report.git_revision(tmp_path) == head
    (tmp_path / "a.txt").write_text("b")
    assert report.git_revision(tmp_path) == head + " + uncommitted changes"


def test_cli_renders_the_report_and_reports_missing_files(tmp_path):
    make_project(tmp_path)
    cli = Path(sys.executable).with_name("vae-study")
    subprocess.run([str(cli), "gather", "--root", str(tmp_path)], check=True, capture_output=True)
    cmd = [str(cli), "report", "--root", str(tmp_path), "--params", str(tmp_path / "params.yaml")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "KL falls at no step up the power axis at 95 %" in done.stdout and "Scope: MNIST" in done.stdout
    for name in ("results.csv", "report.md", "index.html", "figures/headline.png"):
        assert (tmp_path / "reports" / name).stat().st_size > 0
    gather.gathered(Layout(tmp_path)).metrics("conv", 0).unlink()  # the report reads the copy only
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "error: report: 1 input file(s) missing" in done.stderr and "conv/seed0.json" in done.stderr
    assert "written by stage gather: run `dvc repro gather`" in done.stderr


def test_html_is_self_contained_and_escaped(rendered):
    _, layout, _ = rendered
    page = (layout.reports / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(FIGURES)
    assert not re.search(r'(src|href)="(https?:|//|figures/)', page)
    assert "Pixel Recurrent Neural Networks (van den Oord et al.) 2016" in page
    assert "<code>pixelcnn_2</code>" in page and "KL[q(z|x) || p(z)]" in page
    md = (layout.reports / "report.md").read_text()
    assert all(f"](figures/{name}.png)" in md for name in FIGURES)


def test_page_opens_in_a_browser_with_every_image_shown(rendered, chromium, tmp_path):
    """Headless Chromium loads index.html; a script counts the images that decoded."""
    _, layout, _ = rendered
    page = tmp_path / "check.html"
    probe = ("<script>window.addEventListener('load', () => {const imgs = [...document.images];"
             "const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;"
             "const pre = document.createElement('pre'); pre.id = 'img-check';"
             "pre.textContent = `total=${imgs.length} ok=${ok}`; document.body.append(pre);});</script>")
    page.write_text((layout.reports / "index.html").read_text().replace("</body>", probe + "</body>"))
    dom = chromium(page)
    found = re.search(r'<pre id="img-check">total=(\d+) ok=(\d+)</pre>', dom)
    assert found, dom[-2000:]
    total, ok = map(int, found.groups())
    assert total == len(FIGURES) and ok == total


def test_the_report_renders_the_same_from_the_gathered_copies_alone(tmp_path):
    """The report stage reads reports/inputs (stages.gather), which git tracks: with data/ gone,
    as on a clone, it renders the same tables and claims; only the sources line moves."""
    params, layout = make_project(tmp_path)
    report.run(params, layout)
    direct = {name: (layout.reports / name).read_bytes() for name in ("results.csv", "claims.json")}
    md_direct = (layout.reports / "report.md").read_text()
    gather.gather(layout)
    shutil.rmtree(tmp_path / "data")
    report.run(params, gather.gathered(layout))
    assert {name: (layout.reports / name).read_bytes() for name in direct} == direct
    md = (layout.reports / "report.md").read_text()
    assert "reports/inputs/metrics" in md and md.replace("reports/inputs/", "data/") == md_direct


def test_gather_names_what_is_missing_and_keeps_the_copy_it_had(tmp_path):
    params, layout = make_project(tmp_path)
    gather.gather(layout)
    had = sorted(p.relative_to(gather.gathered(layout).data) for p in gather.gathered(layout).data.rglob("*"))
    assert Path("metrics/mlp/seed0.json") in had and Path("binarized/summary.json") in had
    shutil.rmtree(layout.data / "eval")
    with pytest.raises(DataError, match=r"gather: missing .*data/eval.*dvc repro"):
        gather.gather(layout)
    assert sorted(p.relative_to(gather.gathered(layout).data) for p in gather.gathered(layout).data.rglob("*")) == had
    shutil.rmtree(gather.gathered(layout).data / "metrics")  # a copy lost: the report names the stage that writes it
    with pytest.raises(DataError, match=r"inputs/metrics/\S+ +\(written by stage gather"):
        report.run(params, gather.gathered(layout))


def test_the_training_figure_averages_only_where_every_seed_still_trains():
    """Seed 1 stopped after epoch 2: the mean line ends there and seed 0 goes on alone, so no
    mean ever jumps to a single seed's value."""
    from stages.report import figures

    rows = [{"rung": "a", "seed": s, "images_seen": 100 * e, "valid_kl_nats": kl,
             "valid_elbo_nats": -100.0 + e}
            for s, kls in ((0, [1.0, 2.0, 3.0, 4.0]), (1, [3.0, 4.0])) for e, kl in enumerate(kls, 1)]
    fig = figures.kl_training(pd.DataFrame(rows), ["a"], set(), 1.0)
    ax_kl = fig.axes[0]
    mean, alone = ax_kl.lines[0], ax_kl.lines[1]
    assert list(mean.get_xdata()) == [100, 200] and list(mean.get_ydata()) == [2.0, 3.0]
    assert list(alone.get_xdata()) == [200, 300, 400] and list(alone.get_ydata()) == [2.0, 3.0, 4.0]
