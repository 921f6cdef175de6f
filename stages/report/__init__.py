"""Stage `report`: the study's product, rendered into reports/ from what train and evaluate wrote.

Data flows one way, a module each: `collect` (read and check every input) -> `tables` (the
results table in order of power) and `zadds` (each rung against its decoder alone) -> `claims`
(the findings as named claims computed from the tables) -> `figures` -> `page` (Markdown and
HTML); a grid study (power x objective) adds `grid` (its table, claims and heatmaps) after zadds. Imports follow it, except that `tables` and `zadds` use the vocabulary of `claims`
(roles, verdicts, `Claim`), which imports nothing of this package: there is no import cycle, and
this package's `run` is the only place where all of them meet.

For every rung of the ladder and every seed it reads the metrics, per-image estimates, K-curve,
per-dimension KL, images and training history, validates them, and writes

- results.csv: one row per rung, ordered by decoder power (the causal receptive field computed
  from the architecture, then the family), each metric's mean and std over seeds (std empty for
  one seed), the rung's role (a point of the power trend, or a marked comparison / mitigated /
  no-z rung) and its verdict against report.collapse_threshold_nats (given only when the seeds'
  mean is more than two std from it);
- claims.json: the findings as named claims with their numbers (`stages.report.claims`);
- figures/: PNG + SVG of every figure in `stages.report.figures`;
- report.md and a self-contained index.html (`stages.report.page`): the claim tested, the setup, the
  results table, the figures, the published numbers beside ours, and the claims rendered,
  never hand-written conclusions that could go stale.

Every input is read and checked before anything is written; every output is written
atomically (`stages.fsutil`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.fsutil import ensure_writable_dir, write_csv, write_json, write_text
from stages.gather import gathered
from stages.layout import Layout
from stages.options import PARAMS, ROOT, STUDY
from stages.params import StudyParams
from stages.report import abstract, claims, figures, grid, page, zadds
from stages.report.collect import ReportData, Run, collect, dvc_version, git_revision
from stages.report.tables import (history_table, k_curve_table, paper_scale, power_of, summarize,
                                  training_runs)

__all__ = ["ReportData", "Run", "collect", "history_table", "k_curve_table", "paper_scale", "power_of",
           "run", "summarize", "training_runs"]


def study_claims(data: ReportData, results: pd.DataFrame, history: pd.DataFrame,
                 k_curves: pd.DataFrame, threshold: float, z_adds: pd.DataFrame,
                 cells: pd.DataFrame) -> list[claims.Claim]:
    per_seed = pd.DataFrame([{"rung": r, "seed": s, "kl_nats": run.metrics["kl_nats"]}
                             for (r, s), run in data.runs.items()])
    t = data.params.train
    z_claims = (zadds.collapse_optimum(z_adds, results), zadds.what_z_adds(z_adds, results))
    found = claims.all_claims(results, per_seed, history, k_curves, threshold,
                              claims.convergence(training_runs(data), results, t.patience,
                                                 t.min_delta_nats, t.epochs), z_claims)
    strength = zadds.strength_claim(z_adds, results) if not z_adds.empty else None
    if strength is not None:  # beside what z adds
        at = next((i + 1 for i, c in enumerate(found) if c.name == "what_z_adds"), len(found))
        found = found[:at] + [strength] + found[at:]
    if not cells.empty:  # a grid study: its objectives' claims right after the headline
        extra = [c for c in (grid.objectives_claim(cells), grid.likelihood_claim(cells), grid.aggressive_claim(cells),
                               grid.top_against_alone(cells)) if c is not None]
        found = found[:1] + extra + found[1:]
    return found


def build_figures(data: ReportData, results: pd.DataFrame, history: pd.DataFrame,
                  k_curves: pd.DataFrame, threshold: float, z_adds: pd.DataFrame,
                  cells: pd.DataFrame) -> dict[str, Any]:
    """Every figure, in memory, keyed by file name; rungs in order of decoder power."""
    names, seed0 = list(results["rung"]), data.params.seeds[0]
    kl_sorted = np.array([np.mean([np.sort(data.runs[(r, s)].latent["kl_nats"].to_numpy())[::-1]
                                   for s in data.params.seeds], axis=0) for r in names])  # (R,D)
    images = {r: data.runs[(r, seed0)].images for r in names}
    side = set(results.loc[results["role"] != claims.TREND, "rung"])
    return {
        "headline": figures.headline(results, threshold),
        **({"strength": figures.strength(results, threshold),
            "kl_vs_z_adds": figures.kl_vs_z_adds(results, threshold)} if not z_adds.empty else {}),
        **({"grid_heatmaps": grid.heatmaps(cells)} if not cells.empty else {}),
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


def run(params: StudyParams, layout: Layout) -> pd.DataFrame:
    """The stage: collect and check every input, then write reports/ (each file atomically)."""
    threshold = params.report.collapse_threshold_nats
    data = collect(params, layout)
    out = ensure_writable_dir(layout.reports)
    figure_dir = ensure_writable_dir(out / "figures")
    results = summarize(data, threshold)
    z_adds = zadds.z_adds_table(data, results)  # each rung with z against its decoder alone
    if not z_adds.empty:
        results = results.merge(z_adds, on="rung", how="left")
    history, k_curves = history_table(data), k_curve_table(data)  # shared by claims and figures
    cells = grid.grid_table(data, results) if data.params.cells else pd.DataFrame()
    found = study_claims(data, results, history, k_curves, threshold, z_adds, cells)
    figs = build_figures(data, results, history, k_curves, threshold, z_adds, cells)
    scale = paper_scale(data, results)
    provenance = {"git": git_revision(layout.root), "dvc": dvc_version()}
    for name, fig in figs.items():
        figures.save(fig, figure_dir, name)
    answer, scope = abstract.abstract(found, results, threshold), abstract.scope_line(data, results)
    write_csv(out / "results.csv", results)
    write_json(out / "claims.json", {"abstract": {"text": " ".join(answer), "sentences": answer,
                                                  "scope": scope},
                                     **{c.name: c.plain() for c in found}})
    doc = page.build(data, results, found, scale, provenance, list(figs), layout, cells, answer, scope)
    text = page.markdown(doc)
    write_text(out / "report.md", text)
    write_text(out / "index.html", page.html(text, figure_dir, doc.title))
    print("\n".join([*answer, scope]))
    print(f"report: wrote {out}/results.csv, claims.json, report.md, index.html and {len(figs)} figures")
    return results


def command(params: Path = PARAMS, root: Path = ROOT, study: str = STUDY) -> None:
    """Render reports/: the results table, the figures, report.md and index.html."""
    from stages.params import load_params

    run(load_params(params), gathered(Layout(root, study)))  # the inputs git tracks (stages.gather)
