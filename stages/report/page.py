"""The report's page: one `Page` built from the collected data, rendered as Markdown once.

- `markdown(page)`: report.md, figures referenced by relative path (figures/<name>.png);
- `html(markdown_text, figure_dir)`: index.html, that same Markdown rendered by markdown-it-py
  (CommonMark with tables), self-contained: inline CSS, the PNGs embedded as base64 data URIs,
  so it opens offline and never drifts from report.md.

It opens with the answer (`stages.report.abstract`) and its scope, then the top of the power
axis in the form of He et al. 2019's Table 1, then every finding.
"""

from __future__ import annotations

import base64
import html as html_lib
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from markdown_it import MarkdownIt

from stages.layout import Layout
from stages.report import claims, stats
from stages.report.collect import ReportData
from stages.report.tables import changed_options
from stages.schema import to_plain

NUMBER = re.compile(r"^[-+\d.,±% ]*$")  # a table cell holding a number
TITLE = "Posterior collapse in VAEs on binarized MNIST"
STUDY_NAMES = {"long": "early-stopped (profiles/long)"}  # named for what it is, not how long it runs
QUESTION = [
    ("A VAE trained by maximizing the ELBO can learn to ignore its latent variable z "
     "(KL[q(z|x) || p(z)] -> 0, posterior collapse) when its decoder can model the data alone. "
     "How z reaches the decoder decides whether it can be used at all: a PixelCNN that gets z as "
     "a per-channel bias (the same at every pixel) cannot be told where a stroke is."),
    ("The claim tested here: with one spatial z pathway into every autoregressive rung "
     "(z -> transposed convolutions -> a 1x1 convolution into every masked layer, as in "
     "PixelVAE), the information kept in z falls as the power of the decoder's autoregressive "
     "part grows. Power is measured from the architecture, as the causal receptive field (how "
     "many earlier pixels a pixel's distribution sees; 0 for factorized decoders). Every number "
     "is a mean over seeds with its spread, the trend is a statistic along the power axis, a "
     "per-rung verdict is given only where the seeds put it clear of the threshold, and KL is "
     "shown against training length, because it moves as training goes on."),
]
FIGURES = {  # name -> (title, caption); captions describe, the claims conclude
    "headline": (
        "KL and likelihood along the power axis",
        ("x: decoder power as the causal receptive field in pixels (symlog scale; rungs of equal "
         "field, a tie, are spread a little). Top: KL[q(z|x)||p(z)] on the test images, mean and "
         "95 % interval over seeds; the line joins only the trend rungs; grey squares beside them "
         "are side rungs (z as a bias, mitigated objectives), not points of the trend; dotted red "
         "line: the collapse threshold. Bottom: "
         "-log p(x) by importance sampling; open grey squares: each rung's decoder alone (its "
         "no-z twin, exact; for a factorized rung, independent pixels at the training means), "
         "the -log p(x) a collapsed VAE of that rung reaches; the twins are not points of their "
         "own.")),
    "strength": (
        "KL and what z adds against the decoder's own strength",
        ("One point per trend rung with a decoder alone: x, the NLL of that decoder alone (its "
         "no-z twin; independent pixels for a factorized rung), lower is a decoder that models the "
         "data better without z (axis inverted, log scale); left, the VAE's KL; right, what z adds "
         "(NLL alone minus the VAE's NLL_IW, paired). Error bars: 95 % intervals over seeds.")),
    "kl_vs_z_adds": (
        "KL against what z adds",
        ("One point per trend rung: x, the NLL of its decoder alone (the no-z twin of an "
         "autoregressive rung; independent pixels at the training means for a factorized one) "
         "minus the VAE's NLL_IW, paired per test image; y, the VAE's KL. Mean ± std over seeds. "
         "Open markers: the collapsed solution's ELBO is not below the VAE's (better or within "
         "noise); filled: the VAE's ELBO is better.")),
    "grid_heatmaps": (
        "The grid: decoder power x training objective",
        ("Rows: the objectives of the params' `objectives` section (the first, the plain ELBO, is "
         "the reference); columns: the rungs with z in order of power. Left: KL; middle: the "
         "mutual information I_q(x; z); right: the NLL_IW change against the reference cell of "
         "the same power, paired per test image (red: worse likelihood). Mean and ± std over "
         "seeds in each cell.")),
    "kl_training": (
        "KL and ELBO during training",
        ("Validation KL (left) and validation ELBO (right) against training images seen; lines "
         "are means over seeds, bands the min-max over seeds, up to the point every seed reached; "
         "thin lines go on with the seeds that trained longer (early stopping); side rungs "
         "dashed.")),
    "rate_distortion": (
        "Rate and distortion",
        ("Each rung's rate (KL) against its distortion (reconstruction term), mean ± std over "
         "seeds; along a grey line -ELBO = R + D is constant (Alemi et al. 2018).")),
    "k_convergence": (
        "Convergence in K",
        ("The importance-weighted estimate of -log p(x) against the number of samples K (means "
         "over seeds); K = 1 is the one-sample ELBO.")),
    "reconstructions": (
        "Reconstructions",
        ("Top row: test digits. Below: p(pixel = 1 | z = E_q[z|x]) per rung, in order of power "
         "(first seed).")),
    "samples": (
        "Prior samples",
        ("p(pixel = 1 | z) for z ~ N(0, I) per rung, in order of power (first seed); "
         "autoregressive rungs show the pixel-wise conditionals along the drawn sample.")),
    "latent_kl": (
        "KL per latent dimension",
        ("Each rung's latent dimensions sorted by their KL (log colour scale), mean over seeds; "
         "AU = active units (Burda et al. 2016).")),
}
CSS = """
body{font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;
background:#fafafa;margin:0}main{max-width:1000px;margin:0 auto;padding:24px 28px 64px;
background:#fff}h1{font-size:1.7em;margin:.3em 0 .2em}h2{font-size:1.25em;margin-top:1.8em;
border-bottom:1px solid #ddd;padding-bottom:.2em}code{font:.92em ui-monospace,Menlo,Consolas,
monospace;background:#f2f2f4;padding:0 .25em;border-radius:3px}table{border-collapse:collapse;
margin:.6em 0 0;font-size:.86em;width:100%}th,td{padding:.3em .55em;border-bottom:1px solid #e3e3e3;
text-align:right;white-space:nowrap;vertical-align:top}th{background:#f4f4f6;white-space:normal;
vertical-align:bottom}td:first-child,th:first-child,.text{text-align:left;white-space:normal}
tr:nth-child(even) td{background:#fbfbfd}.caption{color:#555;font-size:.88em;margin-top:.2em}
figure{margin:1.4em 0}figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{color:#444;font-size:.92em;margin-top:.4em}.findings li{margin:.3em 0}
.note{background:#fff8e5;border-left:4px solid #e0b000;padding:.5em .9em}
.scroll{overflow-x:auto}dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}
dt{font-weight:600}dd{margin:0}
"""


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Page:
    question: list[str]
    findings: list[str]
    results: Table
    figures: list[tuple[str, str, str]]  # name, title, caption
    comparison: Table
    comparison_note: list[str]
    setup: list[tuple[str, str]]
    ladder: Table
    title: str = TITLE
    z_adds: Table | None = None  # each rung beside its decoder alone
    grid: list[Table] | None = None  # a grid study: its cells, and its top rung beside published remedies
    sources: str = "data/metrics, data/eval, data/history"
    answer: list[str] = field(default_factory=list)
    scope: str = ""
    top: Table | None = None  # the top of the power axis, He et al. 2019's Table 1 form
    steps: Table | None = None  # each step up the power axis with its interval
    convergence: Table | None = None  # per rung under early stopping


pm = claims.pm
ROLE_LABEL = {claims.TREND: "trend", claims.COMPARISON: "comparison (z as bias)",
              claims.MITIGATED: "mitigated objective", claims.NO_Z: "no z (decoder alone)"}


def mi_cell(mean: float, std: float, cap: float) -> str:
    """The MI estimate; '>=' where it is within MI_BOUND_MARGIN of its cap log M."""
    bound = mean >= cap - claims.MI_BOUND_MARGIN
    return (">= " if bound else "") + pm(mean, std)


def results_table(results: pd.DataFrame) -> Table:
    """The results in order of decoder power: mean ± std over seeds (the mean alone for one seed)."""
    header = ["rung", "role", "receptive field (pixels)", "NLL_IW (nats)", "IW s.e. (nats)",
              "-ELBO (nats)", "KL (nats)", "MI (nats)", "active units", "probe accuracy",
              "bound gap (nats)", "best epoch / epochs trained", "verdict"]
    rows = []
    for r in results.itertuples():
        no_z = r.role == claims.NO_Z
        rows.append([f"`{r.rung}`", ROLE_LABEL[r.role], str(r.receptive_field),
                     pm(r.nll_iw_nats, r.nll_iw_nats_std), f"{r.nll_iw_stderr_nats:.2f}",
                     pm(r.nll_elbo_nats, r.nll_elbo_nats_std),
                     "n/a" if no_z else pm(r.kl_nats, r.kl_nats_std),
                     "n/a" if no_z else mi_cell(r.mi_nats, r.mi_nats_std, r.mi_cap_nats),
                     "n/a" if no_z else pm(r.active_units, r.active_units_std, 1),
                     pm(100 * r.probe_accuracy, 100 * r.probe_accuracy_std, 1) + "%",
                     pm(r.bound_gap_nats, r.bound_gap_nats_std),
                     f"{r.best_epoch:.1f} / {r.epochs_trained:.1f}", r.verdict])
    seeds = results["seeds"].iloc[0].replace(";", ", ")
    n_test, k = int(results["n_test"].min()), int(results["iw_k"].min())
    several = bool((results["n_seeds"] > 1).any())
    return Table(header, rows, (
        f"{n_test:,} test images (a seeded random subset, the same for every rung), K = {k:,}. "
        + (f"Mean ± standard deviation over seeds {seeds}" if several else f"Seed {seeds} only (no spread)")
        + "; IW s.e.: mean standard error of NLL_IW over test images. Rungs in order of decoder "
        "power. Bound gap = -ELBO - NLL_IW; MI = I_q(x; z), '>=' marks an estimate within "
        f"{claims.MI_BOUND_MARGIN:g} nats of its cap log M = {results['mi_cap_nats'].min():.2f} "
        "(a lower bound); probe: linear classifier of the digit on sampled z ~ q(z|x) (chance "
        "10%). Epochs: the kept (best-validation) epoch and the epochs trained, means over seeds. "
        "Verdict: collapsed or not only where the 95 % interval of KL over seeds (Student t) "
        "excludes the threshold, else unresolved"
        + ("; of MI where free bits floor the KL"
           if "verdict_by" in results and (results["verdict_by"] == "mi").any() else "")
        + "; n/a for a rung without z."))


def _ci(row, column: str, digits: int = 2, scale: float = 1.0) -> str:
    """A results row's column as 'mean [lo, hi]' over its seeds (95 % t interval)."""
    mean, std = getattr(row, column), getattr(row, f"{column}_std")
    return stats.Interval.of(scale * mean, scale * std, int(row.n_seeds)).text(digits)


def steps_table(found: list[claims.Claim]) -> Table | None:
    """Each step up the power axis (stages.report.claims.steps): KL's change with its interval."""
    trend = next((c for c in found if c.name == "power_trend"), None)
    if trend is None or not trend.numbers["steps"]:
        return None
    rows = []
    for step in trend.numbers["steps"]:
        change = step["change"]
        rows.append([" / ".join(f"`{r}`" for r in step["from"]), " / ".join(f"`{r}`" for r in step["to"]),
                     f"{step['from_field']} -> {step['to_field']}",
                     stats.Interval.from_plain(change).text() if change else "(several pairs)", step["word"]])
    return Table(["from", "to", "receptive field (pixels)", "KL change (nats)", "step"], rows,
                 "Each step up the power axis between consecutive receptive fields: the change in mean "
                 "KL with its 95 % Welch interval over seeds; 'falls' or 'rises' only where the "
                 "interval excludes 0 (for a tied group, for every pair), else 'flat'.")


def convergence_table(found: list[claims.Claim], results: pd.DataFrame) -> Table | None:
    """Per rung under early stopping (stages.report.claims.convergence): epochs trained, the best
    epoch and how many of its runs the epoch cap ended."""
    conv = next((c for c in found if c.name == "convergence"), None)
    if conv is None:
        return None
    n = conv.numbers
    field, seeds = results.set_index("rung")["receptive_field"], results.set_index("rung")["n_seeds"]
    capped = pd.Series([r for r, _ in n["capped_runs"]], dtype=object).value_counts()
    rows = [[f"`{r}`", str(field[r]), f"{n['epochs_trained_mean'][r]:.1f}",
             pm(n["best_epoch_mean"][r], n["best_epoch_std"][r], 1), f"{capped.get(r, 0)} of {int(seeds[r])}"]
            for r in n["best_epoch_mean"]]
    return Table(["rung", "receptive field (pixels)", "epochs trained (mean)", "best epoch (mean ± std)",
                  "runs the cap ended"], rows,
                 f"In order of power. A run stops once {n['patience']} epoch"
                 f"{' in a row has' if n['patience'] == 1 else 's in a row have'} not raised its validation "
                 f"ELBO by more than {n['min_delta_nats']:g} nats and keeps its best epoch; "
                 f"{n['epoch_cap']} epochs is the cap.")


def top_table(results: pd.DataFrame) -> Table | None:
    """The two strongest trend rungs and their decoders alone, as He et al. 2019's Table 1: a row
    per model with NLL, KL, MI and active units, each with its 95 % interval over seeds."""
    trend = claims.trend_rungs(results)
    if trend.empty:
        return None
    grid = "objective" in results and results["objective"].nunique() > 1
    if grid:  # a grid study: the strongest rung under every objective
        top = list(results.loc[results["decoder"] == trend["decoder"].iloc[-1], "rung"])
    else:
        top = list(trend["rung"])[-2:]
    twins = [t for t in results.get("twin", pd.Series(dtype=object)).where(results["rung"].isin(top)).dropna()
             if t in set(results["rung"])]
    chosen = results[results["rung"].isin(top + twins)].sort_values(["receptive_field", "uses_z"])
    rows = []
    for r in chosen.itertuples():
        no_z = not r.uses_z
        rows.append([f"`{r.rung}`", str(r.receptive_field), _ci(r, "nll_iw_nats"),
                     "n/a" if no_z else _ci(r, "kl_nats"), "n/a" if no_z else _ci(r, "mi_nats"),
                     "n/a" if no_z else _ci(r, "active_units", 1)])
    return Table(["model", "receptive field (pixels)", "NLL_IW (nats)", "KL (nats)", "MI (nats)",
                  "active units"], rows,
                 ("The top of the power axis: the strongest rung under each objective and its "
                  "decoder alone" if grid else
                  "The top of the power axis: the two strongest trend rungs and their decoders alone")
                 + " (no z), mean and 95 % interval over seeds (Student t), in "
                 "the form of He et al. 2019's Table 1.")


def z_adds_table(results: pd.DataFrame) -> Table | None:
    """Each rung with z beside its decoder alone (stages.report.zadds), in order of power."""
    if "z_adds_iw_nats" not in results.columns:
        return None
    rows = []
    for r in results[results["z_adds_iw_nats"].notna()].itertuples():
        rows.append([f"`{r.rung}`", ROLE_LABEL[r.role], str(r.receptive_field), f"{100 * r.raster_share:.0f}%",
                     r.twin if r.twin == "independent pixels" else f"`{r.twin}`",
                     pm(r.nll_alone_nats, r.nll_alone_std), pm(r.nll_iw_nats, r.nll_iw_nats_std),
                     pm(r.z_adds_iw_nats, r.z_adds_iw_std), pm(r.z_adds_elbo_nats, r.z_adds_elbo_std),
                     pm(r.kl_nats, r.kl_nats_std), r.collapse, r.verdict])
    return Table(["rung", "role", "receptive field (pixels)", "share of the raster past", "decoder alone",
                  "NLL alone (nats)", "NLL_IW, VAE (nats)", "z adds, IW (nats)", "z adds, ELBO (nats)",
                  "KL (nats)", "collapsed solution vs the VAE's ELBO", "verdict"], rows,
                 "What z adds: NLL of the decoder alone minus the VAE's NLL, paired per test image "
                 "and seed by seed, mean ± std over seed pairs; by IW (the VAE's NLL_IW) and by the "
                 "ELBO (the VAE's -ELBO; negative where the collapsed solution, q = prior and the "
                 "decoder alone, is the better ELBO). The decoder alone of an autoregressive rung is "
                 "its no-z twin, scored exactly (E_q log p(x|z) does not depend on z); of a "
                 "factorized rung, independent Bernoulli pixels at the training pixel means (no "
                 "training needed). Share of the raster past: the (pixel, earlier pixel) pairs of the "
                 "28x28 image a logit depends on; the receptive field counts the same on an "
                 "unbounded image and orders the rungs.")


def kind(family: str, uses_z: bool) -> str:
    """The `ladder_rung` of published.csv a rung corresponds to."""
    return family if uses_z else f"{family}_uncond"


def comparison_table(data: ReportData, results: pd.DataFrame) -> Table:
    """Published rows beside our deepest rung of the same kind."""
    ours = {kind(r.family, r.uses_z): r for r in results.itertuples()  # last (strongest) wins
            if r.role in (claims.TREND, claims.NO_Z)}
    rows = []
    for p in data.published.itertuples():
        o = ours.get(p.ladder_rung)
        k = "" if pd.isna(p.importance_samples) else f", K = {int(p.importance_samples):,}"
        rows.append([f"{p.paper} {p.year}", p.model, p.binarization,
                     "" if pd.isna(p.nll_nats) else f"{p.nll_nats:.2f}",
                     ("" if pd.isna(p.nll_is_bound) else str(p.nll_is_bound)) + k,
                     "" if pd.isna(p.kl_nats) else f"{p.kl_nats:.1f}",
                     f"`{o.rung}`" if o else "none", pm(o.nll_iw_nats, o.nll_iw_nats_std) if o else "",
                     ("n/a" if o.role == claims.NO_Z else pm(o.kl_nats, o.kl_nats_std)) if o else ""])
    return Table(["paper", "model", "binarization", "NLL (nats)", "estimate", "KL (nats)",
                  "our rung", "our NLL_IW", "our KL"], rows,
                 "Published binarized-MNIST results (reference/published.csv) beside our strongest "
                 "trend rung of the same kind (factorized mlp / conv, PixelCNN with z, PixelCNN "
                 "alone); ours are mean ± std over seeds.")


def setup_items(data: ReportData, results: pd.DataFrame, provenance: dict[str, str]) -> list[tuple[str, str]]:
    p, s = data.params, data.summary
    sources = sorted({v.get("source", "?") for v in (data.sources or {}).values() if isinstance(v, dict)})
    epochs = sorted({int(run.history["epoch"].max()) for run in data.runs.values()})
    if p.objectives:  # a grid: every rung with z under each of these
        objectives = [f"`{name}`: " + (options_text(o) or "the ELBO, the reference")
                      for name, o in p.objectives.items()]
    else:
        objectives = [f"`{name}`: {options_text(rung.objective)}" for name, rung in p.decoders.items()
                      if not rung.objective.is_elbo]
    ks, tests = sorted(set(results["iw_k"])), sorted(set(results["n_test"]))
    devices = sorted({f"{run.info.get('precision', '?')} on {run.info.get('device', '?')}"
                      for run in data.runs.values()})
    split = " / ".join(f"{name} {s[name]['n_images']:,}" for name in ("train", "valid", "test"))
    means = " / ".join(f"{s[name]['pixel_mean']:.3f}" for name in ("train", "valid", "test"))
    return [
        ("data", "MNIST, the four IDX files verified by SHA-256"
         + (f", fetched from {', '.join(sources)}" if sources else " (no data/raw/sources.json)")),
        ("binarization", f"{s['method']} (seed {s.get('seed', '?')})"),
        ("splits", f"{split} images (pixel means {means})"),
        ("evaluation", (f"K = {', '.join(f'{k:,}' for k in ks)} importance samples on "
                        f"{', '.join(f'{n:,}' for n in tests)} test images, a random subset drawn "
                        f"with evaluate.seed {p.evaluate.seed}, the same for every rung and seed")),
        ("training schedule", schedule(p.train, epochs, s["train"]["n_images"])),
        ("objective", "the ELBO for every rung (no KL warm-up, free bits, beta or aggressive "
         "encoder training)" if not objectives else
         ("the grid's objectives, each rung with z under every one: " if p.objectives else
          "the ELBO, with mitigations on ") + "; ".join(objectives)),
        ("model", (f"diagonal Gaussian q(z|x), MLP encoder {list(p.encoder.hidden)}, latent dim "
                   f"{int(results['latent_dim'].max())}, prior N(0, I)")),
        ("seeds", ", ".join(map(str, p.seeds))),
        ("collapse threshold", f"KL < {p.report.collapse_threshold_nats:g} nats"),
        ("compute", ", ".join(devices)),
        ("code", f"git {provenance['git']}, DVC {provenance['dvc']}"),
    ]


def schedule(train, epochs: list[int], n_train: int) -> str:
    """The training schedule in words: fixed, or early stopping under a cap."""
    head = f"Adam, lr {train.lr:g}, batch {train.batch_size}, "
    if train.patience is None:
        return head + (f"{', '.join(map(str, epochs))} epoch(s) of {n_train:,} images "
                       f"({max(epochs) * n_train:,} images seen); the best-validation epoch is "
                       "kept. The conclusions above hold for this schedule: KL moves with "
                       "training length (see the training figure).")
    return head + (f"on {n_train:,} images until the validation ELBO stops improving: a run stops "
                   f"once {train.patience} epoch{'s' if train.patience != 1 else ''} in a row "
                   f"{'have' if train.patience != 1 else 'has'} not raised it by more than "
                   f"{train.min_delta_nats:g} nats, and keeps its best epoch; {train.epochs} epochs "
                   f"is the cap. Runs trained {min(epochs)}-{max(epochs)} epochs (up to "
                   f"{max(epochs) * n_train:,} images seen); the convergence finding names any run "
                   "the cap ended.")


def options_text(objective) -> str:
    return ", ".join(f"{k}={v}" for k, v in changed_options(objective).items())


def ladder_table(data: ReportData, results: pd.DataFrame) -> Table:
    rows = []
    for r in results.itertuples():
        rung = data.params.decoders[r.rung]
        options = {**to_plain(rung.decoder), **changed_options(rung.objective)}
        rows.append([f"`{r.rung}`", r.family, ROLE_LABEL[r.role], str(r.receptive_field),
                     ", ".join(f"{k}={v}" for k, v in options.items()), f"{r.n_params:,}"])
    return Table(["rung", "family", "role", "receptive field (pixels)", "options", "parameters"], rows,
                 "The decoder ladder (params.yaml `decoders`) in order of power: the causal "
                 "receptive field on an unbounded image, computed from the stack geometry (0 for a "
                 "factorized decoder), then the family (linear < mlp < conv < pixelcnn < "
                 "gated_pixelcnn). Parameters include the encoder.")


def grid_tables(data: ReportData, cells: pd.DataFrame) -> list[Table]:
    """The grid's cells, its aggressive phases, and its strongest rung per objective beside
    published remedies."""
    from stages.report import grid  # the grid's own module, only for a grid

    phase = grid.phase_table(cells)
    header, top = grid.top_beside_published(cells, data.remedies)
    return [Table(*grid.cell_table(cells)), *([Table(*phase)] if phase else []),
            Table(header, top, "The strongest rung under each objective beside published numbers of "
                  "the same remedy (reference/remedies.csv): other data, decoders and training "
                  "scales, shown for orientation, not as a comparison.")]


def build(data: ReportData, results: pd.DataFrame, found: list[claims.Claim], scale: tuple[bool, str],
          provenance: dict[str, str], figure_names: list[str], layout: Layout | None = None,
          cells: pd.DataFrame | None = None, answer: list[str] | None = None, scope: str = "") -> Page:
    paper, scale_text = scale
    if paper:
        note = [(f"This run is paper-scale ({scale_text}): its numbers are comparable with the "
                 f"published ones of the same binarization (ours: {data.summary['method']}).")]
    else:
        note = [(f"This run is small-scale ({scale_text}): its numbers are NOT comparable with "
                 "the published ones and are shown for orientation only."),
                ("Comparable runs need the full 50,000-image training split, the full training "
                 "schedule (>= 100 epochs, best-validation epoch kept) and K >= 5,000 on all "
                 "10,000 test images.")]
    note.append("Published 'upper bound' rows are ELBO-type bounds, 'exact' rows are exact "
                "autoregressive likelihoods; rows with another binarization than ours "
                f"({data.summary['method']}) differ by construction.")
    in_captions = {"k_convergence": next((c.text for c in found if c.name == "k_convergence"), "")}
    figures = [(n, FIGURES.get(n, (n, ""))[0],
                " ".join(t for t in (FIGURES.get(n, (n, ""))[1], in_captions.get(n, "")) if t))
               for n in figure_names]
    study = layout.study if layout is not None else ""
    data_dir = layout.data.relative_to(layout.root).as_posix() if layout is not None else "data"
    return Page(QUESTION, [c.text for c in found if c.name not in in_captions], results_table(results),
                figures, comparison_table(data, results), note, setup_items(data, results, provenance),
                ladder_table(data, results), f"{TITLE}: the {STUDY_NAMES.get(study, study)} study" if study else TITLE,
                z_adds_table(results),
                grid_tables(data, cells) if cells is not None and not cells.empty else None,
                ", ".join(f"{data_dir}/{d}" for d in ("metrics", "eval", "history")),
                answer=answer or [], scope=scope, top=top_table(results), steps=steps_table(found),
                convergence=convergence_table(found, results))


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _is_text(table: Table) -> list[bool]:
    """Per column: does it hold text (left-aligned) rather than numbers (right-aligned)?"""
    return [not all(NUMBER.match(row[i]) for row in table.rows) for i in range(len(table.header))]


def _md_table(table: Table) -> str:
    lines = ["| " + " | ".join(map(_md_cell, table.header)) + " |",
             "|" + "|".join("---" if t else "---:" for t in _is_text(table)) + "|"]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows]
    return "\n".join(lines) + (f"\n\n*{table.caption}*" if table.caption else "")


def markdown(page: Page) -> str:
    """report.md: GitHub-flavoured Markdown, figures by relative path."""
    head, *rest = page.figures
    parts = [f"# {page.title}"]
    if page.answer:
        parts += ["## The answer", " ".join(page.answer), f"*{page.scope}*"]
    if page.top is not None:
        parts += ["## At the top of the power axis", _md_table(page.top)]
    parts += ["## What the numbers show", "\n".join(f"- {s}" for s in page.findings)]
    if page.steps is not None:
        parts += ["### Steps up the power axis", _md_table(page.steps)]
    if page.convergence is not None:
        parts += ["### Convergence", _md_table(page.convergence)]
    parts += [f"![{head[1]}](figures/{head[0]}.png)\n\n*{head[2]}* ([SVG](figures/{head[0]}.svg))",
              "## The question", " ".join(page.question), "## Results", _md_table(page.results)]
    if page.grid is not None:
        parts += ["## The grid: power x objective", *(_md_table(t) for t in page.grid)]
    if page.z_adds is not None:
        parts += ["## What z adds, rung by rung", _md_table(page.z_adds)]
    parts += ["## Figures"]
    for name, title, caption in rest:
        parts.append(f"### {title}\n\n![{title}](figures/{name}.png)\n\n*{caption}* "
                     f"([SVG](figures/{name}.svg))")
    parts += ["## Beside the published numbers", "\n\n".join(f"> {s}" for s in page.comparison_note),
              _md_table(page.comparison), "## Setup",
              "\n".join(f"- **{k}**: {v}" for k, v in page.setup), _md_table(page.ladder),
              (f"*Generated by `vae-study report` from {page.sources}; every sentence of the answer "
               "and under \"What the numbers show\" is computed from the numbers.*")]
    return "\n\n".join(parts) + "\n"


FIGURE_SRC = re.compile(r'src="figures/([A-Za-z0-9_]+)\.png"')


def html(markdown_text: str, figure_dir: Path, title: str = TITLE) -> str:
    """index.html: report.md rendered by markdown-it-py, one self-contained file, the PNGs of
    `figure_dir` embedded as data URIs (raw HTML in the Markdown is escaped, not passed on)."""
    renderer = MarkdownIt("commonmark", {"html": False}).enable("table")

    def embed(match: re.Match) -> str:
        data = base64.b64encode((figure_dir / f"{match.group(1)}.png").read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    inline = re.sub(r" \(\[SVG\]\(figures/[^)]+\)\)", "", markdown_text)  # the page embeds the PNGs
    body = FIGURE_SRC.sub(embed, renderer.render(inline))
    body = re.sub(r"<table>", '<div class="scroll"><table>', body).replace("</table>", "</table></div>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html_lib.escape(title)}</title><style>{CSS}</style></head>\n<body><main>\n"
            + body + "</main></body></html>\n")
