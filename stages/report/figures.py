"""The report's figures: one function per figure, plain data in, a matplotlib Figure out.

- `headline`: KL[q(z|x)||p(z)] and -log p(x) (IW, Burda et al. 2016) along the decoder-power
  axis, with each rung's decoder alone (its no-z twin, or independent pixels) beside it: the
  -log p(x) a collapsed VAE of that rung reaches;
- `strength`: KL and what z adds against the NLL of the decoder alone (the decoder's own
  strength, the other axis of power);
- `kl_vs_z_adds`: KL against what z adds (NLL of the decoder alone minus NLL of the VAE), one
  point per rung (`stages.report.zadds`);
- `kl_training`: validation KL and ELBO against training images seen;
- `rate_distortion`: rate R = KL against distortion D = -E_q log p(x|z), with isolines of
  constant -ELBO = R + D (Alemi et al. 2018, Fig. 1);
- `k_convergence`: the IW estimate against the number of importance samples K;
- `image_grid`: Bernoulli probabilities of reconstructions / prior samples, one row per rung;
- `latent_kl`: KL per latent dimension, which units carry information.

Figures are built with the object-oriented API (`matplotlib.figure.Figure`, no pyplot), so no
global figure state is kept and no GUI backend is touched: PNG goes through Agg, SVG through
the SVG backend. `save` writes both atomically and byte-for-byte reproducibly (fixed SVG hash
salt, no dates or software versions in the metadata).
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from stages.fsutil import write_bytes
from stages.report import stats

STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "svg.hashsalt": "vae-collapse-study",  # deterministic element ids
    "svg.fonttype": "path",  # glyphs as paths: the SVG needs no fonts
}
BASELINE_COLOR = "0.45"
DPI = 110


def rung_styles(names: list[str], side: set[str]) -> dict[str, dict]:
    """Line style per rung: trend rungs get a color from light (weak) to dark (strong) along
    the power axis; side rungs (bias pathway, mitigated, no z) are grey and dashed."""
    cmap = matplotlib.colormaps["plasma"]
    ladder = [n for n in names if n not in side]
    shades = np.linspace(0.8, 0.0, len(ladder)) if len(ladder) > 1 else [0.4]
    styles = {n: {"color": cmap(v), "ls": "-", "marker": "o"} for n, v in zip(ladder, shades)}
    markers = ("s", "^", "v", "D", "P", "X", "<", ">")  # side rungs: grey, told apart by their marker
    styles.update({n: {"color": BASELINE_COLOR, "ls": "--", "marker": markers[i % len(markers)]}
                   for i, n in enumerate(n for n in names if n in side)})
    return {n: styles[n] for n in names}


def save(fig: Figure, directory: str | Path, name: str) -> list[Path]:
    """Write `name`.png and `name`.svg into `directory`, each atomically; return the paths."""
    directory = Path(directory)
    paths = []
    for fmt, metadata in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
        buffer = io.BytesIO()
        with matplotlib.rc_context(STYLE):
            fig.savefig(buffer, format=fmt, dpi=DPI, metadata=metadata, bbox_inches="tight")
        write_bytes(directory / f"{name}.{fmt}", buffer.getvalue())
        paths.append(directory / f"{name}.{fmt}")
    return paths


def half_width(values: pd.Series, stds: pd.Series, n: pd.Series) -> np.ndarray:
    """95 % t half-widths over seeds (0 where one seed gives none): the error bars of every figure."""
    return np.array([0.0 if pd.isna(s) or k < 2 else stats.Interval.of(v, s, int(k)).hi - v
                     for v, s, k in zip(values, stds, n)])


def power_positions(results: pd.DataFrame) -> np.ndarray:
    """x of each rung on the symlog receptive-field axis; rungs of equal field (ties) are spread
    a little around it, so neither hides the other."""
    x = results["receptive_field"].to_numpy(float).copy()
    for field, idx in results.groupby("receptive_field").indices.items():
        if len(idx) > 1:
            offsets = np.linspace(-1, 1, len(idx))
            x[idx] = field + 0.25 * offsets if field == 0 else field * (1 + 0.08 * offsets)
    return x


def _trend_line(ax, fields: np.ndarray, values: np.ndarray, color: str) -> None:
    """The trend as a line through the mean of each receptive field: rungs of equal field are a
    tie, so no segment joins them as if one were stronger."""
    means = pd.Series(values).groupby(fields).mean()
    ax.plot(means.index.to_numpy(float), means.to_numpy(float), "-", color=color, lw=1.4, alpha=0.8,
            zorder=1)


def _threshold_line(ax, threshold: float) -> None:
    """The collapse threshold on a KL axis, dotted red."""
    ax.axhline(threshold, color="C3", ls=":", lw=1,
               label=f"collapse threshold ({stats.nats_word(threshold)})")


def _symlog_axis(ax, results: pd.DataFrame) -> None:
    ax.set_xscale("symlog", linthresh=1.0)
    ticks = sorted(set(results["receptive_field"].astype(int)))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlim(-0.6, max(ticks) * 1.6 + 1)


def headline(results: pd.DataFrame, threshold: float) -> Figure:
    """KL and NLL_IW (nats) against the causal receptive field (pixels, symlog axis).

    results: one row per rung with rung, role, receptive_field, kl_nats, kl_nats_std,
    nll_iw_nats, nll_iw_nats_std, nll_iw_stderr_nats, n_seeds, and, where a rung has a decoder
    alone, twin and nll_alone_nats / nll_alone_std. Error bars: 95 % t intervals over seeds (for
    one seed, NLL_IW shows its standard error over test images). Only the trend rungs are joined
    by the line; side rungs (role other than "trend") are grey squares beside it. A no-z rung
    that is some rung's twin is drawn at that rung (open squares); a decoder alone far above
    every VAE (independent pixels) is named at the top edge instead of setting the scale.
    """
    twins = set(results["twin"].dropna()) if "twin" in results.columns else set()
    results = results[~results["rung"].isin(twins)].reset_index(drop=True)
    alone = (results["nll_alone_nats"].to_numpy(float) if "nll_alone_nats" in results.columns
             else np.full(len(results), np.nan))
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(9.5, 6.8), layout="constrained")
        ax_kl, ax_nll = fig.subplots(2, 1, sharex=True)
        x = power_positions(results)
        several = bool((results["n_seeds"] > 1).any())
        kl, nll = results["kl_nats"].to_numpy(float), results["nll_iw_nats"].to_numpy(float)
        kl_err = half_width(results["kl_nats"], results["kl_nats_std"], results["n_seeds"])
        nll_err = (half_width(results["nll_iw_nats"], results["nll_iw_nats_std"], results["n_seeds"])
                   if several else results["nll_iw_stderr_nats"].to_numpy(float))
        trend = (results["role"] == "trend").to_numpy(bool)
        has_z = (results["role"] != "no z").to_numpy(bool)
        side = has_z & ~trend
        x_side = np.where(x > 0, x * 1.18, x + 0.35)  # beside the trend point of the same field

        fields = results["receptive_field"].to_numpy(float)
        ax_kl.errorbar(x[trend], kl[trend], yerr=kl_err[trend], fmt="o", color="C0", ms=7, capsize=3,
                       label="trend rungs (one z pathway)", zorder=2)
        _trend_line(ax_kl, fields[trend], kl[trend], "C0")
        if side.any():
            ax_kl.errorbar(x_side[side], kl[side], yerr=kl_err[side], fmt="s", color=BASELINE_COLOR, ms=7,
                           capsize=3, label="side rungs (not in the trend)")
        for xi, value, name in zip(np.where(trend, x, x_side)[has_z], kl[has_z], results["rung"][has_z]):
            ax_kl.annotate(f"{name}\n{value:.2f}" if value < 10 else f"{name}\n{value:.1f}", (xi, value),
                           textcoords="offset points", xytext=(6, 4), ha="left", fontsize=7.5)
        _threshold_line(ax_kl, threshold)
        top = max(float(np.nanmax(kl[has_z] + kl_err[has_z])) if has_z.any() else 0.0, threshold) * 1.2
        ax_kl.set_ylim(-0.04 * top, top)
        ax_kl.set_ylabel("KL[q(z|x) || p(z)] (nats)")
        ax_kl.set_title("Information in z against the causal context the decoder sees")
        ax_kl.legend(loc="upper right")

        ax_nll.errorbar(x[trend], nll[trend], yerr=nll_err[trend], fmt="o", color="C1", ms=6,
                        capsize=3, label="VAE, -log p(x) (IW)")
        _trend_line(ax_nll, fields[trend], nll[trend], "C1")
        if side.any():
            ax_nll.errorbar(x_side[side], nll[side], yerr=nll_err[side], fmt="s", color=BASELINE_COLOR,
                            ms=6, capsize=3)
        paired = ~np.isnan(alone)
        scale = np.concatenate([nll, alone[paired & (results["receptive_field"] > 0).to_numpy()]])
        lo, hi = float(np.nanmin(scale)), float(np.nanmax(scale))
        ylim = (lo - 0.08 * (hi - lo + 1), hi + 0.15 * (hi - lo + 1))
        if paired.any():
            alone_err = half_width(results["nll_alone_nats"], results["nll_alone_std"], results["n_seeds"])
            shown = paired & (alone <= ylim[1])
            ax_nll.errorbar(x[shown], alone[shown], yerr=alone_err[shown], fmt="s", mfc="white",
                            color=BASELINE_COLOR, ms=6, capsize=3,
                            label="its decoder alone (no-z twin, or independent pixels), exact")
            off = paired & ~shown
            if off.any():  # one note for all of them (the factorized rungs share independent pixels)
                names = ", ".join(results["rung"][off])
                values = "/".join(sorted({f"{v:.0f}" for v in alone[off]}))
                ax_nll.annotate(f"decoder alone of {names}: {values} nats (off scale)",
                                (float(np.mean(x[off])), ylim[1]), xytext=(0, -12), textcoords="offset points",
                                ha="left", fontsize=7.5, color=BASELINE_COLOR)
        for row in results[~has_z].itertuples():  # a no-z rung that is nobody's twin
            ax_nll.axhline(row.nll_iw_nats, color=BASELINE_COLOR, ls="--", lw=1.2,
                           label=f"decoder alone ({row.rung})")
        ax_nll.set_ylim(*ylim)
        ax_nll.set_ylabel("test NLL, -log p(x) (nats)")
        bars = "95 % interval over seeds" if several else "standard error over test images"
        ax_nll.set_title(f"Likelihood by importance sampling (error bars: {bars})")
        ax_nll.set_xlabel("causal receptive field (pixels a pixel's distribution sees; symlog scale)")
        ax_nll.legend(loc="upper right")
        _symlog_axis(ax_nll, results)
    return fig


def strength(results: pd.DataFrame, threshold: float) -> Figure:
    """KL and what z adds (nats) against the NLL of the decoder alone: how well the decoder models
    the data without z (lower: stronger; x inverted, log scale), one point per trend rung with a
    decoder alone; error bars 95 % t intervals over seeds (paired for what z adds)."""
    rows = results[(results["role"] == "trend") & results["nll_alone_nats"].notna()].reset_index(drop=True)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(10.5, 4.4), layout="constrained")
        ax_kl, ax_z = fig.subplots(1, 2, sharex=True)
        x = rows["nll_alone_nats"].to_numpy(float)
        for ax, key, std, label in ((ax_kl, "kl_nats", "kl_nats_std", "KL[q(z|x) || p(z)] (nats)"),
                                    (ax_z, "z_adds_iw_nats", "z_adds_iw_std",
                                     "what z adds: NLL alone - NLL_IW (nats)")):
            y = rows[key].to_numpy(float)
            err = half_width(rows[key], rows[std], rows["n_seeds"])
            ax.errorbar(x, y, yerr=err, fmt="o", color="C0", ms=7, capsize=3)
            for xi, yi, name in zip(x, y, rows["rung"]):
                ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(6, 4), fontsize=8)
            ax.set_ylabel(label)
            ax.set_xscale("log")
            ticks = [t for t in (80, 90, 100, 120, 150, 200, 300) if x.min() * 0.9 <= t <= x.max() * 1.1]
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel("NLL of the decoder alone (nats, log scale; stronger to the right)")
        _threshold_line(ax_kl, threshold)
        ax_z.axhline(0, color=BASELINE_COLOR, lw=1)
        ax_kl.invert_xaxis()
        ax_kl.legend(loc="upper left")
        ax_kl.set_title("Information in z against the decoder's own strength")
        ax_z.set_title("What z adds against the decoder's own strength")
    return fig


def kl_vs_z_adds(results: pd.DataFrame, threshold: float) -> Figure:
    """KL (nats) against what z adds by IW (NLL of the decoder alone minus NLL_IW of the VAE,
    nats, paired per image), one point per trend rung, mean and 95 % interval over seeds. Filled:
    the VAE's ELBO beats the collapsed solution's; open: collapse is the better ELBO or unresolved."""
    rows = results[(results["role"] == "trend") & results["z_adds_iw_nats"].notna()]
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7.5, 5.2), layout="constrained")
        ax = fig.subplots()
        styles = rung_styles(list(rows["rung"]), set())
        x_err = half_width(rows["z_adds_iw_nats"], rows["z_adds_iw_std"], rows["n_seeds"])
        y_err = half_width(rows["kl_nats"], rows["kl_nats_std"], rows["n_seeds"])
        for r, xe, ye in zip(rows.itertuples(), x_err, y_err):
            open_marker = r.collapse != "the VAE's ELBO is better"
            ax.errorbar(r.z_adds_iw_nats, r.kl_nats, xerr=xe, yerr=ye, fmt="o", ms=7, capsize=3,
                        color=styles[r.rung]["color"], mfc="white" if open_marker else styles[r.rung]["color"])
            ax.annotate(r.rung, (r.z_adds_iw_nats, r.kl_nats), textcoords="offset points",
                        xytext=(6, 4), fontsize=8)
        _threshold_line(ax, threshold)
        ax.axvline(0, color=BASELINE_COLOR, lw=1)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("what z adds: NLL of the decoder alone - NLL_IW of the VAE (nats, symlog scale)")
        ax.set_ylabel("KL[q(z|x) || p(z)] (nats)")
        ax.set_title("KL against what z adds, one point per rung (open: the VAE's ELBO is not decidedly better)")
        ax.legend(loc="best")
    return fig


def kl_training(history: pd.DataFrame, names: list[str], side: set[str], threshold: float) -> Figure:
    """Validation KL and ELBO (nats) against training images seen, per rung.

    history: rung, seed, images_seen, valid_kl_nats, valid_elbo_nats. One line per rung (mean
    over seeds) with a band from the lowest to the highest seed when there are several, up to
    the point every seed reached; where early stopping ended some seeds sooner, the others go on
    as thin single-seed lines (a mean over the seeds left would jump). Rungs in `side` (not
    points of the power trend) dashed.
    """
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(11.5, 4.4), layout="constrained")
        ax_kl, ax_elbo = fig.subplots(1, 2)
        for name, st in rung_styles(names, side).items():
            h = history[history["rung"] == name]
            shared = h.groupby("seed")["images_seen"].max().min()  # every seed reached it
            for ax, key in ((ax_kl, "valid_kl_nats"), (ax_elbo, "valid_elbo_nats")):
                g = h[h["images_seen"] <= shared].groupby("images_seen")[key]
                mean, lo, hi = g.mean(), g.min(), g.max()
                ax.plot(mean.index, mean.to_numpy(), ms=3.5, lw=1.6, label=name, **st)
                if h["seed"].nunique() > 1:
                    ax.fill_between(mean.index, lo.to_numpy(), hi.to_numpy(), color=st["color"],
                                    alpha=0.15, lw=0)
                for _, run in h[h["images_seen"] >= shared].groupby("seed"):
                    if len(run) > 1:  # this seed trained on after another one stopped
                        ax.plot(run["images_seen"], run[key], color=st["color"], ls=st.get("ls", "-"),
                                lw=0.8, alpha=0.6)
        _threshold_line(ax_kl, threshold)
        ax_kl.set_ylabel("validation KL[q(z|x) || p(z)] (nats, symlog: linear below 1)")
        ax_kl.set_yscale("symlog", linthresh=1.0)  # the top rungs' 0-3 nats are not squeezed flat
        ax_kl.set_ylim(bottom=0)
        ax_kl.set_title("KL term during training")
        ax_elbo.set_ylabel("validation ELBO (nats)")
        ax_elbo.set_title("ELBO during training")
        for ax in (ax_kl, ax_elbo):
            ax.set_xlabel("training images seen")
        ax_elbo.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def rate_distortion(results: pd.DataFrame) -> Figure:
    """Rate R = KL (nats) against distortion D = -E_q log p(x|z) (nats), with -ELBO isolines.

    results: rung, uses_z, kl_nats, rec_nats (and _std columns when several seeds), per rung.
    """
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(8.5, 5.0), layout="constrained")
        ax = fig.subplots()
        names = list(results["rung"])
        styles = rung_styles(names, set(results.loc[results["role"] != "trend", "rung"]))
        d, r = results["rec_nats"].to_numpy(float), results["kl_nats"].to_numpy(float)
        span = max(d.max() - d.min(), r.max() - r.min(), 10.0)
        d_lo, d_hi = d.min() - 0.1 * span, d.max() + 0.15 * span
        r_lo, r_hi = -0.06 * span, r.max() + 0.15 * span
        step = _nice_step((d_hi + r_hi - d_lo - r_lo) / 9)
        for c in np.arange(np.ceil((d_lo + r_lo) / step) * step, d_hi + r_hi, step):
            ax.plot([d_lo, d_hi], [c - d_lo, c - d_hi], color="0.78", lw=0.8, zorder=0)
            # label the isoline just inside where it enters the axes: top edge, else left edge
            at = (c - r_hi, r_hi) if c - r_hi >= d_lo else (d_lo, c - d_lo)
            if at[0] < d_hi - 0.04 * span and at[1] > r_lo + 0.04 * span:
                ax.annotate(f"{c:g}", at, textcoords="offset points", xytext=(3, -3), va="top",
                            ha="left", fontsize=7, color="0.4")
        zero = pd.Series(0.0, index=results.index)
        d_err = results.get("rec_nats_std", zero).fillna(0).to_numpy()
        r_err = results.get("kl_nats_std", zero).fillna(0).to_numpy()
        for i, name in enumerate(names):  # a legend, not labels: collapsed rungs crowd near R = 0
            st = styles[name]
            ax.errorbar(d[i], r[i], xerr=d_err[i], yerr=r_err[i], fmt=st["marker"], ms=8,
                        color=st["color"], capsize=3, zorder=3, label=name)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax.set_xlim(d_lo, d_hi)
        ax.set_ylim(r_lo, r_hi)
        ax.set_xlabel("distortion D = -E_q log p(x|z) (nats)")
        ax.set_ylabel("rate R = KL[q(z|x) || p(z)] (nats)")
        ax.set_title("Rate against distortion (grey lines: constant -ELBO = R + D, nats)")
    return fig


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, at least `raw`."""
    power = 10.0 ** np.floor(np.log10(max(raw, 1e-9)))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))


def k_convergence(curves: pd.DataFrame, names: list[str], side: set[str]) -> Figure:
    """NLL_IW (nats) against K, log x axis; left absolute, right relative to the largest K.

    curves: rung, k, nll_iw_nats, nll_iw_stderr_nats (mean over seeds).
    """
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(9.5, 4.2), layout="constrained")
        ax_abs, ax_rel = fig.subplots(1, 2)
        for name, st in rung_styles(names, side).items():
            c = curves[curves["rung"] == name].sort_values("k")
            nll = c["nll_iw_nats"].to_numpy()
            ax_abs.errorbar(c["k"], nll, yerr=c["nll_iw_stderr_nats"], ms=4, capsize=2,
                            label=name, **st)
            ax_rel.plot(c["k"], nll - nll[-1], ms=4, label=name, **st)
        for ax in (ax_abs, ax_rel):
            ax.set_xscale("log")
            ax.set_xlabel("importance samples K (log scale)")
        ax_abs.set_ylabel("test NLL, -log p(x) (nats)")
        ax_abs.set_title("IW estimate of -log p(x) against K")
        ax_rel.set_ylabel("NLL_IW(K) - NLL_IW(K_max) (nats)")
        ax_rel.set_title("Excess over the largest K (K = 1: one-sample -ELBO)")
        ax_rel.set_ylim(bottom=min(0.0, ax_rel.get_ylim()[0]))
        ax_rel.legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
    return fig


def image_grid(rows: dict[str, np.ndarray], title: str, inputs: np.ndarray | None = None) -> Figure:
    """Grey images of Bernoulli probabilities, one labelled row per rung.

    rows: rung -> (n,28,28) probabilities in [0,1]; inputs: (n,28,28) binary test digits drawn
    as the top row (for reconstructions).
    """
    labelled = ([("input x", inputs)] if inputs is not None else []) + list(rows.items())
    n = max(len(images) for _, images in labelled)
    with matplotlib.rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(0.62 * n + 2.6, 0.68 * len(labelled) + 0.9), layout="constrained")
        axes = np.atleast_1d(fig.subplots(len(labelled), 1))
        for ax, (label, images) in zip(axes, labelled):
            strip = _tile(np.asarray(images, dtype=np.float32), n)
            shown = ax.imshow(strip, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
        fig.colorbar(shown, ax=axes, shrink=min(1.0, 3.0 / len(labelled) + 0.3), pad=0.01,
                     label="p(pixel = 1)")
        fig.suptitle(title)
    return fig


def _tile(images: np.ndarray, n: int, pad: int = 2) -> np.ndarray:
    """(m,28,28) -> (28, n*(28+pad)-pad) strip; missing images are left blank (NaN)."""
    h, w = images.shape[1:]
    strip = np.full((h, n * (w + pad) - pad), np.nan, dtype=np.float32)
    for i, image in enumerate(images[:n]):
        strip[:, i * (w + pad):i * (w + pad) + w] = image
    return strip


def latent_kl(kl_sorted: np.ndarray, names: list[str], active: list[float]) -> Figure:
    """Heatmap of KL per latent dimension, each rung's dimensions sorted by KL.

    kl_sorted: (R,D) nats, row r = rung r's per-dimension KL in decreasing order (mean over
    seeds of the sorted profiles); active: active units per rung (mean over seeds).
    """
    with matplotlib.rc_context({**STYLE, "axes.grid": False}):
        n_rungs, dim = kl_sorted.shape
        fig = Figure(figsize=(max(6.5, 0.16 * dim + 4.0), 0.42 * n_rungs + 1.6), layout="constrained")
        ax = fig.subplots()
        floor = 1e-3
        top = max(float(np.nanmax(kl_sorted)), 10 * floor)
        shown = ax.imshow(np.clip(kl_sorted, floor, None), aspect="auto", cmap="magma",
                          norm=LogNorm(vmin=floor, vmax=top), interpolation="nearest")
        labels = [f"{name}  (AU {au:.3g}, KL {total:.{2 if total < 10 else 1}f})"
                  for name, au, total in zip(names, active, kl_sorted.sum(1))]
        ax.set_yticks(range(n_rungs), labels)
        ax.set_xlabel(f"latent dimension, sorted by its KL within each rung (of {dim})")
        ax.set_title("KL per latent dimension (AU: active units; KL: total, nats)")
        fig.colorbar(shown, ax=ax, pad=0.01, label=f"KL per dimension (nats, log; floor {floor:g})")
    return fig
