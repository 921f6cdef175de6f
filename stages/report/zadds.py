"""What z adds at every rung: each VAE against the decoder it would collapse to.

A VAE whose q(z|x) equals the prior and whose decoder ignores z (posterior collapse) is inside
its own model family; its ELBO is then exactly the log-likelihood of that decoder alone. So at
every rung the report pairs the VAE with its decoder alone:

- an autoregressive rung with its twin: the params entry of the same family and decoder options
  with `conditional: false` (trained and evaluated like every rung). Without z, E_q[log p(x|z)]
  is the twin's exact log p(x) (evaluate writes it per image as `log_px_given_z_nats`);
- a factorized rung with independent Bernoulli pixels at the training pixel means
  (`log_px_independent_nats`, written by evaluate): without z, pixels given nothing are
  independent, and the training means are that model's maximum-likelihood fit.

Per seed (the VAE of seed s beside the twin of seed s), paired over the same test images:

    z adds (IW)   = mean_x [log p^_K_VAE(x) - log p_alone(x)]  = NLL alone - NLL_IW of the VAE
    z adds (ELBO) = mean_x [ELBO_VAE(x)     - log p_alone(x)]  = NLL alone - (-ELBO) of the VAE

The second is negative exactly where the collapsed solution is the better ELBO: there ignoring
z is what the objective prefers, and KL > 0 is kept by optimization, not by the objective.
Across seeds: mean ± std (ddof 1); a difference counts only beyond max(two seed std, two
per-image standard errors).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from stages.report import claims
from stages.report.claims import Claim, pm
from stages.errors import DataError
from stages.schema import to_plain

INDEPENDENT = "independent pixels"
BETTER, WORSE, TIE = "collapse is the better ELBO", "the VAE's ELBO is better", "within noise"
IGNORED = ("conditional", "z_pathway")  # what a decoder-alone twin may differ in


def twin_of(name: str, decoders: dict[str, Any], uses_z: dict[str, bool]) -> str | None:
    """The no-z rung with the same family and decoder options as `name` (None if there is none)."""
    def key(r: str) -> tuple[str, dict]:
        options = {k: v for k, v in to_plain(decoders[r].decoder).items() if k not in IGNORED}
        return decoders[r].family, options

    return next((r for r in decoders if r != name and not uses_z[r] and key(r) == key(name)), None)


def seed_stats(per_seed: list[np.ndarray]) -> tuple[float, float, float]:
    """mean over seeds of the per-image mean, its std over seeds, and the mean standard error."""
    means = np.array([d.mean() for d in per_seed])  # (S,)
    se = np.mean([d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else math.nan for d in per_seed])
    return float(means.mean()), float(means.std(ddof=1)) if len(means) > 1 else math.nan, float(se)


def z_adds_table(data, results: pd.DataFrame) -> pd.DataFrame:
    """One row per rung with z that has a decoder alone, in order of power."""
    decoders, seeds = data.params.decoders, data.params.seeds
    uses_z = dict(zip(results["rung"], results["uses_z"].astype(bool)))
    rows = []
    for r in results.itertuples():
        if not r.uses_z:
            continue
        twin = twin_of(r.rung, decoders, uses_z) if r.receptive_field > 0 else INDEPENDENT
        if twin is None:
            continue
        iw, elbo, alone = [], [], []
        for s in seeds:
            a = data.runs[(r.rung, s)].per_image
            if twin == INDEPENDENT:
                log_alone = a["log_px_independent_nats"].to_numpy(float)  # (N,)
            else:
                b = data.runs[(twin, s)].per_image
                if not np.array_equal(a["test_index"].to_numpy(), b["test_index"].to_numpy()):
                    raise DataError(f"report: `{r.rung}` and `{twin}` (seed {s}) were evaluated on "
                                    "different test images; rerun their evaluate stages (`dvc repro`)")
                log_alone = b["log_px_given_z_nats"].to_numpy(float)  # (N,) exact without z
            iw.append(a["log_px_iw_nats"].to_numpy(float) - log_alone)
            elbo.append(a["elbo_nats"].to_numpy(float) - log_alone)
            alone.append(-log_alone)
        row: dict[str, Any] = {"rung": r.rung, "twin": twin, "n_seed_pairs": len(seeds),
                               "n_images": int(min(len(d) for d in iw))}
        for key, diffs in (("nll_alone", alone), ("z_adds_iw", iw), ("z_adds_elbo", elbo)):
            row[f"{key}_nats"], row[f"{key}_std"], row[f"{key}_se"] = seed_stats(diffs)
        row["collapse"] = collapse_word(row["z_adds_elbo_nats"], row["z_adds_elbo_std"], row["z_adds_elbo_se"])
        rows.append(row)
    return pd.DataFrame(rows)


def noise(std: float, se: float) -> float:
    return max(2 * std if not pd.isna(std) else 0.0, 2 * se if not pd.isna(se) else 0.0)


def collapse_word(elbo_gap: float, std: float, se: float) -> str:
    """Is the collapsed solution's ELBO (the decoder alone's log p(x)) above the VAE's?"""
    if abs(elbo_gap) <= noise(std, se):
        return TIE
    return WORSE if elbo_gap > 0 else BETTER


def _trend(z_adds: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The trend rungs' rows of z_adds, joined with their KL, power and verdict, weakest first."""
    cols = ["rung", "power", "receptive_field", "raster_share", "kl_nats", "kl_nats_std", "verdict"]
    trend = claims.trend_rungs(results)[[c for c in cols if c in results.columns]]
    return trend.merge(z_adds, on="rung").sort_values("power").reset_index(drop=True)


def _alone_label(row) -> str:
    return "independent pixels" if row.twin == INDEPENDENT else f"`{row.twin}`"


def what_z_adds(z_adds: pd.DataFrame, results: pd.DataFrame) -> Claim | None:
    """Rung by rung: NLL of the decoder alone minus NLL of the VAE, by IW and by the ELBO."""
    t = _trend(z_adds, results)
    if t.empty:
        return None
    parts = [f"`{r.rung}` {pm(r.z_adds_iw_nats, r.z_adds_iw_std)} by IW, "
             f"{pm(r.z_adds_elbo_nats, r.z_adds_elbo_std)} by the ELBO (alone: {_alone_label(r)}; {r.collapse})"
             for r in t.itertuples()]
    rho = claims.spearman(t["z_adds_iw_nats"], t["kl_nats"]) if len(t) > 2 else math.nan
    follows = ("" if pd.isna(rho) else
               f" KL against what z adds by IW over these {len(t)} rungs: Spearman's rho {rho:.2f}.")
    text = ("What z adds, paired per test image and seed by seed (NLL of the decoder alone minus NLL "
            "of the VAE, nats, mean ± std over seed pairs; negative by the ELBO where the collapsed "
            "solution, q = prior and the decoder alone, is the better ELBO; a difference counts only "
            "beyond two seed std and two per-image standard errors), in order of power: "
            + "; ".join(parts) + "." + follows)
    return Claim("what_z_adds", text, {"rows": t.to_dict("records"), "spearman_rho_kl_z_adds": rho})


def collapse_optimum(z_adds: pd.DataFrame, results: pd.DataFrame, threshold: float) -> Claim | None:
    """Where along the power axis ignoring z becomes the better ELBO, and the KL kept there."""
    t = _trend(z_adds, results)
    if t.empty:
        return None
    better = t[t["collapse"] == BETTER]
    share = "raster_share" in t.columns

    def power_words(row) -> str:
        return (f"receptive field {int(row.receptive_field)} pixels"
                + (f", {100 * row.raster_share:.0f}% of the 28x28 raster past" if share else ""))

    if better.empty:
        top = t.iloc[-1]
        worse, ties = t[t["collapse"] == WORSE], t[t["collapse"] == TIE]
        parts = ([f"the VAE's ELBO beats the decoder alone's log-likelihood beyond noise at "
                  f"{claims._names(worse['rung'])}"] if len(worse) else []) + \
                ([f"the two are within noise of each other at {claims._names(ties['rung'])}"] if len(ties) else [])
        text = ("Collapse is not the ELBO's optimum beyond noise at any rung of the power axis: "
                + "; ".join(parts) + f". At the strongest rung `{top.rung}` ({power_words(top)}) z adds "
                f"{pm(top.z_adds_iw_nats, top.z_adds_iw_std)} nats by IW and "
                f"{pm(top.z_adds_elbo_nats, top.z_adds_elbo_std)} by the ELBO (mean ± std over "
                f"{int(top.n_seed_pairs)} seed pair{'s' if top.n_seed_pairs != 1 else ''}), and the VAE "
                f"keeps {pm(top.kl_nats, top.kl_nats_std)} nats of KL ({top.verdict} by the 2-std rule "
                f"against the collapse threshold of {threshold:g} nats).")
        return Claim("collapse_optimum", text, {"first_rung": None, "rungs": [], "top_rung": top.rung,
                                                "within_noise": list(ties["rung"])})
    first = better.iloc[0]
    above = t[t["power"] > first.power]
    exceptions = above[above["collapse"] != BETTER]
    kept = better[["rung", "kl_nats", "kl_nats_std", "verdict"]].to_dict("records")
    verdict_words = {
        claims.COLLAPSED: "collapsed",
        claims.KEPT: "above it: the trained VAE does not reach the optimum the ELBO prefers",
        claims.BORDERLINE: "borderline: within two seed std of it, no verdict",
        claims.ONE_SEED: "no verdict with one seed",
    }
    listed = "; ".join(f"`{r['rung']}` {pm(r['kl_nats'], r['kl_nats_std'])} nats "
                       f"({verdict_words.get(r['verdict'], r['verdict'])})" for r in kept)
    text = (f"Collapse becomes the ELBO's optimum at `{first.rung}` ({power_words(first)}): there the "
            f"decoder alone ({_alone_label(first)}) scores a higher log-likelihood than the VAE's "
            f"ELBO, by {pm(-first.z_adds_elbo_nats, first.z_adds_elbo_std)} nats per image (paired, "
            f"{int(first.n_seed_pairs)} seed pair{'s' if first.n_seed_pairs != 1 else ''})"
            + (", and so at every stronger rung" if exceptions.empty and len(above) else
               f", but not at the stronger {claims._names(exceptions['rung'])}" if len(exceptions) else "")
            + f". Where collapse is the better ELBO the trained VAEs keep KL of {listed}, against the "
            f"collapse threshold of {threshold:g} nats by the 2-std rule.")
    return Claim("collapse_optimum", text, {
        "first_rung": first.rung, "rungs": list(better["rung"]), "exceptions_above": list(exceptions["rung"]),
        "elbo_gain_of_collapse_nats": -first.z_adds_elbo_nats, "kept": kept})


def _moved(before: float, before_std: float, after: float, after_std: float) -> tuple[str, float]:
    """How a mean moved between two studies: beyond two combined seed std, or within it."""
    spread = 2 * math.hypot(before_std, after_std)
    if pd.isna(spread):
        return "cannot be judged (one seed: no spread)", spread
    if abs(after - before) <= spread:
        return "held (within two combined seed std)", spread
    return ("grew" if after > before else "shrank") + " beyond two combined seed std", spread


def top_with_training(results: pd.DataFrame, baseline: pd.DataFrame, label: str) -> Claim | None:
    """At the strongest trend rung both studies share: did the KL kept, and what z adds, shrink,
    hold or grow from the baseline to this study (trained and evaluated differently)?"""
    t, theirs = claims.trend_rungs(results).sort_values("power"), baseline.set_index("rung")
    shared = [r for r in t["rung"] if r in theirs.index and bool(theirs.loc[r, "uses_z"])]
    if not shared:
        return None
    top = shared[-1]
    a, b = theirs.loc[top], results.set_index("rung").loc[top]
    kl_word, _ = _moved(a["kl_nats"], a["kl_nats_std"], b["kl_nats"], b["kl_nats_std"])
    parts = [f"the KL the VAE keeps {kl_word}: {pm(a['kl_nats'], a['kl_nats_std'])} -> "
             f"{pm(b['kl_nats'], b['kl_nats_std'])} nats"]
    numbers: dict[str, Any] = {"rung": top, "kl_change": kl_word.split(" ")[0],
                               "kl_nats": [a["kl_nats"], b["kl_nats"]]}
    for key, words in (("z_adds_iw", "what z adds by IW"), ("z_adds_elbo", "by the ELBO")):
        if f"{key}_nats" in theirs.columns and f"{key}_nats" in b.index and not pd.isna(a[f"{key}_nats"]) \
                and not pd.isna(b[f"{key}_nats"]):
            word, _ = _moved(a[f"{key}_nats"], a[f"{key}_std"], b[f"{key}_nats"], b[f"{key}_std"])
            parts.append(f"{words} {word}: {pm(a[f'{key}_nats'], a[f'{key}_std'])} -> "
                         f"{pm(b[f'{key}_nats'], b[f'{key}_std'])} nats")
            numbers[f"{key}_change"] = word.split(" ")[0]
            numbers[f"{key}_nats"] = [a[f"{key}_nats"], b[f"{key}_nats"]]
    if "collapse" in theirs.columns and isinstance(a.get("collapse"), str) and isinstance(b.get("collapse"), str):
        parts.append(f"collapse against the VAE's own ELBO: {a['collapse']} -> {b['collapse']}")
    text = (f"At the top of the power axis, `{top}`, from the baseline ({label}) to this study "
            "(mean ± std over seeds): " + "; ".join(parts) + ".")
    return Claim("top_with_training", text, numbers)
