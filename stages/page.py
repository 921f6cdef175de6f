"""The report's pages: one `Page` built from the collected data, rendered twice.

- `markdown(page)`: report.md, figures referenced by relative path (figures/<name>.png);
- `html(page, figure_dir)`: index.html, self-contained (inline CSS, the PNGs embedded as
  base64 data URIs), so it opens offline; every text is HTML-escaped.

Text holds one kind of inline markup, `code` in backticks, rendered as <code> in HTML.
"""

from __future__ import annotations

import base64
import html as html_lib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from stages.report import ReportData

NUMBER = re.compile(r"^[-+\d.,±% ]*$")  # a table cell holding a number
TITLE = "Posterior collapse in VAEs on binarized MNIST"
CLAIM = [
    ("A VAE trained by maximizing the ELBO learns to ignore its latent variable z "
     "(KL[q(z|x) || p(z)] -> 0, posterior collapse) when its decoder can model the data alone."),
    ("So along a ladder of decoders of rising power, from factorized Bernoulli decoders to "
     "autoregressive PixelCNNs, the KL term should fall to zero, and a collapsed VAE should "
     "reach the log-likelihood of the same decoder trained without z."),
]
FIGURES = {  # name -> (title, caption)
    "headline": (
        "KL and likelihood along the decoder ladder",
        ("Top: KL[q(z|x)||p(z)] on the test images per rung (hollow: below the collapse threshold, "
         "dotted red line). Bottom: -log p(x) by importance sampling; dashed grey line and band: "
         "the decoder-alone baseline and its standard error.")),
    "kl_training": (
        "KL during training",
        "Validation KL per epoch; thin lines are single seeds when there are several."),
    "rate_distortion": (
        "Rate and distortion",
        ("Each rung's rate (KL) against its distortion (reconstruction term); along a grey line "
         "-ELBO = R + D is constant (Alemi et al. 2018). Collapsed rungs sit at R ~ 0.")),
    "k_convergence": (
        "Convergence in K",
        ("The importance-weighted estimate of -log p(x) against the number of samples K. A "
         "collapsed model (q(z|x) ~ p(z|x) = p(z)) is tight already at K = 1.")),
    "reconstructions": (
        "Reconstructions",
        ("Top row: test digits. Below: p(pixel = 1 | z = E_q[z|x]) per rung (first seed); "
         "collapsed rungs return a generic digit.")),
    "samples": (
        "Prior samples",
        ("p(pixel = 1 | z) for z ~ N(0, I) per rung (first seed); autoregressive rungs show the "
         "first pixel-wise conditional drawn.")),
    "latent_kl": (
        "KL per latent dimension",
        ("Each rung's latent dimensions sorted by their KL (log colour scale); AU = active units "
         "(Burda et al. 2016).")),
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
    claim: list[str]
    findings: list[str]
    results: Table
    figures: list[tuple[str, str, str]]  # name, title, caption
    comparison: Table
    comparison_note: list[str]
    setup: list[tuple[str, str]]
    ladder: Table
    title: str = TITLE


def pm(mean: float, spread: float, digits: int = 2) -> str:
    """'mean ± spread', or just the mean when the spread is NaN."""
    return f"{mean:.{digits}f}" if pd.isna(spread) else f"{mean:.{digits}f} ± {spread:.{digits}f}"


def results_table(results: pd.DataFrame) -> Table:
    """The results in ladder order: mean ± std over seeds when several, else ± s.e. on NLL_IW."""
    several = bool((results["n_seeds"] > 1).any())
    header = ["rung", "NLL_IW (nats)", *(["IW s.e. (nats)"] if several else []),
              "-ELBO (nats)", "KL (nats)", "MI (nats)", "active units", "probe accuracy",
              "bound gap (nats)", "collapsed"]
    rows = []
    for r in results.itertuples():
        def s(key: str, row=r) -> float:
            """The spread over seeds; NaN (the plain mean is shown) for one seed."""
            return getattr(row, f"{key}_std") if several else float("nan")

        nll = pm(r.nll_iw_nats, s("nll_iw_nats")) if several else pm(r.nll_iw_nats, r.nll_iw_stderr_nats)
        rows.append([f"`{r.rung}`" + ("" if r.uses_z else " (no z)"), nll,
                     *([f"{r.nll_iw_stderr_nats:.2f}"] if several else []),
                     pm(r.nll_elbo_nats, s("nll_elbo_nats")), pm(r.kl_nats, s("kl_nats")),
                     pm(r.mi_nats, s("mi_nats")), pm(r.active_units, s("active_units"), 1 if several else 0),
                     pm(100 * r.probe_accuracy, 100 * s("probe_accuracy"), 1) + "%",
                     pm(r.bound_gap_nats, s("bound_gap_nats")), "yes" if r.collapsed else "no"])
    seeds = results["seeds"].iloc[0].replace(";", ", ")
    caption = (f"Test split, ladder order (weakest first). Mean ± standard deviation over seeds "
               f"{seeds}; IW s.e.: mean standard error of NLL_IW over test images."
               if several else
               f"Test split, ladder order (weakest first), seed {seeds}. NLL_IW ± its standard "
               f"error over test images.")
    return Table(header, rows, caption + " Bound gap = -ELBO - NLL_IW; MI = I_q(x; z); probe: "
                 "linear classifier of the digit on E_q[z|x] (chance 10%).")


def kind(family: str, uses_z: bool) -> str:
    """The `ladder_rung` of published.csv a rung corresponds to."""
    return family if uses_z else f"{family}_uncond"


def comparison_table(data: ReportData, results: pd.DataFrame) -> Table:
    """Published rows beside our deepest rung of the same kind."""
    ours = {kind(r.family, r.uses_z): r for r in results.itertuples()}  # last (deepest) wins
    rows = []
    for p in data.published.itertuples():
        o = ours.get(p.ladder_rung)
        k = "" if pd.isna(p.importance_samples) else f", K = {int(p.importance_samples):,}"
        rows.append([f"{p.paper} {p.year}", p.model, p.binarization,
                     "" if pd.isna(p.nll_nats) else f"{p.nll_nats:.2f}",
                     ("" if pd.isna(p.nll_is_bound) else str(p.nll_is_bound)) + k,
                     "" if pd.isna(p.kl_nats) else f"{p.kl_nats:.1f}",
                     f"`{o.rung}`" if o else "none", f"{o.nll_iw_nats:.2f}" if o else "",
                     f"{o.kl_nats:.2f}" if o else ""])
    return Table(["paper", "model", "binarization", "NLL (nats)", "estimate", "KL (nats)",
                  "our rung", "our NLL_IW", "our KL"], rows,
                 "Published binarized-MNIST results (reference/published.csv) beside our deepest "
                 "rung of the same kind (factorized mlp / conv, PixelCNN with z, PixelCNN alone).")


def setup_items(data: ReportData, results: pd.DataFrame, provenance: dict[str, str]) -> list[tuple[str, str]]:
    p, s = data.params, data.summary
    sources = sorted({v.get("source", "?") for v in (data.sources or {}).values() if isinstance(v, dict)})
    epochs = sorted({int(run.history["epoch"].max()) for run in data.runs.values()})
    objectives = [f"`{name}`: {rung.objective}" for name, rung in p.decoders.items()
                  if rung.objective.kl_warmup_steps or rung.objective.free_bits]
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
        ("evaluation", (f"K = {', '.join(f'{k:,}' for k in ks)} importance samples on the first "
                        f"{', '.join(f'{n:,}' for n in tests)} test images")),
        ("training", (f"Adam, lr {p.train.lr:g}, batch {p.train.batch_size}, "
                      f"{', '.join(map(str, epochs))} epoch(s); best-validation epoch kept")),
        ("objective", "the ELBO for every rung (no KL warm-up, no free bits)" if not objectives
         else "the ELBO, with mitigations on " + "; ".join(objectives)),
        ("model", (f"diagonal Gaussian q(z|x), MLP encoder {list(p.encoder.hidden)}, latent dim "
                   f"{int(results['latent_dim'].max())}, prior N(0, I)")),
        ("seeds", ", ".join(map(str, p.seeds))),
        ("collapse threshold", f"KL < {p.report.collapse_threshold_nats:g} nats"),
        ("compute", ", ".join(devices)),
        ("code", f"git {provenance['git']}, DVC {provenance['dvc']}"),
    ]


def ladder_table(data: ReportData, results: pd.DataFrame) -> Table:
    rows = []
    for r in results.itertuples():
        options = {k: v for k, v in data.params.decoders[r.rung].plain().items() if k != "family"}
        rows.append([f"`{r.rung}`", r.family, ", ".join(f"{k}={v}" for k, v in options.items()),
                     f"{r.n_params:,}"])
    return Table(["rung", "family", "options", "parameters"], rows,
                 "The decoder ladder (params.yaml `decoders`, weakest first); parameters include "
                 "the encoder.")


def build(data: ReportData, results: pd.DataFrame, sentences: list[str], scale: tuple[bool, str],
          provenance: dict[str, str], figure_names: list[str]) -> Page:
    paper, scale_text = scale
    if paper:
        note = [(f"This run is paper-scale ({scale_text}): its numbers are comparable with the "
                 f"published ones of the same binarization (ours: {data.summary['method']}).")]
    else:
        note = [(f"This run is small-scale ({scale_text}): its numbers are NOT comparable with "
                 "the published ones and are shown for orientation only."),
                ("Paper-scale runs (the full 50,000-image training split and K >= 5,000 on all "
                 "10,000 test images, with full training schedules) are comparable.")]
    note.append("Published 'upper bound' rows are ELBO-type bounds, 'exact' rows are exact "
                "autoregressive likelihoods; rows with another binarization than ours "
                f"({data.summary['method']}) differ by construction.")
    return Page(CLAIM, sentences, results_table(results),
                [(n, *FIGURES.get(n, (n, ""))) for n in figure_names],
                comparison_table(data, results), note, setup_items(data, results, provenance),
                ladder_table(data, results))


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
    parts = [f"# {page.title}", "## Claim", " ".join(page.claim),
             "## What the numbers show", "\n".join(f"- {s}" for s in page.findings),
             f"![{head[1]}](figures/{head[0]}.png)\n\n*{head[2]}* ([SVG](figures/{head[0]}.svg))",
             "## Results", _md_table(page.results), "## Figures"]
    for name, title, caption in rest:
        parts.append(f"### {title}\n\n![{title}](figures/{name}.png)\n\n*{caption}* "
                     f"([SVG](figures/{name}.svg))")
    parts += ["## Beside the published numbers", "\n\n".join(f"> {s}" for s in page.comparison_note),
              _md_table(page.comparison), "## Setup",
              "\n".join(f"- **{k}**: {v}" for k, v in page.setup), _md_table(page.ladder),
              ("*Generated by `vae-study report` from data/metrics, data/eval, data/history; "
               "every sentence under \"What the numbers show\" is computed from the numbers.*")]
    return "\n\n".join(parts) + "\n"


def _inline(text: str) -> str:
    """Escape for HTML, then `code` -> <code>code</code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html_lib.escape(text))


def _html_table(table: Table) -> str:
    """Numbers right-aligned, text left-aligned; the caption below, outside the scroll box."""
    text = _is_text(table)
    head = "".join(f'<th{" class=text" if t else ""}>{_inline(h)}</th>' for h, t in zip(table.header, text))
    body = "".join("<tr>" + "".join(f'<td{" class=text" if t else ""}>{_inline(c)}</td>'
                                    for c, t in zip(row, text)) + "</tr>" for row in table.rows)
    caption = f'<p class="caption">{_inline(table.caption)}</p>' if table.caption else ""
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>{caption}")


def _html_figure(name: str, title: str, caption: str, figure_dir: Path) -> str:
    data = base64.b64encode((figure_dir / f"{name}.png").read_bytes()).decode("ascii")
    return (f'<figure id="fig-{html_lib.escape(name)}"><img src="data:image/png;base64,{data}" '
            f'alt="{html_lib.escape(title)}"><figcaption><b>{_inline(title)}.</b> '
            f"{_inline(caption)}</figcaption></figure>")


def html(page: Page, figure_dir: Path) -> str:
    """index.html: one self-contained file, the PNGs of `figure_dir` embedded as data URIs."""
    head, *rest = page.figures
    setup = "".join(f"<dt>{_inline(k)}</dt><dd>{_inline(v)}</dd>" for k, v in page.setup)
    body = [
        f"<h1>{_inline(page.title)}</h1>",
        f'<h2>Claim</h2><p>{_inline(" ".join(page.claim))}</p>',
        '<h2>What the numbers show</h2><ul class="findings">'
        + "".join(f"<li>{_inline(s)}</li>" for s in page.findings) + "</ul>",
        _html_figure(*head, figure_dir),
        "<h2>Results</h2>" + _html_table(page.results),
        "<h2>Figures</h2>" + "".join(_html_figure(*f, figure_dir) for f in rest),
        "<h2>Beside the published numbers</h2>"
        + "".join(f'<p class="note">{_inline(s)}</p>' for s in page.comparison_note)
        + _html_table(page.comparison),
        f"<h2>Setup</h2><dl>{setup}</dl>" + _html_table(page.ladder),
        ("<p><small>Generated by <code>vae-study report</code>; every sentence under “What the "
         "numbers show” is computed from the numbers.</small></p>"),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_inline(page.title)}</title><style>{CSS}</style></head>\n<body><main>\n"
            + "\n".join(body) + "\n</main></body></html>\n")
