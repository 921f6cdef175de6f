"""The report's findings as data: named claims computed from the results tables, then rendered.

The study tests one claim: with the same spatial z pathway into every autoregressive rung, the
information a VAE keeps in z (KL[q(z|x) || p(z)], nats) falls as the power of the decoder's
autoregressive part (its causal receptive field) grows. Every claim here is a statistic over
the rungs ordered by that power measure, with its spread over seeds, computed from:

- `results`: one row per rung (stages.report.tables.summarize): rung, role, power, receptive_field,
  n_seeds, and per metric its mean and `<metric>_std` over seeds;
- `per_seed`: rung, seed, kl_nats (one row per run), for statistics computed seed by seed;
- `history`: rung, seed, epoch, images_seen, valid_kl_nats, valid_elbo_nats (training);
- `k_curves`: rung, k, nll_iw_nats (mean over seeds).

Roles (stages.params.Rung.role): `trend` rungs are the points of the power axis; `comparison` (z as a
per-channel bias), `mitigated` (KL warm-up, free bits) and `no z` (the decoder alone) rungs are
shown but are never a point of the trend or the strongest rung.

Every comparison follows the one rule of `stages.report.stats`: a 95 % Student-t interval over
seeds (Welch's for two groups of seeds, paired where pairs exist), decided only where the
interval excludes the value compared with, else "unresolved" with the seeds that would resolve
it; trends are Spearman's rho with n and the exact permutation p.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from stages.report import stats
from stages.params import COMPARISON, MITIGATED, NO_Z, TREND  # noqa: F401  (the roles, used here and by page)

COLLAPSED, KEPT, UNRESOLVED, NOT_APPLICABLE, ONE_SEED = (
    "collapsed", "not collapsed", "unresolved", "n/a (no z)", "no verdict (one seed)")
CHANCE = 0.1  # probe accuracy of a z that says nothing about the digit (10 classes)
MI_BOUND_MARGIN = 0.5  # an MI estimate within this many nats of log M is only a lower bound
LAST_EPOCHS = 3  # the ordering along the power axis must hold over this many final epochs


@dataclass(frozen=True)
class Claim:
    name: str
    text: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def plain(self) -> dict[str, Any]:
        """JSON-ready: numpy scalars as Python numbers, NaN as null."""
        def conv(v: Any) -> Any:
            if isinstance(v, dict):
                return {str(k): conv(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [conv(x) for x in v]
            if hasattr(v, "item"):
                v = v.item()
            return None if isinstance(v, float) and math.isnan(v) else v

        return {"text": self.text, "numbers": conv(self.numbers)}


def pm(mean: float, std: float, digits: int = 2, unit: str = "") -> str:
    """'mean ± std unit', or the mean alone when the spread is unknown (one seed); never '-0.00'."""
    mean = 0.0 if round(mean, digits) == 0 else mean
    body = f"{mean:.{digits}f}" if pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"
    return body + unit


def kl_interval(row) -> stats.Interval:
    """A results row's KL over its seeds: the 95 % t interval."""
    return stats.Interval.of(row["kl_nats"], row["kl_nats_std"], int(row["n_seeds"]))


def kl_floor_nats(objective, latent_dim: int) -> float:
    """The rate an objective forces whatever z carries: free bits' lambda per latent dimension
    (Kingma et al. 2016), 0 for every other objective. Where it is above 0, the KL is not
    information kept, and the report judges information by the MI."""
    return objective.free_bits * latent_dim


def verdict_interval(row) -> stats.Interval:
    """The interval a row's verdict is decided on: its KL's, its MI's where free bits floor the KL."""
    by = row.get("verdict_by", "kl")
    return stats.Interval.of(row[f"{by}_nats"], row[f"{by}_nats_std"], int(row["n_seeds"]))


def verdict(mean: float, std: float, n_seeds: int, threshold: float, uses_z: bool) -> str:
    """Collapsed / not collapsed only when the 95 % interval over seeds excludes the threshold."""
    if not uses_z:
        return NOT_APPLICABLE
    if n_seeds < 2 or pd.isna(std):
        return ONE_SEED
    side = stats.Interval.of(mean, std, n_seeds).side(threshold)
    return {"below": COLLAPSED, "above": KEPT}.get(side, UNRESOLVED)


def trend_rungs(results: pd.DataFrame) -> pd.DataFrame:
    """The points of the power axis, weakest first."""
    return results[results["role"] == TREND].sort_values("power")


def backticked(rungs) -> str:
    """'`a`, `b`': names in backticks, for prose."""
    return ", ".join(f"`{r}`" for r in rungs)


def steps(trend: pd.DataFrame, column: str = "kl_nats") -> list[dict[str, Any]]:
    """The steps up the power axis between consecutive receptive fields (rungs of equal field
    are ties, one group): each with the Welch interval of every pairwise change and its word,
    'falls' / 'rises' only when every pair's interval says so, else 'flat'."""
    groups = [g for _, g in trend.groupby("receptive_field", sort=True)]
    out = []
    for lo, hi in zip(groups, groups[1:]):
        changes = [stats.difference(stats.Interval.of(b[column], b[f"{column}_std"], int(b["n_seeds"])),
                                    stats.Interval.of(a[column], a[f"{column}_std"], int(a["n_seeds"])))
                   for _, a in lo.iterrows() for _, b in hi.iterrows()]
        words = {stats.step_word(c) for c in changes}
        word = words.pop() if len(words) == 1 else "undecided" if "undecided" in words else "flat"
        out.append({"from": list(lo["rung"]), "to": list(hi["rung"]), "word": word,
                    "change": changes[0] if len(changes) == 1 else None,
                    "from_field": int(lo["receptive_field"].iloc[0]),
                    "to_field": int(hi["receptive_field"].iloc[0])})
    return out


def tie_group(names: list[str]) -> str:
    """'`a`/`b`': rungs of one receptive field, a tie."""
    return "/".join(f"`{r}`" for r in names)


def step_phrases(walk: list[dict[str, Any]], said: dict[str, str]) -> str:
    """The steps grouped by word, in the order of `said` (word -> verb phrase): 'falls at `a` ->
    `b`, `b` -> `c`; it is flat at `c` -> `d`/`e`'."""
    return "; it ".join(f"{verb} " + ", ".join(f"{tie_group(w['from'])} -> {tie_group(w['to'])}"
                                               for w in walk if w["word"] == word)
                        for word, verb in said.items() if any(w["word"] == word for w in walk))


def power_trend(results: pd.DataFrame, per_seed: pd.DataFrame) -> Claim | None:
    """KL along the power axis: Spearman's rho over the receptive field (ties averaged) with n
    and its exact permutation p, and each step's 95 % interval."""
    trend = trend_rungs(results)
    if len(trend) < 3:
        return None
    rho, p = stats.spearman(trend["receptive_field"], trend["kl_nats"])
    walk = steps(trend)
    words = [w["word"] for w in walk]
    top_flat = bool(walk) and walk[-1]["word"] == "flat"
    ties = [list(g["rung"]) for _, g in trend.groupby("receptive_field") if len(g) > 1]
    said = {"falls": "falls at", "flat": "is flat at", "rises": "rises at",
            "undecided": "is undecided (one seed) at"}
    text = ("KL along the receptive field: Spearman's rho "
            + ("undefined" if pd.isna(rho) else f"{rho:.2f}, exact p = {p:.3f}") + f" (n = {len(trend)}). "
            + "It " + step_phrases(walk, said)
            + (f"; {', '.join(tie_group(t) for t in ties)} share a receptive field: a tie, not an order"
               if ties else "")
            + "." + (" KL plateaus at the top." if top_flat else "") + " (95 % intervals: the table of steps.)")
    return Claim("power_trend", text, {
        "spearman_rho": rho, "spearman_p": p, "n_rungs": len(trend), "step_words": words,
        "steps": [{**{k: v for k, v in w.items() if k != "change"},
                   "change": w["change"].plain() if w["change"] is not None else None} for w in walk],
        "plateau_at_top": top_flat, "falls_everywhere": all(w == "falls" for w in words),
        "first_rung": trend.iloc[0]["rung"], "top_rung": trend.iloc[-1]["rung"]})


def kl_gone_at_top(results: pd.DataFrame, per_seed: pd.DataFrame) -> Claim | None:
    """Share of the factorized rungs' mean KL that is gone at the strongest trend rung."""
    trend = trend_rungs(results)
    factorized, top = trend[trend["receptive_field"] == 0], trend.iloc[-1] if len(trend) else None
    if top is None or factorized.empty or top["receptive_field"] == 0:
        return None
    shares = []
    for s in sorted(per_seed["seed"].unique()):
        kl = per_seed[per_seed["seed"] == s].set_index("rung")["kl_nats"]
        if set(factorized["rung"]) | {top["rung"]} <= set(kl.index):
            base = kl[factorized["rung"]].mean()
            shares.append(1 - kl[top["rung"]] / base if base > 0 else math.nan)
    share = stats.interval([100 * v for v in shares])
    base_mean = factorized["kl_nats"].mean()
    text = (f"At the strongest rung `{top['rung']}` (receptive field {int(top['receptive_field'])} "
            f"pixels) KL is {kl_interval(top).text()} nats against {base_mean:.2f} nats, the mean of "
            f"the factorized rungs ({backticked(factorized['rung'])}): {share.text(1)}% of it is gone "
            "(the share computed seed by seed).")
    return Claim("kl_gone_at_top", text, {"top_rung": top["rung"], "share_gone_percent": share.plain(),
                                          "factorized_kl_nats": base_mean})


def verdicts(results: pd.DataFrame, threshold: float) -> Claim:
    """Which rungs collapsed, which kept z, which are unresolved, by the 95 % interval."""
    ordered = results.sort_values("power")
    groups = {v: ordered[ordered["verdict"] == v] for v in (COLLAPSED, KEPT, UNRESOLVED, ONE_SEED)}
    parts = []
    for v, label in ((COLLAPSED, "collapsed"), (KEPT, "kept information in z"),
                     (UNRESOLVED, "unresolved (the interval contains the threshold)"),
                     (ONE_SEED, "without a verdict (one seed gives no interval)")):
        g = groups[v]
        if len(g):
            listed = ", ".join(f"`{r.rung}`" + (
                f" ({stats.seed_word(verdict_interval(r._asdict()).seeds_to_resolve(threshold))})"
                if v == UNRESOLVED else "") for r in g.itertuples())
            parts.append(f"{label}: {listed}")
    by_mi = list(ordered.loc[ordered["verdict_by"] == "mi", "rung"]) if "verdict_by" in ordered else []
    text = (f"Collapse verdicts, KL < {stats.nats_word(threshold)} by the 95 % interval over seeds"
            + (f" (MI for {backticked(by_mi)}, whose KL free bits floor)" if by_mi else "")
            + " (in the results table): " + "; ".join(parts) + ".")
    return Claim("verdicts", text, {v: list(g["rung"]) for v, g in groups.items()})


def pathway(results: pd.DataFrame) -> list[Claim]:
    """Rungs that differ only in how z reaches the decoder, side by side."""
    out = []
    configs = {r.rung: json.loads(r.config) for r in results.itertuples()}
    by_name = results.set_index("rung")
    for name, cfg in configs.items():
        if cfg.get("z_pathway") != "bias" or not cfg.get("conditional", True):
            continue
        twin = next((n for n, c in configs.items() if n != name
                     and c == {**cfg, "z_pathway": "spatial"}), None)
        if twin is None:
            continue
        a, b = by_name.loc[name], by_name.loc[twin]
        change = stats.difference(kl_interval(b), kl_interval(a))
        side = change.side(0.0)
        text = (f"How z enters: with z as a per-channel bias `{name}` keeps {kl_interval(a).text()} "
                f"nats of KL; with the spatial pathway `{twin}` keeps {kl_interval(b).text()}; the "
                f"difference, {change.text()} nats, is "
                + ("decided" if side != "unresolved" else "unresolved") + " at 95 %.")
        out.append(Claim(f"pathway_{name}", text, {"bias_rung": name, "spatial_rung": twin,
                                                   "kl_difference": change.plain(),
                                                   "decided": side != "unresolved"}))
    return out


def training_order(results: pd.DataFrame, history: pd.DataFrame) -> Claim | None:
    """Does the ordering of KL along the power axis change with training?

    Over the last LAST_EPOCHS epochs, a pair of trend rungs is *clearly ordered* at an epoch when
    the 95 % Welch interval of their mean validation KL's difference excludes 0; the ordering is stable
    when no pair that is clearly ordered at some epoch of that window is reversed at another.
    Pairs never clearly ordered are ties within seed spread, whichever way their means fall.
    """
    trend = trend_rungs(results)
    if len(trend) < 2 or history.empty:
        return None
    h = history[history["rung"].isin(trend["rung"])]
    runs_per_rung = h.groupby("rung")["seed"].nunique()  # (rungs,)
    reached = h.groupby(["epoch", "rung"])["seed"].nunique().unstack("rung")  # (epochs, rungs)
    complete = reached.index[(reached == runs_per_rung[reached.columns]).all(axis=1)]
    ragged = complete.size < reached.index.size  # early stopping ended runs at different epochs
    h = h[h["epoch"].isin(complete)]  # a mean over the runs still training would be biased
    grouped = h.groupby(["epoch", "rung"])["valid_kl_nats"]
    mean = grouped.mean().unstack("rung").dropna()  # (epochs, rungs)
    std = grouped.std(ddof=1).unstack("rung").reindex(mean.index).fillna(0.0)
    if mean.empty:
        return None
    names = list(trend["rung"])
    mean, std = mean[names], std[names]
    epochs = list(mean.index)
    orders = {e: tuple(mean.loc[e].sort_values(ascending=False).index) for e in epochs}
    rhos = {e: stats.spearman(trend["receptive_field"], mean.loc[e].to_numpy())[0] for e in epochs}
    changes = sum(orders[a] != orders[b] for a, b in zip(epochs, epochs[1:]))
    last = epochs[-LAST_EPOCHS:]
    reversed_pairs, ties = [], []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diff = mean.loc[last, a] - mean.loc[last, b]  # (epochs,)
            clear = pd.Series([stats.difference(
                stats.Interval.of(mean.loc[e, a], std.loc[e, a], int(runs_per_rung[a])),
                stats.Interval.of(mean.loc[e, b], std.loc[e, b], int(runs_per_rung[b]))).side() != "unresolved"
                for e in last], index=last)
            signs = set(diff[diff != 0].apply(lambda d: d > 0))
            if clear.any() and len(signs) > 1:
                reversed_pairs.append((a, b))
            elif not clear.any() and len(signs) > 1:
                ties.append((a, b))
    stable = not reversed_pairs and len(last) > 1
    span = f"epochs {last[0]}-{last[-1]}"
    reach = (f", the epochs every run of a trend rung reached before it stopped (they end between epoch "
             f"{epochs[-1]} and {int(reached.index.max())})" if ragged else "")
    text = (f"Training length: over epochs {epochs[0]}-{epochs[-1]}{reach}, rho between receptive field "
            f"and mean validation KL is {rho_span(rhos, len(names))}; the order of the rungs "
            f"{times(changes, 'changes')}. ")
    if len(last) < 2:
        text += f"The schedule is too short to test stability ({len(last)} epoch)."
    elif stable:
        text += (f"Over {span} no two rungs whose KL differ at 95 % trade places: the order is stable"
                 + (f"; {pairs(ties)} swap within their intervals, a tie." if ties else "."))
    else:
        text += (f"Over the last {len(last)} epochs ({span}) the ordering is NOT stable: "
                 f"{pairs(reversed_pairs)} trade places after differing at 95 %; "
                 "the conclusion depends on the training length.")
    return Claim("training_order", text, {"stable_over_last_epochs": stable,
                                          "rho_per_epoch": [rhos[e] for e in epochs],
                                          "n_order_changes": changes,
                                          "reversed_pairs": reversed_pairs, "ties": ties})


def rho_span(rhos: dict[int, float], n_rungs: int) -> str:
    """Spearman's rho over epochs, in words: one value where every epoch gives it (to 2 decimals)."""
    values = [v for v in rhos.values() if not pd.isna(v)]
    if not values:
        return (f"not computed ({n_rungs} trend rungs: a rank correlation needs at least 3)" if n_rungs < 3
                else "undefined in every epoch (tied KL)")
    low, high, last = (f"{v:.2f}" for v in (min(values), max(values), values[-1]))
    return f"{low} at every epoch" if low == high else f"between {low} and {high}, {last} at the last"


def times(n: int, verb: str) -> str:
    """'never changes', 'changes once', 'changes 3 times'."""
    return f"never {verb}" if n == 0 else f"{verb} once" if n == 1 else f"{verb} {n} times"


def kl_slope(results: pd.DataFrame, history: pd.DataFrame) -> Claim | None:
    """Is KL still moving when training stops? Per trend rung, the least-squares slope of the
    validation KL over each run's last LAST_EPOCHS epochs (nats per epoch), 95 % interval over
    seeds: 'still rising' only where the interval is above 0."""
    trend = trend_rungs(results)
    rows = []
    for r in trend.itertuples():
        slopes = []
        for _, run in history[history["rung"] == r.rung].groupby("seed"):
            last = run.sort_values("epoch").tail(LAST_EPOCHS)
            if len(last) >= 2:
                slopes.append(float(np.polyfit(last["epoch"], last["valid_kl_nats"], 1)[0]))
        if slopes:
            rows.append((r.rung, stats.interval(slopes)))
    if not rows:
        return None
    rising = [name for name, i in rows if i.side() == "above"]
    falling = [name for name, i in rows if i.side() == "below"]
    text = (f"At the end of training (the slope of validation KL over each run's last {LAST_EPOCHS} "
            "epochs, 95 % interval over seeds), "
            + (f"KL is still rising at {backticked(rising)}: not at a steady state" if rising else
               "no rung's KL is still rising decidedly")
            + (f"; still falling at {backticked(falling)}" if falling else "") + ".")
    return Claim("kl_slope", text.strip(), {"slopes": {name: i.plain() for name, i in rows},
                                            "rising": rising, "falling": falling})


def convergence(runs: pd.DataFrame, results: pd.DataFrame, patience: int | None,
                min_delta: float, cap: int) -> Claim | None:
    """How long each rung trained under early stopping, and which runs the epoch cap ended.

    `runs`: rung, seed, epochs_trained, best_epoch, converged (one row per run). Without a
    patience there is no convergence criterion: every run trains the fixed schedule."""
    if patience is None or runs.empty:
        return None
    order = [r for r in results.sort_values("power")["rung"] if r in set(runs["rung"])]
    g = runs.groupby("rung")
    best, trained = g["best_epoch"], g["epochs_trained"]
    capped = runs[~runs["converged"].astype(bool)]
    n, n_conv = len(runs), int(runs["converged"].astype(bool).sum())
    text = (f"Convergence: {n_conv} of {n} runs met the stopping rule before the {cap}-epoch cap; "
            f"runs trained {int(trained.min().min())}-{int(trained.max().max())} epochs (per rung: the "
            "convergence table). ")
    if capped.empty:
        text += "No run was stopped by the cap."
    else:
        text += (f"The cap ended {capped_runs(capped, runs, order)}: their validation ELBO was still "
                 "rising, so their KL is the value at the cap, not at convergence.")
    return Claim("convergence", text, {
        "patience": patience, "min_delta_nats": min_delta, "epoch_cap": cap,
        "n_runs": n, "n_converged": n_conv,
        "best_epoch_mean": {r: best.mean()[r] for r in order},
        "best_epoch_std": {r: best.std(ddof=1)[r] for r in order},
        "epochs_trained_mean": {r: trained.mean()[r] for r in order},
        "capped_runs": [(r.rung, int(r.seed)) for r in capped.itertuples()]})


def capped_runs(capped: pd.DataFrame, runs: pd.DataFrame, order: list[str], most: int = 6) -> str:
    """The runs the cap ended, by rung: 'every seed of `a`, `b`; seed 2 of `c`'; past `most` rungs,
    only their count (the convergence table names them)."""
    seeds = capped.groupby("rung")["seed"].apply(sorted)
    every = [r for r in order if r in seeds.index and len(seeds[r]) == (runs["rung"] == r).sum()]
    some = [r for r in order if r in seeds.index and r not in every]
    if len(every) + len(some) > most:
        return f"{len(capped)} runs of {len(every) + len(some)} rungs"
    parts = ([f"every seed of {backticked(every)}"] if every else []) + [
        f"seed{'s' if len(seeds[r]) > 1 else ''} {', '.join(map(str, seeds[r]))} of `{r}`" for r in some]
    return "; ".join(parts)


def pairs(rung_pairs: list[tuple[str, str]]) -> str:
    return ", ".join(f"`{a}`/`{b}`" for a, b in rung_pairs)


def probe(results: pd.DataFrame) -> Claim | None:
    """Digit read from sampled z along the power axis, beside the decoder alone's floor."""
    with_z = results[results["role"] != NO_Z].sort_values("power")
    if with_z.empty:
        return None
    best, worst = with_z.loc[with_z["probe_accuracy"].idxmax()], with_z.loc[with_z["probe_accuracy"].idxmin()]

    def acc(r) -> str:
        return f"`{r['rung']}` {pm(100 * r['probe_accuracy'], 100 * r['probe_accuracy_std'], 1)}%"

    floor = results[results["role"] == NO_Z]
    floor_mean = float(floor["probe_accuracy"].mean()) if len(floor) else math.nan
    n_test = int(results["n_test"].min()) if "n_test" in results else 0
    text = (f"A linear probe on sampled z ~ q(z|x) reads the digit best at {acc(best)} and worst at "
            f"{acc(worst)} (every rung: the results table)"
            + (f"; on the decoders alone's z, which their decoders ignore, {100 * floor_mean:.1f}%"
               + _floor_against_chance(floor_mean, n_test) if len(floor)
               else f"; chance is {CHANCE:.0%}") + ".")
    return Claim("probe", text, {r.rung: r.probe_accuracy for r in results.itertuples()})


def _floor_against_chance(floor: float, n_test: int) -> str:
    """How far the probe's floor lies from chance, against the 95 % sampling error of one
    accuracy on n_test images (binomial, at chance)."""
    if not n_test:
        return f" (chance: {CHANCE:.0%})"
    half = 100 * stats.Z975 * math.sqrt(CHANCE * (1 - CHANCE) / n_test)  # points
    gap = 100 * (floor - CHANCE)
    return (f", {abs(gap):.1f} points {'above' if gap > 0 else 'below'} chance ({CHANCE:.0%}): "
            f"{'within' if abs(gap) <= half else 'beyond'} sampling error (±{half:.1f} points, 95 % on "
            f"{n_test:,} test images)")


def mutual_information(results: pd.DataFrame) -> Claim | None:
    with_z = results[results["role"] != NO_Z].sort_values("power")
    if with_z.empty:
        return None
    cap = float(with_z["mi_cap_nats"].min())
    bounded = with_z[with_z["mi_nats"] >= with_z["mi_cap_nats"] - MI_BOUND_MARGIN]
    text = (f"The mutual information I_q(x; z) on the test images is estimated with q(z) a mixture of "
            f"M = {round(math.exp(cap)):,} posteriors (the test images and the probe's training images) "
            f"and cannot exceed log M = {cap:.2f} nats; "
            + (f"{backticked(bounded['rung'])} {'is' if len(bounded) == 1 else 'are'} within "
               f"{MI_BOUND_MARGIN:g} nats of that cap, so {'its' if len(bounded) == 1 else 'their'} "
               f"MI is shown as a lower bound (>=)." if len(bounded) else
               f"every estimate is more than {MI_BOUND_MARGIN:g} nats below it."))
    return Claim("mutual_information", text, {"mi_cap_nats": cap, "lower_bounds": list(bounded["rung"])})


def bound_gap(results: pd.DataFrame) -> Claim | None:
    """The bound gap -ELBO - NLL_IW along the power axis, step by step at 95 % (the KL steps'
    rule: rungs of equal receptive field are a tie, a step shrinks or grows only where every
    pair's Welch interval says so)."""
    trend = trend_rungs(results)
    if trend["receptive_field"].nunique() < 2:
        return None
    walk = steps(trend, "bound_gap_nats")
    words = [w["word"] for w in walk]
    said = {"falls": "shrinks at", "rises": "grows at", "flat": "is flat at",
            "undecided": "is undecided (one seed) at"}
    shape = ("shrinks at every step up the power axis" if set(words) == {"falls"} else
             "grows at every step up the power axis" if set(words) == {"rises"} else
             step_phrases(walk, said))
    first, top = trend.iloc[0], trend.iloc[-1]
    text = (f"The bound gap -ELBO - NLL_IW (95 % intervals of each step; equal receptive fields are a "
            f"tie) {shape}: from {pm(first['bound_gap_nats'], first['bound_gap_nats_std'])} nats "
            f"(`{first['rung']}`) to {pm(top['bound_gap_nats'], top['bound_gap_nats_std'])} nats "
            f"(`{top['rung']}`).")
    return Claim("bound_gap", text, {"gaps_along_power": list(trend["bound_gap_nats"]), "step_words": words})


K_TOLERANCE = 0.01  # nats: a change with K smaller than this is below the estimate's precision


def k_convergence(k_curves: pd.DataFrame, order: list[str]) -> Claim | None:
    """Is the IW estimate non-increasing in K for every rung (means over seeds), up to
    K_TOLERANCE?"""
    if k_curves.empty:
        return None
    rising, drops = [], {}
    for rung in order:
        c = k_curves[k_curves["rung"] == rung].sort_values("k")
        if c.empty:
            continue
        nll = list(c["nll_iw_nats"])
        if any(b > a + K_TOLERANCE for a, b in zip(nll, nll[1:])):
            rising.append(rung)
        drops[rung] = nll[0] - nll[-1]
    kmax = int(k_curves["k"].max())
    big = max(drops, key=drops.get)
    shown = {r: 0.0 if abs(d) < 0.005 else d for r, d in drops.items()}  # no "-0.00"
    text = ((f"The IW estimate of -log p(x) does not rise with K by more than {K_TOLERANCE:g} nats "
             "on any rung"
             if not rising else
             f"The IW estimate of -log p(x) rises with K by more than {K_TOLERANCE:g} nats somewhere "
             f"on {backticked(rising)} (sampling noise: the estimate is a stochastic bound)")
            + f"; from K = 1 to K = {kmax:,} it drops by between {min(shown.values()):.2f} and "
              f"{max(shown.values()):.2f} nats, most on `{big}`.")
    return Claim("k_convergence", text, {"drop_nats": drops, "rising": rising,
                                         "tolerance_nats": K_TOLERANCE})


def all_claims(results: pd.DataFrame, per_seed: pd.DataFrame, history: pd.DataFrame,
               k_curves: pd.DataFrame, threshold: float, convergence_claim: Claim | None = None,
               z_claims: tuple[Claim | None, Claim | None] = (None, None)) -> list[Claim]:
    """Every claim the numbers support, in reading order. `z_claims`: where collapse becomes
    the ELBO's optimum (the headline, first) and what z adds rung by rung (stages.report.zadds)."""
    order = list(results.sort_values("power")["rung"])
    optimum, adds = z_claims
    claims = [optimum, power_trend(results, per_seed), kl_gone_at_top(results, per_seed),
              verdicts(results, threshold), adds, *pathway(results), convergence_claim,
              kl_slope(results, history), training_order(results, history), probe(results), mutual_information(results),
              bound_gap(results), k_convergence(k_curves, order)]
    return [c for c in claims if c is not None]
