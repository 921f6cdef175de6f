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
Across seeds: the per-seed differences' mean and 95 % t interval (`stages.report.stats`, paired:
the VAE and its decoder alone share the seed and the test images); a difference is decided only
where that interval excludes 0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from stages.report import claims, stats
from stages.report.claims import Claim
from stages.errors import DataError
from stages.schema import to_plain

INDEPENDENT = "independent pixels"
BETTER, WORSE, TIE = "collapse is the better ELBO", "the VAE's ELBO is better", "unresolved"
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
            ci = stats.interval([d.mean() for d in diffs])
            row[f"{key}_lo"], row[f"{key}_hi"] = ci.lo, ci.hi
        row["collapse"] = collapse_word(stats.interval([d.mean() for d in elbo]))
        rows.append(row)
    return pd.DataFrame(rows)


def collapse_word(elbo_gap: stats.Interval) -> str:
    """Is the collapsed solution's ELBO (the decoder alone's log p(x)) above the VAE's? Decided
    where the paired 95 % interval of the VAE's ELBO minus the decoder alone's excludes 0."""
    return {"below": BETTER, "above": WORSE}.get(elbo_gap.side(0.0), TIE)


def interval_of(row, key: str) -> stats.Interval:
    """A z_adds row's paired interval over seed pairs for `key` (z_adds_iw, z_adds_elbo, nll_alone)."""
    return stats.Interval.of(getattr(row, f"{key}_nats"), getattr(row, f"{key}_std"), int(row.n_seed_pairs))


def _trend(z_adds: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The trend rungs' rows of z_adds, joined with their KL, power and verdict, weakest first."""
    cols = ["rung", "power", "receptive_field", "raster_share", "n_seeds", "kl_nats", "kl_nats_std", "verdict"]
    z_adds = z_adds.drop(columns=[c for c in cols if c != "rung" and c in z_adds.columns])
    trend = claims.trend_rungs(results)[[c for c in cols if c in results.columns]]
    return trend.merge(z_adds, on="rung").sort_values("power").reset_index(drop=True)


def _alone_label(row) -> str:
    return "independent pixels" if row.twin == INDEPENDENT else f"`{row.twin}`"


def what_z_adds(z_adds: pd.DataFrame, results: pd.DataFrame) -> Claim | None:
    """Rung by rung: NLL of the decoder alone minus NLL of the VAE, by IW and by the ELBO."""
    t = _trend(z_adds, results)
    if t.empty:
        return None
    side = {r.rung: interval_of(r, "z_adds_iw").side(0.0) for r in t.itertuples()}
    groups = {w: [r for r, sd in side.items() if sd == key] for w, key in (
        ("more likelihood with z", "above"), ("less", "below"), ("unresolved", "unresolved"))}
    rho, p = stats.spearman(t["z_adds_iw_nats"], t["kl_nats"]) if len(t) > 2 else (math.nan, math.nan)
    follows = ("" if pd.isna(rho) else
               f" KL against what z adds: Spearman's rho {rho:.2f}, exact p = {p:.3f} (n = {len(t)}).")
    text = ("What z adds by IW (NLL of the decoder alone minus the VAE's, paired; table 'What z adds, "
            "rung by rung'): " + "; ".join(f"{w} at {claims.backticked(g)}" for w, g in groups.items() if g)
            + "." + follows)
    return Claim("what_z_adds", text, {"rows": t.to_dict("records"), "spearman_rho_kl_z_adds": rho,
                                       "spearman_p": p})


def strength_claim(z_adds: pd.DataFrame, results: pd.DataFrame) -> Claim | None:
    """KL and what z adds against the NLL of the decoder alone (how well the decoder models the
    data without z), over the trend rungs: Spearman's rho with n and the exact permutation p."""
    t = _trend(z_adds, results)
    if len(t) < 3:
        return None
    kl_rho, kl_p = stats.spearman(t["nll_alone_nats"], t["kl_nats"])
    z_rho, z_p = stats.spearman(t["nll_alone_nats"], t["z_adds_iw_nats"])

    def words(rho: float, p: float) -> str:
        return "undefined" if pd.isna(rho) else f"rho {rho:.2f} (exact p = {p:.3f})"

    strongest = t.loc[t["nll_alone_nats"].idxmin()]
    text = (f"Against the decoder alone's NLL (its own strength; n = {len(t)} trend rungs), KL has "
            f"{words(kl_rho, kl_p)} and what z adds {words(z_rho, z_p)}: a positive rho means less "
            f"where the decoder alone is stronger. The strongest decoder alone, `{strongest.rung}`'s "
            f"({strongest.nll_alone_nats:.2f} nats), is not the largest receptive field's"
            if strongest.rung != t.iloc[-1].rung else
            f"Against the decoder alone's NLL (its own strength; n = {len(t)} trend rungs), KL has "
            f"{words(kl_rho, kl_p)} and what z adds {words(z_rho, z_p)}: a positive rho means less "
            f"where the decoder alone is stronger. The strongest decoder alone is the largest "
            f"receptive field's (`{strongest.rung}`, {strongest.nll_alone_nats:.2f} nats)")
    return Claim("strength", text + ".", {"n": len(t), "kl_rho": kl_rho, "kl_p": kl_p,
                                          "z_adds_rho": z_rho, "z_adds_p": z_p,
                                          "strongest_alone": strongest.rung})


def collapse_optimum(z_adds: pd.DataFrame, results: pd.DataFrame) -> Claim | None:
    """Where along the power axis ignoring z is the better ELBO (decided at 95 %), where the VAE's
    ELBO is, and where it is unresolved; the KL and what z adds at the strongest rung."""
    t = _trend(z_adds, results)
    if t.empty:
        return None
    groups = {word: list(t.loc[t["collapse"] == word, "rung"]) for word in (BETTER, WORSE, TIE)}
    top = t.iloc[-1]
    top_row = next(t.tail(1).itertuples())
    gain, elbo_gap = interval_of(top_row, "z_adds_iw"), interval_of(top_row, "z_adds_elbo")
    kl = claims.kl_interval(top)
    parts = [f"{words} at {claims.backticked(groups[word])}" for word, words in (
        (BETTER, "collapse (q = prior, the decoder alone) is the better ELBO"),
        (WORSE, "the VAE's ELBO is better"), (TIE, "it is unresolved")) if groups[word]]
    need = elbo_gap.seeds_to_resolve(0.0) if top.collapse == TIE else None
    text = ("Against the decoder alone (paired 95 % intervals): " + "; ".join(parts)
            + f". At the top, `{top.rung}`, z adds {gain.text()} nats by IW and {elbo_gap.text()} by the ELBO"
            + (f" (for the ELBO comparison, {stats.seed_word(need)})" if top.collapse == TIE else "") + ".")
    return Claim("collapse_optimum", text, {
        "better": groups[BETTER], "worse": groups[WORSE], "unresolved": groups[TIE],
        "first_rung": groups[BETTER][0] if groups[BETTER] else None, "top_rung": top.rung,
        "top_collapse": top.collapse, "top_kl": kl.plain(), "top_verdict": top.verdict,
        "top_z_adds_iw": gain.plain(), "top_z_adds_elbo": elbo_gap.plain(),
        "top_seeds_to_resolve": need,
        "top_iw_seeds_to_resolve": gain.seeds_to_resolve(0.0) if gain.side(0.0) == "unresolved" else None})
