"""Reading the report's inputs: everything train and evaluate wrote, checked before anything is
written (the first step of the report's one-way flow: collect -> tables -> claims -> figures ->
page; `stages.report` runs it).

For every rung and seed: the metrics, per-image estimates, K-curve, per-dimension KL, images and
training history (`collect`), each named with the stage that writes it when it is missing or
unreadable; and where the numbers came from (`git_revision`, `dvc_version`).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.errors import DataError
from stages.gather import GatheredLayout
from stages.layout import Layout
from stages.live import read_history
from stages.model.registry import IMAGE_SHAPE
from stages.params import StudyParams


METRICS = ("nll_iw_nats", "nll_iw_stderr_nats", "nll_elbo_nats", "kl_nats", "rec_nats",
           "bound_gap_nats", "mi_nats", "active_units", "probe_accuracy", "seconds")
METRIC_KEYS = (*METRICS, "iw_k", "n_test", "mi_cap_nats")
INFO_KEYS = ("family", "uses_z", "n_params", "best_epoch", "code_sha256", "metrics_sha256")
IMAGE_KEYS = ("x", "recon", "recon_probs", "samples", "sample_probs")
K_CURVE_COLUMNS = ("k", "nll_iw_nats", "nll_iw_stderr_nats")
LATENT_COLUMNS = ("dim", "kl_nats", "posterior_mean_variance", "active")
HISTORY_COLUMNS = ("epoch", "images_seen", "valid_elbo_nats", "valid_kl_nats", "valid_rec_nats")
PER_IMAGE_COLUMNS = ("test_index", "log_px_iw_nats", "elbo_nats", "log_px_given_z_nats", "log_px_independent_nats")
PUBLISHED_COLUMNS = ("paper", "year", "binarization", "model", "ladder_rung", "nll_nats",
                     "nll_is_bound", "kl_nats", "importance_samples", "where")
PAPER_TRAIN, PAPER_K, PAPER_TEST, PAPER_EPOCHS = 50000, 5000, 10000, 100
REMEDY_COLUMNS = ("paper", "year", "data", "model", "remedy", "kl_nats", "nll_nats", "where")


@dataclass
class Run:
    """Everything evaluate and train wrote for one (rung, seed)."""

    metrics: dict[str, Any]
    k_curve: pd.DataFrame  # k, nll_iw_nats, nll_iw_stderr_nats
    latent: pd.DataFrame  # dim, kl_nats, posterior_mean_variance, active
    images: dict[str, np.ndarray]  # x, recon, recon_probs, samples, sample_probs: (n,28,28)
    info: dict[str, Any]
    history: pd.DataFrame  # epoch, images_seen, ..., valid_kl_nats, ...
    per_image: pd.DataFrame  # test_index, log_px_iw_nats, elbo_nats: one row per test image


@dataclass
class ReportData:
    params: StudyParams
    runs: dict[tuple[str, int], Run]  # (rung, seed) in ladder x seeds order
    summary: dict[str, Any]  # binarize's summary.json
    published: pd.DataFrame
    sources: dict[str, Any] | None  # download's sources.json, if present
    remedies: pd.DataFrame | None = None  # published KL / NLL per remedy of collapse (a grid study)


def _fix(path: Path, stage: str | None) -> str:
    return (f"written by stage {stage}: run `dvc repro {stage}`" if stage else
            f"kept in git: restore it with `git checkout -- {path}`")


def _read(path: Path, stage: str | None, reader, required: tuple[str, ...] = ()) -> Any:
    """Read one input with `reader`; any problem becomes a DataError naming file and stage."""
    fix = _fix(path, stage)
    try:
        value = reader(path)
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"report: cannot read {path}: {e}; {fix}") from None
    missing = [k for k in required if k not in value]
    if missing:
        raise DataError(f"report: {path} lacks {', '.join(missing)}; {fix}")
    return value


def _json(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _writer(layout: Layout, stage: str) -> str:
    """The stage that writes an input where the report reads it: gather, for the copies in git."""
    return "gather" if isinstance(layout, GatheredLayout) else stage


def _run_files(layout: Layout, r: str, s: int) -> dict[str, tuple[Path, str, Any, tuple[str, ...]]]:
    """One (rung, seed)'s inputs by `Run` field: (path, writing stage, reader, required keys)."""
    evaluated, trained = _writer(layout, f"evaluate@{r}-{s}"), _writer(layout, f"train@{r}-{s}")
    return {
        "metrics": (layout.metrics(r, s), evaluated, _json, METRIC_KEYS),
        "k_curve": (layout.k_curve(r, s), evaluated, pd.read_csv, K_CURVE_COLUMNS),
        "latent": (layout.latent_dims(r, s), evaluated, pd.read_csv, LATENT_COLUMNS),
        "images": (layout.eval_images(r, s), evaluated, _npz, IMAGE_KEYS),
        "info": (layout.eval_info(r, s), evaluated, _json, INFO_KEYS),
        "history": (layout.history(r, s), trained, read_history, HISTORY_COLUMNS),
        "per_image": (layout.per_image(r, s), evaluated, pd.read_csv, PER_IMAGE_COLUMNS),
    }


def _inputs(params: StudyParams, layout: Layout) -> list[tuple[Path, str | None]]:
    """Every file the report reads, with the DVC stage that writes it (None: kept in git)."""
    files = [(layout.binarized_summary, _writer(layout, "binarize")), (layout.reference, None)]
    if params.cells:  # a grid study sets its remedies beside the published ones
        files.append((layout.remedies, None))
    for r in params.decoders:
        for s in params.seeds:
            files += [(path, stage) for path, stage, *_ in _run_files(layout, r, s).values()]
    return files


def collect(params: StudyParams, layout: Layout) -> ReportData:
    """Read and validate every input; raise one DataError listing all missing files."""
    missing = [(p, stage) for p, stage in _inputs(params, layout) if not p.exists()]
    if missing:
        lines = "\n".join(f"  - {p}  ({_fix(p, stage)})" for p, stage in missing[:20])
        more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise DataError(f"report: {len(missing)} input file(s) missing; run the stages that write "
                        f"them (`dvc repro report` runs all of them):\n{lines}{more}")
    runs = {}
    for r in params.decoders:
        for s in params.seeds:
            files = _run_files(layout, r, s)
            run = Run(**{field: _read(*spec) for field, spec in files.items()})
            metrics_path, stage = files["metrics"][:2]
            bad = [k for k in METRICS if not isinstance(run.metrics[k], (int, float))
                   or not math.isfinite(run.metrics[k])]
            if bad or run.k_curve.empty or run.latent.empty or run.history.empty:
                raise DataError(f"report: {metrics_path} or its eval/history files hold "
                                f"no usable numbers ({', '.join(bad) or 'empty table'}); "
                                f"{_fix(metrics_path, stage)}")
            shapes = {k: v.shape for k, v in run.images.items()}
            side = IMAGE_SHAPE[1:]  # (28, 28)
            if any(len(sh) != 3 or sh[1:] != side or sh[0] != shapes["x"][0] for sh in shapes.values()):
                raise DataError(f"report: {layout.eval_images(r, s)} holds arrays of shapes {shapes}, "
                                f"expected (n,{side[0]},{side[1]}) each; "
                                f"{_fix(layout.eval_images(r, s), stage)}")
            runs[(r, s)] = run
    check_one_evaluation(runs, layout)
    latent_dim = params.encoder.latent_dim
    x_digest = pd.Series({key: hashlib.sha256(run.images["x"].tobytes()).hexdigest()
                          for key, run in runs.items()})
    usual_x = x_digest.mode().iloc[0]
    for (r, s), run in runs.items():  # evaluate's settings are shared: outputs must agree
        stage = f"evaluate@{r}-{s}"
        if x_digest[(r, s)] != usual_x:
            raise DataError(f"report: {layout.eval_images(r, s)} shows other test digits than the "
                            f"other runs (stale output?); {_fix(layout.eval_images(r, s), stage)}")
        if len(run.latent) != latent_dim:
            raise DataError(f"report: {layout.latent_dims(r, s)} has {len(run.latent)} rows, but "
                            f"encoder.latent_dim is {latent_dim} (truncated, or from another "
                            f"encoder); {_fix(layout.latent_dims(r, s), stage)}")
    summary = _read(layout.binarized_summary, _writer(layout, "binarize"), _json,
                    ("method", "train", "valid", "test"))
    published = _read(layout.reference, None, pd.read_csv, PUBLISHED_COLUMNS)
    try:  # optional: where download found the files
        sources = _json(layout.raw / "sources.json")
    except (OSError, ValueError, TypeError):
        sources = None
    remedies = (_read(layout.remedies, None, pd.read_csv, REMEDY_COLUMNS) if params.cells else None)
    return ReportData(params, runs, summary, published, sources, remedies=remedies)


def check_one_evaluation(runs: dict[tuple[str, int], Run], layout: Layout) -> None:
    """Every run scored with the same K on the same number of test images by the same code, and
    each run's files from one evaluation (its metrics the ones its info.json was written with,
    its per-image table as long as its metrics say): a report never mixes evaluations, and
    names the runs that differ from the rest (or whose files disagree with each other)."""
    for (r, s), run in runs.items():
        metrics_path, stage = layout.metrics(r, s), f"evaluate@{r}-{s}"
        if hashlib.sha256(metrics_path.read_bytes()).hexdigest() != run.info["metrics_sha256"]:
            raise DataError(f"report: {metrics_path} is not the metrics file that "
                            f"{layout.eval_info(r, s)} was written with (an evaluation interrupted "
                            f"between its writes, or files of two runs mixed); {_fix(metrics_path, stage)}")
    settings = (("iw_k", "K", lambda run: int(run.metrics["iw_k"]), "{:,}"),
                ("n_test", "test images", lambda run: int(run.metrics["n_test"]), "{:,}"),
                ("code_sha256", "the evaluation code's sha256", lambda run: str(run.info["code_sha256"]),
                 "{:.12}"))
    for key, label, read, form in settings:
        values = pd.Series({run_key: read(run) for run_key, run in runs.items()})
        if values.nunique() > 1:
            usual = values.mode().iloc[0]
            where = layout.metrics if key != "code_sha256" else layout.eval_info
            odd = [f"`{r}` seed {s} ({label} = {form.format(v)}; {where(r, s)})"
                   for (r, s), v in values.items() if v != usual]
            raise DataError(f"report: the runs were not evaluated alike: {label} = "
                            f"{form.format(usual)} for {int((values == usual).sum())} runs, but "
                            f"{'; '.join(odd)}; rerun their evaluate stages with one evaluate "
                            "section and one checkout of the code (`dvc repro`)")
    for (r, s), run in runs.items():
        if len(run.per_image) != int(run.metrics["n_test"]):
            raise DataError(f"report: {layout.per_image(r, s)} has {len(run.per_image)} rows but "
                            f"{layout.metrics(r, s)} says {int(run.metrics['n_test'])} test images "
                            f"(truncated, or from another evaluation); {_fix(layout.per_image(r, s), f'evaluate@{r}-{s}')}")


def git_revision(root: Path) -> str:
    """Short HEAD, flagged when files other than the reports and the dvc.lock files (which the
    running `dvc repro` rewrites) differ from it; "unknown" outside git."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=20, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown"
    status = git("--no-optional-locks", "status", "--porcelain", "--", ".", ":(exclude)reports",
                 ":(exclude)dvc.lock", ":(exclude,glob)**/dvc.lock")
    return head + (" + uncommitted changes" if status else "") if status is not None else head


def dvc_version() -> str:
    try:
        return importlib.metadata.version("dvc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
