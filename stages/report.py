"""Stage `report`: the study's product, rendered into reports/ from what train and evaluate wrote.

For every rung of the ladder (params order, weakest first) and every seed it reads the
metrics, K-curve, per-dimension KL, images and training history, validates them, and writes

- results.csv: one row per rung, each metric's mean and std over seeds (std empty for one
  seed), and `collapsed` = mean KL[q(z|x)||p(z)] < report.collapse_threshold_nats;
- figures/: PNG + SVG of every figure in `stages.figures`;
- report.md and a self-contained index.html (`stages.page`): the claim, the setup, the results
  table, the figures, the published numbers beside ours, and sentences generated from the
  numbers (`findings`), never hand-written conclusions that could go stale.

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

from stages import figures, page
from stages.errors import DataError
from stages.fsutil import ensure_writable_dir, write_csv, write_text
from stages.layout import Layout
from stages.params import StudyParams

METRICS = ("nll_iw_nats", "nll_iw_stderr_nats", "nll_elbo_nats", "kl_nats", "rec_nats",
           "bound_gap_nats", "mi_nats", "active_units", "probe_accuracy", "seconds")
METRIC_KEYS = (*METRICS, "iw_k", "n_test")
INFO_KEYS = ("family", "uses_z", "n_params", "best_epoch")
IMAGE_KEYS = ("x", "recon", "recon_probs", "samples", "sample_probs")
K_CURVE_COLUMNS = ("k", "nll_iw_nats", "nll_iw_stderr_nats")
LATENT_COLUMNS = ("dim", "kl_nats", "posterior_mean_variance", "active")
HISTORY_COLUMNS = ("epoch", "valid_elbo_nats", "valid_kl_nats", "valid_rec_nats")
PUBLISHED_COLUMNS = ("paper", "year", "binarization", "model", "ladder_rung", "nll_nats",
                     "nll_is_bound", "kl_nats", "importance_samples", "where")
CHANCE = 0.1  # probe accuracy of a z that says nothing about the digit (10 classes)
PAPER_TRAIN, PAPER_K, PAPER_TEST = 50000, 5000, 10000


@dataclass
class Run:
    """Everything evaluate and train wrote for one (rung, seed)."""

    metrics: dict[str, Any]
    k_curve: pd.DataFrame  # k, nll_iw_nats, nll_iw_stderr_nats
    latent: pd.DataFrame  # dim, kl_nats, posterior_mean_variance, active
    images: dict[str, np.ndarray]  # x, recon, recon_probs, samples, sample_probs: (n,28,28)
    info: dict[str, Any]
    history: pd.DataFrame  # epoch, ..., valid_kl_nats, ...


@dataclass
class ReportData:
    params: StudyParams
    runs: dict[tuple[str, int], Run]  # (rung, seed) in ladder x seeds order
    summary: dict[str, Any]  # binarize's summary.json
    published: pd.DataFrame
    sources: dict[str, Any] | None  # download's sources.json, if present


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
        "history": (layout.history(r, s), trained, pd.read_csv, HISTORY_COLUMNS),
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
    missing = [(p, stage) for p, stage in _inputs(params, layout) if not p.is_file()]
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


def summarize(data: ReportData, threshold: float) -> pd.DataFrame:
    """One row per rung in ladder order: mean and std (ddof 1; NaN for one seed) over seeds."""
    rows = []
    for r, rung in data.params.decoders.items():
        runs = [data.runs[(r, s)] for s in data.params.seeds]
        m = pd.DataFrame([run.metrics for run in runs])
        row: dict[str, Any] = {"rung": r, "family": rung.family,
                               "uses_z": bool(runs[0].info["uses_z"]), "n_seeds": len(runs),
                               "seeds": ";".join(str(s) for s in data.params.seeds)}
        for key in METRICS:
            row[key] = float(m[key].mean())
            row[f"{key}_std"] = float(m[key].std(ddof=1)) if len(runs) > 1 else math.nan
        row["collapsed"] = row["kl_nats"] < threshold
        row["iw_k"], row["n_test"] = int(m["iw_k"].min()), int(m["n_test"].min())
        row["latent_dim"] = len(runs[0].latent)
        row["kl_top_dim_nats"] = float(np.mean([run.latent["kl_nats"].max() for run in runs]))
        row["n_params"] = int(runs[0].info["n_params"])
        row["best_epoch"] = float(np.mean([run.info["best_epoch"] for run in runs]))
        row["config"] = json.dumps(rung.plain(), sort_keys=True)
        rows.append(row)
    return pd.DataFrame(rows)


def _names(frame: pd.DataFrame) -> str:
    return ", ".join(f"`{r}`" for r in frame["rung"])


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _span(values: pd.Series, fmt: str) -> str:
    lo, hi = format(values.min(), fmt), format(values.max(), fmt)
    return lo if lo == hi else f"{lo} to {hi}"


def _se(row: pd.Series) -> float:
    """Uncertainty of a rung's mean NLL_IW: test-image s.e., plus seed spread when several."""
    seeds = row["nll_iw_nats_std"] / math.sqrt(row["n_seeds"]) if row["n_seeds"] > 1 else 0.0
    return math.hypot(row["nll_iw_stderr_nats"], seeds)


def findings(results: pd.DataFrame, threshold: float) -> list[str]:
    """Sentences stating what the numbers show, each computed from `results` (summarize's)."""
    cond, base = results[results["uses_z"]], results[~results["uses_z"]]
    gone, kept = cond[cond["collapsed"]], cond[~cond["collapsed"]]
    out = []
    n_seeds = int(results["n_seeds"].max())
    if n_seeds > 1:
        out.append(f"Numbers below are means over {n_seeds} seeds.")
    if len(gone):
        listed = ", ".join(f"`{r.rung}` ({r.kl_nats:.2f} nats)" for r in gone.itertuples())
        out.append(f"By the threshold KL < {threshold:g} nats, {len(gone)} of the {len(cond)} rungs "
                   f"whose decoder sees z collapsed: {listed}.")
    elif len(cond):
        low = cond.loc[cond["kl_nats"].idxmin()]
        out.append(f"By the threshold KL < {threshold:g} nats, none of the {len(cond)} rungs whose "
                   f"decoder sees z collapsed (lowest KL: `{low.rung}`, {low.kl_nats:.2f} nats).")
    if len(kept):
        out.append(f"The {_plural(len(kept), 'rung')} that did not collapse ({_names(kept)}) keep "
                   f"{_span(kept['kl_nats'], '.1f')} nats of KL in z.")
    if len(cond) > 1:
        peak, last = cond.loc[cond["kl_nats"].idxmax()], cond.iloc[-1]
        sentence = (f"KL peaks at {peak.kl_nats:.2f} nats (`{peak.rung}`) and is {last.kl_nats:.2f} "
                    f"nats on the strongest rung whose decoder sees z, `{last.rung}`")
        if len(gone):
            first = gone.iloc[0]
            after = cond.loc[first.name:]
            revived = after[~after["collapsed"]]
            sentence += (f"; every rung from `{first.rung}` up the ladder collapsed" if revived.empty
                         else f"; collapse is not monotone along the ladder: `{first.rung}` collapsed "
                              f"but the stronger {_names(revived)} did not")
        out.append(sentence + ".")
    if len(base) and len(cond):
        b = base.iloc[-1]
        same = cond[cond["family"] == b["family"]]
        d = (same if len(same) else cond).iloc[-1]
        diff, se = d["nll_iw_nats"] - b["nll_iw_nats"], math.hypot(_se(d), _se(b))
        verdict = (f"they agree within one standard error ({abs(diff):.2f} <= {se:.2f} nats)"
                   if abs(diff) <= se else
                   f"the VAE is {abs(diff):.2f} nats {'worse' if diff > 0 else 'better'}, more than "
                   f"one standard error ({se:.2f} nats)")
        out.append(f"The deepest conditional rung `{d.rung}` reaches NLL_IW {d.nll_iw_nats:.2f} nats "
                   f"and the decoder-alone baseline `{b.rung}` {b.nll_iw_nats:.2f} nats: {verdict}; "
                   f"the standard error combines both estimates' test-image standard errors"
                   f"{' and seed spreads' if n_seeds > 1 else ''} as if independent.")
    elif len(cond):
        out.append("No decoder-alone baseline (a rung whose decoder ignores z) is on the ladder, "
                   "so the collapsed rungs' likelihood cannot be compared with one.")
    if len(cond) > 1:
        g0, g1 = cond.iloc[0], cond.iloc[-1]
        trend = "shrinks" if g1.bound_gap_nats < g0.bound_gap_nats else "does not shrink"
        sentence = (f"The bound gap -ELBO - NLL_IW {trend} along the ladder, from "
                    f"{g0.bound_gap_nats:.2f} nats (`{g0.rung}`) to {g1.bound_gap_nats:.2f} nats "
                    f"(`{g1.rung}`)")
        if len(gone) and len(kept):
            sentence += (f"; it averages {gone['bound_gap_nats'].mean():.2f} nats on collapsed rungs "
                         f"and {kept['bound_gap_nats'].mean():.2f} nats on the others")
        out.append(sentence + ".")
    if len(gone):
        near = gone["probe_accuracy"].max() <= CHANCE + 0.1
        sentence = (f"A linear probe reads the digit from the posterior means with "
                    f"{_span(gone['probe_accuracy'], '.1%')} accuracy on the collapsed rungs, "
                    + ("near chance (10%; within 10 points)" if near else
                       "more than 10 points above chance (10%): some label information survives"))
        if len(kept):
            sentence += f", against {_span(kept['probe_accuracy'], '.1%')} on the others"
        out.append(sentence + ".")
    if len(cond):
        dim = int(results["latent_dim"].max())
        parts = [f"{r.active_units:.3g} of {dim} on `{r.rung}`" for r in cond.itertuples()]
        out.append(f"Active units (Burda et al. 2016): {', '.join(parts)}.")
    return out


def paper_scale(data: ReportData, results: pd.DataFrame) -> tuple[bool, str]:
    """Paper scale: the full 50k training split and K >= 5000 on all 10,000 test images."""
    n_train = int(data.summary["train"]["n_images"])
    k, n_test = int(results["iw_k"].min()), int(results["n_test"].min())
    ok = n_train == PAPER_TRAIN and k >= PAPER_K and n_test == PAPER_TEST
    return ok, f"{n_train:,} training images, K = {k:,} on {n_test:,} test images"


def git_revision(root: Path) -> str:
    """Short HEAD, flagged when files other than the report's own outputs and dvc.lock (which
    the running `dvc repro` rewrites) differ from it; "unknown" outside git."""
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
                 ":(exclude)dvc.lock")
    return head + (" + uncommitted changes" if status else "") if status is not None else head


def dvc_version() -> str:
    try:
        return importlib.metadata.version("dvc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_figures(data: ReportData, results: pd.DataFrame, threshold: float) -> dict[str, Any]:
    """Every figure, in memory, keyed by file name."""
    names, seed0 = list(data.params.decoders), data.params.seeds[0]
    history = pd.concat([run.history.assign(rung=r, seed=s) for (r, s), run in data.runs.items()])
    curves = (pd.concat([run.k_curve.assign(rung=r) for (r, _), run in data.runs.items()])
              .groupby(["rung", "k"], sort=False, as_index=False).mean())
    kl_sorted = np.array([np.mean([np.sort(data.runs[(r, s)].latent["kl_nats"].to_numpy())[::-1]
                                   for s in data.params.seeds], axis=0) for r in names])  # (R,D)
    images = {r: data.runs[(r, seed0)].images for r in names}
    baseline = set(results.loc[~results["uses_z"], "rung"])
    return {
        "headline": figures.headline(results, threshold),
        "kl_training": figures.kl_training(history, names, baseline, threshold),
        "rate_distortion": figures.rate_distortion(results),
        "k_convergence": figures.k_convergence(curves, names, baseline),
        "reconstructions": figures.image_grid(
            {r: im["recon_probs"] for r, im in images.items()},
            "Reconstructions p(x | z = E_q[z|x]) of the same test digits", images[names[0]]["x"]),
        "samples": figures.image_grid({r: im["sample_probs"] for r, im in images.items()},
                                      "Prior samples p(x | z), z ~ N(0, I)"),
        "latent_kl": figures.latent_kl(kl_sorted, names, list(results["active_units"])),
    }


def run(params: StudyParams, layout: Layout) -> pd.DataFrame:
    """The stage: collect and check every input, then write reports/ (each file atomically)."""
    threshold = params.report.collapse_threshold_nats
    data = collect(params, layout)
    out = ensure_writable_dir(layout.reports)
    figure_dir = ensure_writable_dir(out / "figures")
    results = summarize(data, threshold)
    sentences = findings(results, threshold)
    figs = build_figures(data, results, threshold)
    scale = paper_scale(data, results)
    provenance = {"git": git_revision(layout.root), "dvc": dvc_version()}
    for name, fig in figs.items():
        figures.save(fig, figure_dir, name)
    write_csv(out / "results.csv", results)
    doc = page.build(data, results, sentences, scale, provenance, list(figs))
    write_text(out / "report.md", page.markdown(doc))
    write_text(out / "index.html", page.html(doc, figure_dir))
    print("\n".join(sentences))
    print(f"report: wrote {out}/results.csv, report.md, index.html and {len(figs)} figures")
    return results
