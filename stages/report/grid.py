"""The grid of a grid study: decoder power x training objective (`stages.params.expand_grid`).

Every rung with z is trained under every objective of the params' `objectives` section; the
first objective is the plain ELBO, the reference. Per cell (rung, objective), over seeds:

- KL and MI, mean ± std;
- the NLL_IW change against the ELBO cell of the same rung, paired per test image and seed
  (mean_x [-log p^_obj(x) + log p^_elbo(x)]; positive: the objective's likelihood is worse);
- what z adds (NLL of the decoder alone minus NLL_IW, `stages.report.zadds`).

Claims: for each objective, at which powers it keeps more information in z than the ELBO beyond
two combined seed std (KL, with MI beside it), and at what NLL_IW change (`objectives_claim`);
how long an aggressive objective's phase lasted and whether its caps bound it
(`aggressive_claim`); whether at the strongest rung any objective's NLL_IW beats the decoder
alone's beyond noise (`top_against_alone`).
A difference counts only beyond max(two seed std, two per-image standard errors), as in zadds.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from stages.errors import DataError
from stages.report.claims import MI_BOUND_MARGIN, Claim, pm
from stages.report.figures import STYLE
from stages.report.zadds import noise, seed_stats

REMEDIES = {"kl_warmup_steps": "kl_warmup", "free_bits": "free_bits", "beta": "beta", "aggressive": "aggressive"}


def remedy_of(objective) -> str:
    """What kind of objective an `objectives` entry is: elbo, one remedy, or 'combined'."""
    default = type(objective)()
    on = [REMEDIES[k] for k in REMEDIES if getattr(objective, k) != getattr(default, k)]
    return "elbo" if not on else on[0] if len(on) == 1 else "combined"


def _paired(data, a: str, b: str) -> list[np.ndarray]:
    """Per seed, per test image: -log p^_a(x) + log p^_b(x), nats."""
    out = []
    for s in data.params.seeds:
        x, y = data.runs[(a, s)].per_image, data.runs[(b, s)].per_image
        if not np.array_equal(x["test_index"].to_numpy(), y["test_index"].to_numpy()):
            raise DataError(f"report: `{a}` and `{b}` (seed {s}) were evaluated on different test "
                            "images; rerun their evaluate stages (`dvc repro`)")
        out.append(y["log_px_iw_nats"].to_numpy(float) - x["log_px_iw_nats"].to_numpy(float))
    return out


def grid_table(data, results: pd.DataFrame) -> pd.DataFrame:
    """One row per (rung with z, objective), rungs in order of power, objectives in params order."""
    cells, objectives = data.params.cells, list(data.params.objectives)
    reference = objectives[0]
    by_run = results.set_index("rung")
    rungs = [r for r in dict.fromkeys(cells[run].rung for run in results["rung"]
                                      if run in cells and bool(by_run.loc[run, "uses_z"]))]
    rows = []
    for rung in rungs:
        base = f"{rung}__{reference}"
        for objective in objectives:
            run = f"{rung}__{objective}"
            r = by_run.loc[run]
            change = seed_stats(_paired(data, run, base)) if run != base else (0.0, 0.0, 0.0)
            row: dict[str, Any] = {
                "rung": rung, "objective": objective, "run": run, "power": int(r["power"]),
                "remedy": remedy_of(data.params.objectives[objective]),
                **{k: float(r[k]) for k in ("kl_nats", "kl_nats_std", "mi_nats", "mi_nats_std",
                                            "nll_iw_nats", "nll_iw_nats_std")},
                "nll_change_nats": change[0], "nll_change_std": change[1], "nll_change_se": change[2]}
            base_row = by_run.loc[base]
            for key in ("kl", "mi"):
                row[f"{key}_change_nats"] = row[f"{key}_nats"] - float(base_row[f"{key}_nats"])
                row[f"{key}_change_noise"] = 2 * math.hypot(row[f"{key}_nats_std"], float(base_row[f"{key}_nats_std"]))
            row["mi_cap_nats"] = float(r["mi_cap_nats"])
            row.update(aggressive_phase(data, run, data.params.objectives[objective]))
            for key in ("twin", "nll_alone_nats", "z_adds_iw_nats", "z_adds_iw_std", "z_adds_iw_se"):
                row[key] = r[key] if key in r.index else math.nan
            rows.append(row)
    return pd.DataFrame(rows)


def aggressive_phase(data, run: str, objective) -> dict[str, float]:
    """How long a run's aggressive phase lasted and how many encoder steps it took per decoder
    step, mean over seeds, from the training history (nothing for other objectives: their
    cells hold NaN in these columns of the grid table); with the
    validation MI that decides when the phase ends, at the last epoch, and that estimate's cap
    log M (M: the validation images scored each epoch)."""
    if not objective.aggressive:
        return {}
    epochs, trained, inner, mi = [], [], [], []
    for s in data.params.seeds:
        h = data.runs[(run, s)].history
        if not {"aggressive", "inner_steps_per_step", "valid_mi_nats"} <= set(h.columns):
            raise DataError(f"report: the training history of `{run}` (seed {s}) has no aggressive "
                            "phase columns; rerun its train stage (`dvc repro`)")
        on = h[h["aggressive"] > 0]
        epochs.append(len(on))
        trained.append(len(h))
        inner.extend(on["inner_steps_per_step"].to_numpy(float))
        mi.append(float(h["valid_mi_nats"].iloc[-1]))
    t, b = data.params.train, data.params.binarize
    m = min(t.valid_subset or b.valid_size, b.valid_size)
    return {"phase_epochs": float(np.mean(epochs)), "phase_of_epochs": float(np.mean(trained)),
            "inner_steps": float(np.mean(inner)) if inner else math.nan,
            "inner_cap": float(objective.aggressive_max_inner_steps),
            "valid_mi_last_nats": float(np.mean(mi)), "valid_mi_cap_nats": math.log(m)}


def _change_words(mean: float, std: float, se: float) -> str:
    level = noise(std, se)
    word = ("within noise" if abs(mean) <= level else "worse beyond noise" if mean > 0
            else "better beyond noise")
    spread = "" if pd.isna(std) else f" ± {std:.2f}"
    return f"{mean:+.2f}{spread} nats, {word}"


MI_AT_CAP_NATS = 0.05  # a validation MI this close to its cap log M can only creep up


def _mi_words(r) -> str:
    """The MI of a cell against the reference cell: the information z carries, beside the KL
    (its upper bound, the rate). An MI within MI_BOUND_MARGIN of its cap log M is only a lower
    bound: compared only where it is the higher one."""
    reference_mi = r.mi_nats - r.mi_change_nats
    bounded = r.mi_cap_nats - r.mi_nats < MI_BOUND_MARGIN
    shown = ("≥ " if bounded else "") + pm(r.mi_nats, r.mi_nats_std)
    word = ("more beyond noise" if r.mi_change_nats > r.mi_change_noise else
            "less beyond noise" if r.mi_change_nats < -r.mi_change_noise else "within noise")
    if r.mi_cap_nats - reference_mi < MI_BOUND_MARGIN or (bounded and word != "more beyond noise"):
        return (f"MI {shown}, {r.mi_change_nats:+.2f}, not compared: within {MI_BOUND_MARGIN} nats "
                f"of the estimate's cap log M = {r.mi_cap_nats:.2f}, a lower bound")
    return f"MI {shown}, {r.mi_change_nats:+.2f}, {word}" + (" (a lower bound)" if bounded else "")


def objectives_claim(grid: pd.DataFrame) -> Claim | None:
    """For each objective but the reference: the powers where it keeps more KL than the ELBO
    beyond two combined seed std, with the NLL_IW change there."""
    if grid.empty:
        return None
    objectives = list(dict.fromkeys(grid["objective"]))
    reference, parts, numbers = objectives[0], [], {}
    for objective in objectives[1:]:
        rows = grid[grid["objective"] == objective]
        more = rows[rows["kl_change_nats"] > rows["kl_change_noise"]]  # NaN noise: never more
        less = rows[rows["kl_change_nats"] < -rows["kl_change_noise"]]
        numbers[objective] = {"more_kl_at": list(more["rung"]), "less_kl_at": list(less["rung"])}
        if more.empty:
            text = f"`{objective}` keeps more information in z than `{reference}` at no power"
        else:
            text = (f"`{objective}` keeps more information in z than `{reference}` at "
                    + "; ".join(f"`{r.rung}` (KL {pm(r.kl_nats, r.kl_nats_std)} nats, "
                                f"{r.kl_change_nats:+.2f} against `{reference}`; {_mi_words(r)}; "
                                "NLL_IW change "
                                f"{_change_words(r.nll_change_nats, r.nll_change_std, r.nll_change_se)})"
                                for r in more.itertuples()))
        if len(less):
            text += f", and less at {', '.join(f'`{r}`' for r in less['rung'])}"
        parts.append(text)
    head = (f"The grid, {grid['rung'].nunique()} powers x {len(objectives)} objectives (more "
            f"information in z: KL above the `{reference}` cell of the same power by more than two "
            "combined seed std; NLL_IW change paired per test image against that cell, positive "
            "when worse): ")
    numbers["cells"] = grid.to_dict("records")  # the whole grid, as data
    return Claim("grid_objectives", head + "; ".join(parts) + ".", numbers)


def aggressive_claim(grid: pd.DataFrame) -> Claim | None:
    """What the aggressive objectives' phase did at each power: epochs on, encoder steps per
    decoder step against the cap, and whether the MI that ends the phase sat at its own cap."""
    if grid.empty or "phase_epochs" not in grid:
        return None
    rows = grid[grid["phase_epochs"].notna()]
    if rows.empty:
        return None
    parts, numbers = [], {}
    for objective in dict.fromkeys(rows["objective"]):
        cells = rows[rows["objective"] == objective]
        cap = int(cells["inner_cap"].iloc[0])
        capped = list(cells.loc[cells["inner_steps"] >= cells["inner_cap"] - 1e-9, "rung"])
        near = cells[(cells["valid_mi_cap_nats"] - cells["valid_mi_last_nats"] < MI_AT_CAP_NATS)
                     & (cells["phase_epochs"] >= cells["phase_of_epochs"])]  # on to the end
        numbers[objective] = {"phase_epochs": dict(zip(cells["rung"], cells["phase_epochs"])),
                              "inner_steps": dict(zip(cells["rung"], cells["inner_steps"])),
                              "capped_at": capped, "mi_at_cap_at": list(near["rung"])}
        text = (f"`{objective}` (at most {cap} encoder steps per decoder step): its phase lasted "
                "(mean over seeds) " + ", ".join(f"{r.phase_epochs:g} of {r.phase_of_epochs:g} epochs at `{r.rung}` "
                            f"({r.inner_steps:.1f} encoder steps per decoder step)" for r in cells.itertuples()))
        if capped:
            text += (f"; every inner loop ran to the cap at {', '.join(f'`{r}`' for r in capped)}, "
                     "where the encoder may have been stopped while its loss was still falling")
        if len(near):
            r = near.iloc[0]
            text += (f"; at {', '.join(f'`{x}`' for x in near['rung'])} the phase never ended while "
                     f"the validation MI that ends it sat within {MI_AT_CAP_NATS} nats of its cap "
                     f"log M = {r.valid_mi_cap_nats:.2f}, where the estimate can only creep up")
        parts.append(text)
    return Claim("grid_aggressive_phase", "Aggressive inference-network training: " + "; ".join(parts) + ".",
                 numbers)


def top_against_alone(grid: pd.DataFrame) -> Claim | None:
    """At the strongest rung with a decoder alone: does any objective's NLL_IW beat it?"""
    with_twin = grid[grid["z_adds_iw_nats"].notna()]
    if with_twin.empty:
        return None
    top = with_twin[with_twin["power"] == with_twin["power"].max()]
    first = top.iloc[0]
    words = {}
    for r in top.itertuples():
        level = noise(r.z_adds_iw_std, r.z_adds_iw_se)
        words[r.objective] = ("better" if r.z_adds_iw_nats > level else
                              "worse" if r.z_adds_iw_nats < -level else "within noise")
    better = [o for o, w in words.items() if w == "better"]
    than = {"better": "better than the decoder alone", "worse": "worse than the decoder alone",
            "within noise": "within noise of the decoder alone"}
    listed = "; ".join(f"`{r.objective}` {pm(r.nll_iw_nats, r.nll_iw_nats_std)} (what z adds "
                       f"{pm(r.z_adds_iw_nats, r.z_adds_iw_std)}: {than[words[r.objective]]})"
                       for r in top.itertuples())
    alone = first.twin if isinstance(first.twin, str) else "independent pixels"
    verdict = (f"{', '.join(f'`{o}`' for o in better)} give{'s' if len(better) == 1 else ''} a better "
               "NLL_IW than the decoder alone beyond noise" if better else
               "no objective gives a better NLL_IW than the decoder alone beyond noise")
    text = (f"At the strongest rung `{first.rung}`, {verdict}: the decoder alone (`{alone}`) "
            f"scores NLL {first.nll_alone_nats:.2f} nats; NLL_IW (mean ± std over seeds, and what z "
            f"adds, paired per test image) by objective: {listed}.")
    return Claim("grid_top_against_alone", text, {"rung": first.rung, "better": better, "words": words})


def heatmaps(grid: pd.DataFrame) -> Figure:
    """KL, MI and the NLL_IW change against the ELBO cell, objectives (rows) x powers
    (columns, weakest first); each cell annotated with mean ± std over seeds."""
    rungs = list(dict.fromkeys(grid.sort_values("power", kind="stable")["rung"]))
    objectives = list(dict.fromkeys(grid["objective"]))
    panels = (("kl_nats", "kl_nats_std", "KL (nats)", "viridis"),
              ("mi_nats", "mi_nats_std", "MI I_q(x; z) (nats)", "viridis"),
              ("nll_change_nats", "nll_change_std", "NLL_IW change vs the ELBO cell (nats)", "RdBu_r"))
    with matplotlib.rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(4.2 * len(panels), 0.55 * len(objectives) + 2.2), layout="constrained")
        for ax, (key, std_key, title, cmap) in zip(fig.subplots(1, len(panels)), panels):
            values = grid.pivot(index="objective", columns="rung", values=key).loc[objectives, rungs]
            spread = grid.pivot(index="objective", columns="rung", values=std_key).loc[objectives, rungs]
            v = values.to_numpy(float)
            limit = np.nanmax(np.abs(v)) or 1.0
            image = ax.imshow(v, cmap=cmap, aspect="auto",
                              **({"vmin": -limit, "vmax": limit} if cmap == "RdBu_r" else {}))
            for i in range(v.shape[0]):
                for j in range(v.shape[1]):
                    s, shade = spread.iat[i, j], float(image.norm(v[i, j]))
                    dark = shade < 0.5 if cmap == "viridis" else abs(shade - 0.5) > 0.3
                    value = v[i, j] if abs(v[i, j]) >= 0.005 else 0.0  # never "-0.00"
                    ax.text(j, i, f"{value:.2f}" + ("" if pd.isna(s) else f"\n±{s:.2f}"),
                            ha="center", va="center", fontsize=7.5, color="white" if dark else "black")
            ax.set_xticks(range(len(rungs)), rungs, rotation=30, ha="right", fontsize=8)
            ax.set_yticks(range(len(objectives)), objectives, fontsize=8)
            ax.set_title(title)
            fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def top_beside_published(grid: pd.DataFrame, remedies: pd.DataFrame | None) -> tuple[list[str], list[list[str]]]:
    """Per objective at the strongest rung: our KL and NLL_IW beside published rows of the same
    remedy (reference/remedies.csv). -> (header, rows)"""
    top = grid[grid["power"] == grid["power"].max()]
    rows = []
    for r in top.itertuples():
        published = (remedies[remedies["remedy"] == r.remedy] if remedies is not None else pd.DataFrame())
        cited = "; ".join(f"{p.paper}, {p.data} ({p.model}): KL {p.kl_nats:g}"
                          + ("" if pd.isna(p.nll_nats) else f", NLL {p.nll_nats:g}") + f" [{p.where}]"
                          for p in published.itertuples()) or "none"
        rows.append([f"`{r.objective}`", r.remedy, pm(r.kl_nats, r.kl_nats_std),
                     pm(r.nll_iw_nats, r.nll_iw_nats_std), cited])
    return ["objective", "remedy", "KL (nats)", "NLL_IW (nats)", "published (another data set and scale)"], rows
