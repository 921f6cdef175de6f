"""Stage `report`: the study's product, rendered into reports/ from what train and evaluate wrote.

For every rung of the ladder and every seed it reads the metrics, per-image estimates, K-curve,
per-dimension KL, images and training history, validates them, and writes

- results.csv: one row per rung, ordered by decoder power (the causal receptive field computed
  from the architecture, then the family), each metric's mean and std over seeds (std empty for
  one seed), the rung's role (a point of the power trend, or a marked comparison / mitigated /
  no-z rung) and its verdict against report.collapse_threshold_nats (given only when the seeds'
  mean is more than two std from it);
- claims.json: the findings as named claims with their numbers (`stages.claims`);
- figures/: PNG + SVG of every figure in `stages.figures`;
- report.md and a self-contained index.html (`stages.page`): the claim tested, the setup, the
  results table, the figures, the published numbers beside ours, and the claims rendered,
  never hand-written conclusions that could go stale.

Every input is read and checked before anything is written; every output is written
atomically (`stages.fsutil`).
"""

from __future__ import annotations

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

from stages import claims, figures, page, zadds
from stages.errors import DataError
from stages.fsutil import ensure_writable_dir, write_csv, write_json, write_text
from stages.layout import Layout
from stages.live import read_history
from stages.model import build_decoder
from stages.params import Rung, StudyParams
from stages.train import converged

METRICS = ("nll_iw_nats", "nll_iw_stderr_nats", "nll_elbo_nats", "kl_nats", "rec_nats",
           "bound_gap_nats", "mi_nats", "active_units", "probe_accuracy", "seconds")
METRIC_KEYS = (*METRICS, "iw_k", "n_test", "mi_cap_nats")
INFO_KEYS = ("family", "uses_z", "n_params", "best_epoch")
IMAGE_KEYS = ("x", "recon", "recon_probs", "samples", "sample_probs")
K_CURVE_COLUMNS = ("k", "nll_iw_nats", "nll_iw_stderr_nats")
LATENT_COLUMNS = ("dim", "kl_nats", "posterior_mean_variance", "active")
HISTORY_COLUMNS = ("epoch", "images_seen", "valid_elbo_nats", "valid_kl_nats", "valid_rec_nats")
PER_IMAGE_COLUMNS = ("test_index", "log_px_iw_nats", "elbo_nats", "log_px_given_z_nats", "log_px_independent_nats")
PUBLISHED_COLUMNS = ("paper", "year", "binarization", "model", "ladder_rung", "nll_nats",
                     "nll_is_bound", "kl_nats", "importance_samples", "where")
PAPER_TRAIN, PAPER_K, PAPER_TEST, PAPER_EPOCHS = 50000, 5000, 10000, 100
BASELINE_COLUMNS = ("rung", "role", "uses_z", "n_seeds", "kl_nats", "kl_nats_std", "nll_iw_nats",
                    "nll_iw_nats_std", "iw_k", "n_test", "epochs_trained")


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
    baseline: pd.DataFrame | None = None  # another study's results.csv, to compare KL with
    baseline_path: Path | None = None


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


def _run_files(layout: Layout, r: str, s: int) -> dict[str, tuple[Path, str, Any, tuple[str, ...]]]:
    """One (rung, seed)'s inputs by `Run` field: (path, writing stage, reader, required keys)."""
    evaluated, trained = f"evaluate@{r}-{s}", f"train@{r}-{s}"
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
    files = [(layout.binarized_summary, "binarize"), (layout.reference, None)]
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
            if any(len(sh) != 3 or sh[1:] != (28, 28) or sh[0] != shapes["x"][0] for sh in shapes.values()):
                raise DataError(f"report: {layout.eval_images(r, s)} holds arrays of shapes {shapes}, "
                                f"expected (n,28,28) each; {_fix(layout.eval_images(r, s), stage)}")
            runs[(r, s)] = run
    first = runs[(next(iter(params.decoders)), params.seeds[0])]
    for (r, s), run in runs.items():  # evaluate's settings are shared: outputs must agree
        stage = f"evaluate@{r}-{s}"
        if not np.array_equal(run.images["x"], first.images["x"]):
            raise DataError(f"report: {layout.eval_images(r, s)} shows other test digits than the "
                            f"other rungs (stale output?); {_fix(layout.eval_images(r, s), stage)}")
        if len(run.latent) != len(first.latent):
            raise DataError(f"report: {layout.latent_dims(r, s)} has {len(run.latent)} latent "
                            f"dimensions, other rungs {len(first.latent)}; "
                            f"{_fix(layout.latent_dims(r, s), stage)}")
    summary = _read(layout.binarized_summary, "binarize", _json,
                    ("method", "train", "valid", "test"))
    published = _read(layout.reference, None, pd.read_csv, PUBLISHED_COLUMNS)
    try:  # optional: where download found the files
        sources = _json(layout.raw / "sources.json")
    except (OSError, ValueError, TypeError):
        sources = None
    return ReportData(params, runs, summary, published, sources)


def role(rung: Rung, uses_z: bool) -> str:
    """What a rung is on the ladder: a point of the power trend, or a marked side rung."""
    if not uses_z:
        return claims.NO_Z
    if rung.objective.kl_warmup_steps or rung.objective.free_bits:
        return claims.MITIGATED
    if getattr(rung.decoder, "z_pathway", "spatial") == "bias":
        return claims.COMPARISON
    return claims.TREND


def power_of(rung: Rung, latent_dim: int) -> tuple[int, int, float]:
    """The decoder-power measure, from the architecture alone: (causal receptive field in
    pixels on an unbounded image, the family's rank: linear < mlp < conv < pixelcnn <
    gated_pixelcnn, and the share of the 28x28 raster past seen, 0 for a factorized decoder).

    The count orders the rungs: it grows with every layer, where the share saturates at 1 once
    every pixel sees its whole past."""
    decoder = build_decoder(rung.family, rung.decoder, latent_dim)
    share = float(getattr(decoder, "raster_share", 0.0))
    return decoder.receptive_field, type(decoder).power_rank, share


def summarize(data: ReportData, threshold: float) -> pd.DataFrame:
    """One row per rung, ordered by decoder power (then name): mean and std (ddof 1; NaN for
    one seed) over seeds of every metric, the rung's role, power and verdict."""
    rows, trained = [], training_runs(data)
    for r, rung in data.params.decoders.items():
        runs = [data.runs[(r, s)] for s in data.params.seeds]
        m = pd.DataFrame([run.metrics for run in runs])
        uses_z = bool(runs[0].info["uses_z"])
        rf, family_rank, share = power_of(rung, data.params.encoder.latent_dim)
        row: dict[str, Any] = {"rung": r, "family": rung.family, "role": role(rung, uses_z),
                               "receptive_field": rf, "raster_share": share, "family_rank": family_rank,
                               "uses_z": uses_z,
                               "n_seeds": len(runs), "seeds": ";".join(str(s) for s in data.params.seeds)}
        for key in METRICS:
            row[key] = float(m[key].mean())
            row[f"{key}_std"] = float(m[key].std(ddof=1)) if len(runs) > 1 else math.nan
        row["verdict"] = claims.verdict(row["kl_nats"], row["kl_nats_std"], len(runs), threshold, uses_z)
        row["mi_cap_nats"] = float(m["mi_cap_nats"].min())
        row["iw_k"], row["n_test"] = int(m["iw_k"].min()), int(m["n_test"].min())
        row["latent_dim"] = len(runs[0].latent)
        row["kl_top_dim_nats"] = float(np.mean([run.latent["kl_nats"].max() for run in runs]))
        row["n_params"] = int(runs[0].info["n_params"])
        row["best_epoch"] = float(np.mean([run.info["best_epoch"] for run in runs]))
        row["epochs_trained"] = float(np.mean([run.history["epoch"].max() for run in runs]))
        row["n_converged"] = int(trained.loc[trained["rung"] == r, "converged"].sum())
        row["config"] = json.dumps(rung.plain(), sort_keys=True)
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["receptive_field", "family_rank", "rung"], kind="stable")
    key = list(zip(table["receptive_field"], table["family_rank"]))
    table.insert(3, "power", [sorted(set(key)).index(k) for k in key])  # dense rank of the measure
    return table.reset_index(drop=True)


def training_runs(data: ReportData) -> pd.DataFrame:
    """rung, seed, epochs_trained, best_epoch, converged: did early stopping end the run, or
    the epoch cap (or, without a patience, the fixed schedule)?"""
    rows = []
    for (r, s), run in data.runs.items():
        trained, best = int(run.history["epoch"].max()), int(run.info["best_epoch"])
        rows.append({"rung": r, "seed": s, "epochs_trained": trained, "best_epoch": best,
                     "converged": converged(data.params.train, trained, best)})
    return pd.DataFrame(rows)


def read_baseline(path: Path) -> pd.DataFrame:
    """Another study's results.csv (`--compare-with`), checked before anything is written."""
    table = _read(path, None, pd.read_csv, ())
    missing = [c for c in BASELINE_COLUMNS if c not in table.columns]
    if missing or table.empty:
        raise DataError(f"report: {path} is not a results table of this study's report (it lacks "
                        f"{', '.join(missing) or 'rows'}); render that study's report first "
                        "(`dvc repro` for the default study)")
    return table


def baseline_label(path: Path, baseline: pd.DataFrame) -> str:
    epochs = sorted({round(e) for e in baseline["epochs_trained"]})
    seeds = int(baseline["n_seeds"].max())
    span = f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}"
    return (f"the study in `{path}` ({span} epochs, K = {int(baseline['iw_k'].min()):,} on "
            f"{int(baseline['n_test'].min()):,} test images, {seeds} seed{'s' if seeds != 1 else ''})")


def history_table(data: ReportData) -> pd.DataFrame:
    return pd.concat([run.history.assign(rung=r, seed=s) for (r, s), run in data.runs.items()],
                     ignore_index=True)


def k_curve_table(data: ReportData) -> pd.DataFrame:
    """rung, k, nll_iw_nats, nll_iw_stderr_nats: means over seeds."""
    return (pd.concat([run.k_curve.assign(rung=r) for (r, _), run in data.runs.items()])
            .groupby(["rung", "k"], sort=False, as_index=False).mean())


def study_claims(data: ReportData, results: pd.DataFrame, history: pd.DataFrame,
                 k_curves: pd.DataFrame, threshold: float, z_adds: pd.DataFrame) -> list[claims.Claim]:
    per_seed = pd.DataFrame([{"rung": r, "seed": s, "kl_nats": run.metrics["kl_nats"]}
                             for (r, s), run in data.runs.items()])
    t = data.params.train
    versus = (claims.versus_baseline(results, data.baseline, threshold,
                                     baseline_label(data.baseline_path, data.baseline))
              if data.baseline is not None else None)
    z_claims = (zadds.collapse_optimum(z_adds, results, threshold), zadds.what_z_adds(z_adds, results))
    return claims.all_claims(results, per_seed, history, k_curves, threshold,
                             claims.convergence(training_runs(data), results, t.patience,
                                                t.min_delta_nats, t.epochs), versus, z_claims)


def paper_scale(data: ReportData, results: pd.DataFrame) -> tuple[bool, str]:
    """Comparable with published numbers: the full 50k training split, the full training
    schedule (>= 100 epochs, best-validation epoch kept), and K >= 5000 on all 10,000 test images."""
    n_train = int(data.summary["train"]["n_images"])
    trained = [int(run.history["epoch"].max()) for run in data.runs.values()]  # (runs,)
    epochs, longest = min(trained), max(trained)  # early stopping ends runs at different epochs
    k, n_test = int(results["iw_k"].min()), int(results["n_test"].min())
    ok = n_train == PAPER_TRAIN and epochs >= PAPER_EPOCHS and k >= PAPER_K and n_test == PAPER_TEST
    span = f"{epochs}-{longest} epochs" if longest > epochs else f"{epochs} epoch{'s' if epochs != 1 else ''}"
    return ok, f"{n_train:,} training images for {span}, K = {k:,} on {n_test:,} test images"


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


def build_figures(data: ReportData, results: pd.DataFrame, history: pd.DataFrame,
                  k_curves: pd.DataFrame, threshold: float, z_adds: pd.DataFrame) -> dict[str, Any]:
    """Every figure, in memory, keyed by file name; rungs in order of decoder power."""
    names, seed0 = list(results["rung"]), data.params.seeds[0]
    kl_sorted = np.array([np.mean([np.sort(data.runs[(r, s)].latent["kl_nats"].to_numpy())[::-1]
                                   for s in data.params.seeds], axis=0) for r in names])  # (R,D)
    images = {r: data.runs[(r, seed0)].images for r in names}
    side = set(results.loc[results["role"] != claims.TREND, "rung"])
    return {
        "headline": figures.headline(results, threshold),
        **({"kl_vs_z_adds": figures.kl_vs_z_adds(results, threshold)} if not z_adds.empty else {}),
        "kl_training": figures.kl_training(history, names, side, threshold),
        "rate_distortion": figures.rate_distortion(results),
        "k_convergence": figures.k_convergence(k_curves, names, side),
        "reconstructions": figures.image_grid(
            {r: im["recon_probs"] for r, im in images.items()},
            "Reconstructions p(x | z = E_q[z|x]) of the same test digits", images[names[0]]["x"]),
        "samples": figures.image_grid({r: im["sample_probs"] for r, im in images.items()},
                                      "Prior samples p(x | z), z ~ N(0, I)"),
        "latent_kl": figures.latent_kl(kl_sorted, names, list(results["active_units"])),
    }


def run(params: StudyParams, layout: Layout, compare_with: Path | None = None) -> pd.DataFrame:
    """The stage: collect and check every input, then write reports/ (each file atomically).
    `compare_with`: another study's results.csv, whose KL this report compares rung by rung."""
    threshold = params.report.collapse_threshold_nats
    baseline = read_baseline(compare_with) if compare_with is not None else None
    data = collect(params, layout)
    data.baseline, data.baseline_path = baseline, compare_with
    out = ensure_writable_dir(layout.reports)
    figure_dir = ensure_writable_dir(out / "figures")
    results = summarize(data, threshold)
    z_adds = zadds.z_adds_table(data, results)  # each rung with z against its decoder alone
    if not z_adds.empty:
        results = results.merge(z_adds, on="rung", how="left")
    history, k_curves = history_table(data), k_curve_table(data)  # shared by claims and figures
    found = study_claims(data, results, history, k_curves, threshold, z_adds)
    figs = build_figures(data, results, history, k_curves, threshold, z_adds)
    scale = paper_scale(data, results)
    provenance = {"git": git_revision(layout.root), "dvc": dvc_version()}
    for name, fig in figs.items():
        figures.save(fig, figure_dir, name)
    write_csv(out / "results.csv", results)
    write_json(out / "claims.json", {c.name: c.plain() for c in found})
    doc = page.build(data, results, found, scale, provenance, list(figs), layout)
    write_text(out / "report.md", page.markdown(doc))
    write_text(out / "index.html", page.html(doc, figure_dir))
    print("\n".join(c.text for c in found))
    print(f"report: wrote {out}/results.csv, claims.json, report.md, index.html and {len(figs)} figures")
    return results
