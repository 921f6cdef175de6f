"""The study's answer in a minute: four to six sentences computed from the claims, and the scope.

Each sentence is built from a claim's numbers (never from its text or a row position), states
every number with its 95 % interval over seeds (`stages.report.stats`), and says "unresolved"
where an interval straddles the decision:

1. what KL does along the power axis: where it falls and whether it plateaus at the top;
2. whether collapse is the ELBO's optimum anywhere (the VAE against its decoder alone);
3. how much KL the top rung keeps and what z adds there;
4. what the remedies do at the top (a grid study);
5. which explanation of collapse the top of the axis favours, and which it cannot tell apart:
   the objective's optimum when the decoder alone suffices (Chen et al. 2017, VLAE), an
   optimization failure with the encoder lagging (He et al. 2019), or local maxima of the
   marginal likelihood itself (Lucas et al. 2019), which no number here tests.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from stages.report import stats
from stages.report.claims import COLLAPSED, KEPT, Claim, kl_interval, tie_group, trend_rungs
from stages.report.zadds import BETTER, TIE, WORSE


def _names(rungs) -> str:
    rungs = [f"`{r}`" for r in rungs]
    return rungs[0] if len(rungs) == 1 else ", ".join(rungs[:-1]) + " and " + rungs[-1]


def _kl(row) -> str:
    return kl_interval(row).text() + " nats"


def trend_sentence(results: pd.DataFrame, trend: dict[str, Any]) -> str:
    """Where KL falls along the power axis, from the steps' 95 % intervals."""
    t = trend_rungs(results).set_index("rung", drop=False)
    steps = trend["steps"]
    rho = (f"Spearman's rho {trend['spearman_rho']:.2f} over {trend['n_rungs']} rungs, exact p = "
           f"{trend['spearman_p']:.3f}")
    falls = [i for i, s in enumerate(steps) if s["word"] == "falls"]
    first, top = t.iloc[0], t.iloc[-1]
    if not falls:
        return (f"KL falls at no step up the power axis at 95 %: it is {_kl(first)} at `{first.rung}` "
                f"and {_kl(top)} at `{top.rung}` ({rho}).")
    start = t[t["receptive_field"] == t["receptive_field"].min()]
    start_text = (f"{start['kl_nats'].min():.1f}-{start['kl_nats'].max():.1f} nats on {_names(start['rung'])}"
                  if len(start) > 1 else f"{_kl(start.iloc[0])} on `{start.iloc[0].rung}`")
    end = t.loc[steps[falls[-1]]["to"][0]]
    after = [s["word"] for s in steps[falls[-1] + 1:]]
    tail = ("" if not after else
            f", then stays flat up to `{top.rung}` ({_kl(top)}): a plateau at the top" if set(after) == {"flat"} else
            f", then rises to {_kl(top)} at `{top.rung}`" if set(after) == {"rises"} else
            f", then moves without a decided direction up to `{top.rung}` ({_kl(top)})")
    risen = [s for s in steps[:falls[-1]] if s["word"] == "rises"]  # a decided rise on the way down
    on_the_way = ("" if not risen else ", rising on the way at "
                  + ", ".join(f"{tie_group(s['from'])} -> {tie_group(s['to'])}" for s in risen))
    return (f"KL falls from {start_text} to {_kl(end)} at `{end.rung}` ({int(end.receptive_field)} "
            f"pixels of context){on_the_way}{tail} ({rho}).")


def optimum_sentence(optimum: dict[str, Any]) -> str:
    """Where collapse is the better ELBO, decided by the paired interval against the decoder alone."""
    parts = []
    if optimum["better"]:
        parts.append(f"collapse is the better ELBO at {_names(optimum['better'])}")
    else:
        parts.append("collapse is the better ELBO at no rung")
    if optimum["worse"]:
        parts.append(f"the VAE's ELBO is better at {_names(optimum['worse'])}")
    if optimum["unresolved"]:
        parts.append(f"it is unresolved at {_names(optimum['unresolved'])}")
    return ("Against each rung's decoder alone (paired 95 % intervals), " + "; ".join(parts) + ".")


def top_sentence(optimum: dict[str, Any], threshold: float) -> str:
    kl, gain = stats.Interval.from_plain(optimum["top_kl"]), stats.Interval.from_plain(optimum["top_z_adds_iw"])
    kept = {KEPT: f"above the {threshold:g}-nat collapse threshold",
            COLLAPSED: f"below the {threshold:g}-nat collapse threshold"}.get(
        optimum["top_verdict"], f"unresolved against the {threshold:g}-nat threshold")
    decided = gain.side(0.0)
    adds = ({"above": "more likelihood than its decoder alone",
             "below": "less likelihood than its decoder alone"}.get(decided)
            or f"no decided likelihood over its decoder alone ({stats.seed_word(optimum['top_iw_seeds_to_resolve'])})")
    return (f"At the top, `{optimum['top_rung']}` keeps {kl.text()} nats of KL ({kept}), and z gives "
            f"{gain.text()} nats: {adds}.")


def remedies_sentence(found: dict[str, Claim]) -> str | None:
    """A grid study: which objectives keep more information in z than the ELBO at the top rung
    (by KL; by MI where free bits floor the KL, as the grid's claim decides it), and whether any
    beats the decoder alone there."""
    objectives, top = found.get("grid_objectives"), found.get("grid_top_against_alone")
    if objectives is None or top is None:
        return None
    rung = top.numbers["rung"]
    judged = {o: n for o, n in objectives.numbers.items() if isinstance(n, dict) and "judged_by" in n}
    more = [o for o, n in judged.items() if rung in n["more_kl_at"]]
    by_mi = [o for o, n in judged.items() if n["judged_by"] == "mi"]
    better = top.numbers["better"]
    return (f"Of the remedies at `{rung}`, "
            + (f"{_names(more)} keep{'s' if len(more) == 1 else ''}" if more else "none keeps")
            + " more information in z than the ELBO (Welch 95 %, by KL"
            + (f"; by MI for {_names(by_mi)}, whose KL free bits floor" if by_mi else "") + "), and "
            + (f"{_names(better)} beat{'s' if len(better) == 1 else ''} the decoder alone's likelihood" if better else
               "none beats the decoder alone's likelihood")
            + " (paired 95 %).")


def explanation_sentence(optimum: dict[str, Any]) -> str:
    """Which account of collapse the top of the axis favours, from the optimum and the verdict."""
    where = f"at `{optimum['top_rung']}`"
    if optimum["top_collapse"] == BETTER and optimum["top_verdict"] == KEPT:
        return (f"So {where} the objective prefers collapse yet the VAE keeps z: the numbers favour "
                "optimization (the encoder lagging, He et al. 2019) over the objective's optimum "
                "(Chen et al. 2017) as what sets the KL; local maxima of the likelihood itself "
                "(Lucas et al. 2019) are not tested.")
    if optimum["top_collapse"] == BETTER:
        return (f"So {where} collapse is the objective's optimum and the VAE reaches it: the numbers "
                "favour the optimum account (Chen et al. 2017).")
    if optimum["top_collapse"] == WORSE:
        return (f"So {where} z still pays for itself in the ELBO: the decoder alone does not suffice, "
                "and no account of collapse is needed for the KL kept there.")
    assert optimum["top_collapse"] == TIE
    return (f"So {where} the numbers cannot tell the objective's optimum (Chen et al. 2017) from "
            "optimization keeping z (He et al. 2019): the ELBO difference against the decoder alone "
            "is unresolved; local maxima of the likelihood (Lucas et al. 2019) are not tested.")


def cpu_name() -> str:
    """The CPU model of the machine rendering the report (Linux), '' elsewhere."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def scope_line(data, results: pd.DataFrame) -> str:
    p, s = data.params, data.summary
    epochs = sorted({int(run.history["epoch"].max()) for run in data.runs.values()})
    schedule = (f"{epochs[0]} epochs" if p.train.patience is None and len(epochs) == 1 else
                f"early-stopped on the validation ELBO (patience {p.train.patience}, cap "
                f"{p.train.epochs}; {epochs[0]}-{epochs[-1]} epochs)")
    devices = sorted({f"{run.info.get('precision', '?')} on {run.info.get('device', '?')}"
                      for run in data.runs.values()})
    return (f"Scope: MNIST, {s['method']} binarization, {s['train']['n_images']:,} training images, "
            f"{schedule}, K = {int(results['iw_k'].min()):,} on {int(results['n_test'].min()):,} "
            f"test images, {len(p.seeds)} seeds, {', '.join(devices)}"
            + (f" (rendered on {cpu_name()})" if cpu_name() else "") + ".")


def abstract(found: list[Claim], results: pd.DataFrame, threshold: float) -> list[str]:
    """The answer: each sentence from one claim's numbers; a missing claim drops its sentence."""
    by_name = {c.name: c for c in found}
    out = []
    if "power_trend" in by_name:
        out.append(trend_sentence(results, by_name["power_trend"].numbers))
    if "collapse_optimum" in by_name:
        optimum = by_name["collapse_optimum"].numbers
        out += [optimum_sentence(optimum), top_sentence(optimum, threshold)]
    remedies = remedies_sentence(by_name)
    if remedies:
        out.append(remedies)
    if "collapse_optimum" in by_name:
        out.append(explanation_sentence(by_name["collapse_optimum"].numbers))
    return out
