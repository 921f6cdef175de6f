"""The report's figures: one function per figure, plain data in, a matplotlib Figure out.

- `headline`: KL[q(z|x)||p(z)] and -log p(x) (IW, Burda et al. 2016) along the decoder-power
  axis, with each rung's decoder alone (its no-z twin, or independent pixels) beside it: the
  -log p(x) a collapsed VAE of that rung reaches;
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
    styles.update({n: {"color": BASELINE_COLOR, "ls": "--", "marker": "s"} for n in side})
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


def _rung_axis(ax, labels: list[str]) -> None:
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0,
                  ha="right" if len(labels) > 4 else "center", fontsize=8)
    ax.set_xlim(-0.5, len(labels) - 0.5)


def headline(results: pd.DataFrame, threshold: float) -> Figure:
    """KL and NLL_IW (nats) per rung, along the power axis (results are in power order).

    results: one row per rung with rung, role, receptive_field, kl_nats, kl_nats_std,
    nll_iw_nats, nll_iw_nats_std, nll_iw_stderr_nats, n_seeds, and, where a rung has a decoder
    alone, twin and nll_alone_nats / nll_alone_std. Error bars: std over seeds (none for one
    seed, where NLL_IW shows its standard error over test images). The trend rungs are joined
    by a line; side rungs (role other than "trend") are grey squares. A no-z rung that is some
    rung's twin is drawn at that rung (open squares), not as a point of its own.
    """
    twins = set(results["twin"].dropna()) if "twin" in results.columns else set()
    alone = (results["nll_alone_nats"].to_numpy(float) if "nll_alone_nats" in results.columns
             else np.full(len(results), np.nan))
    alone_err = (results["nll_alone_std"].fillna(0).to_numpy(float) if "nll_alone_std" in results.columns
                 else np.zeros(len(results)))
    shown = (~results["rung"].isin(twins)).to_numpy(bool)
    alone, alone_err, results = alone[shown], alone_err[shown], results[shown].reset_index(drop=True)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(9.5, 6.8), layout="constrained")
        ax_kl, ax_nll = fig.subplots(2, 1, sharex=True)
        labels = [f"{r.rung}\n(rf {r.receptive_field})" for r in results.itertuples()]
        x = np.arange(len(results))
        several = bool((results["n_seeds"] > 1).any())
        kl, nll = results["kl_nats"].to_numpy(float), results["nll_iw_nats"].to_numpy(float)
        kl_err = results["kl_nats_std"].fillna(0).to_numpy() if several else None
        nll_err = (results["nll_iw_nats_std"].fillna(0) if several
                   else results["nll_iw_stderr_nats"]).to_numpy()
        trend = (results["role"] == "trend").to_numpy(bool)
        has_z = (results["role"] != "no z").to_numpy(bool)
        side = has_z & ~trend

        ax_kl.errorbar(x[trend], kl[trend], yerr=None if kl_err is None else kl_err[trend], fmt="o-",
                       color="C0", ms=7, capsize=3, label="trend rungs (one z pathway)", zorder=2)
        if side.any():
            ax_kl.errorbar(x[side], kl[side], yerr=None if kl_err is None else kl_err[side], fmt="s",
                           color=BASELINE_COLOR, ms=7, capsize=3, label="side rungs (not in the trend)")
        for xi, value in zip(x[has_z], kl[has_z]):
            ax_kl.annotate(f"{value:.2f}" if value < 10 else f"{value:.1f}", (xi, value),
                           textcoords="offset points", xytext=(7, 5), ha="left", fontsize=8)
        ax_kl.axhline(threshold, color="C3", ls=":", lw=1, label=f"collapse threshold ({threshold:g} nats)")
        top = max(float(np.nanmax(kl[has_z])) if has_z.any() else 0.0, threshold) * 1.2
        ax_kl.set_ylim(-0.04 * top, top)
        ax_kl.set_ylabel("KL[q(z|x) || p(z)] (nats)")
        ax_kl.set_title("Information in z along the decoder-power axis")
        ax_kl.legend(loc="best")

        ax_nll.errorbar(x[trend], nll[trend], yerr=nll_err[trend], fmt="o-", color="C1", ms=6,
                        capsize=3, label="VAE, -log p(x) (IW)")
        if side.any():
            ax_nll.errorbar(x[side], nll[side], yerr=nll_err[side], fmt="s", color=BASELINE_COLOR,
                            ms=6, capsize=3)
        paired = ~np.isnan(alone)
        if paired.any():
            ax_nll.errorbar(x[paired], alone[paired], yerr=alone_err[paired], fmt="s--", mfc="white",
                            color=BASELINE_COLOR, ms=6, capsize=3,
                            label="its decoder alone (no-z twin, or independent pixels), exact")
        for row in results[~has_z].itertuples():  # a no-z rung that is nobody's twin
            spread = row.nll_iw_nats_std if several else row.nll_iw_stderr_nats
            ax_nll.axhline(row.nll_iw_nats, color=BASELINE_COLOR, ls="--", lw=1.2,
                           label=f"decoder alone ({row.rung})")
            ax_nll.axhspan(row.nll_iw_nats - spread, row.nll_iw_nats + spread, color=BASELINE_COLOR,
                           alpha=0.15, lw=0)
        ax_nll.set_ylabel("test NLL, -log p(x) (nats)")
        bars = "std over seeds" if several else "standard error over test images"
        ax_nll.set_title(f"Likelihood by importance sampling (error bars: {bars})")
        ax_nll.set_xlabel("rung, in order of decoder power (rf: causal receptive field, pixels)")
        if paired.any():  # the independent-pixel model sits far above every VAE: do not let it set the scale
            finite = np.concatenate([nll, alone[paired & (results["receptive_field"] > 0).to_numpy()]])
            lo, hi = float(np.nanmin(finite)), float(np.nanmax(np.concatenate([nll, finite])))
            ax_nll.set_ylim(lo - 0.08 * (hi - lo + 1), hi + 0.15 * (hi - lo + 1))
        ax_nll.legend(loc="best")
        _rung_axis(ax_nll, labels)
    return fig


def kl_vs_z_adds(results: pd.DataFrame, threshold: float) -> Figure:
    """KL (nats) against what z adds by IW (NLL of the decoder alone minus NLL_IW of the VAE,
    nats, paired per image), one point per trend rung, mean ± std over seeds. Filled: the VAE's
    ELBO beats the collapsed solution's; open: collapse is the better ELBO or within noise."""
    rows = results[(results["role"] == "trend") & results["z_adds_iw_nats"].notna()]
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7.5, 5.2), layout="constrained")
        ax = fig.subplots()
        styles = rung_styles(list(rows["rung"]), set())
        for r in rows.itertuples():
            open_marker = r.collapse != "the VAE's ELBO is better"
            ax.errorbar(r.z_adds_iw_nats, r.kl_nats, xerr=None if pd.isna(r.z_adds_iw_std) else r.z_adds_iw_std,
                        yerr=None if pd.isna(r.kl_nats_std) else r.kl_nats_std, fmt="o", ms=7, capsize=3,
                        color=styles[r.rung]["color"], mfc="white" if open_marker else styles[r.rung]["color"])
            ax.annotate(r.rung, (r.z_adds_iw_nats, r.kl_nats), textcoords="offset points",
                        xytext=(6, 4), fontsize=8)
        ax.axhline(threshold, color="C3", ls=":", lw=1, label=f"collapse threshold ({threshold:g} nats)")
        ax.axvline(0, color=BASELINE_COLOR, lw=1)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("what z adds: NLL of the decoder alone - NLL_IW of the VAE (nats, symlog scale)")
        ax.set_ylabel("KL[q(z|x) || p(z)] (nats)")
        ax.set_title("KL against what z adds, one point per rung (open: collapse is not the worse ELBO)")
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
        ax_kl.axhline(threshold, color="C3", ls=":", lw=1, label=f"collapse threshold ({threshold:g} nats)")
        ax_kl.set_ylabel("validation KL[q(z|x) || p(z)] (nats)")
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
