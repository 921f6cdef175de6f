"""The grid of a grid study: decoder power x training objective (`stages.params.expand_grid`).

Every rung with z is trained under every objective of the params' `objectives` section; the
first objective is the plain ELBO, the reference. Per cell (rung, objective), over seeds:

- KL and MI, mean ± std;
- the NLL_IW change against the ELBO cell of the same rung, paired per test image and seed
  (mean_x [-log p^_obj(x) + log p^_elbo(x)]; positive: the objective's likelihood is worse);
- what z adds (NLL of the decoder alone minus NLL_IW, `stages.report.zadds`).

Claims: for each objective, at which powers it keeps more information in z than the ELBO (KL,
with MI beside it) and at what NLL_IW change (`objectives_claim`); how long an aggressive
objective's phase lasted and whether its caps bound it (`aggressive_claim`); whether at the
strongest rung any objective's NLL_IW beats the decoder alone's (`top_against_alone`).
Every difference is decided by the one rule of `stages.report.stats`: Welch's 95 % interval
between cells (different runs), the paired interval where runs share seed and test images.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib
import matplotlib.patches
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from stages.errors import DataError
from stages.report import stats
from stages.report.claims import MI_BOUND_MARGIN, Claim, backticked, kl_floor_nats, pm
from stages.report.figures import STYLE
from stages.report.tables import changed_options
from stages.report.zadds import seed_stats

REMEDIES = {"kl_warmup_steps": "kl_warmup", "free_bits": "free_bits", "beta": "beta", "aggressive": "aggressive"}


def remedy_of(objective) -> str:
    """What kind of objective an `objectives` entry is: elbo, one remedy, or 'combined'."""
    on = [REMEDIES[k] for k in changed_options(objective) if k in REMEDIES]
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
    run_of = {(cell.rung, cell.objective): run for run, cell in cells.items()}
    rows = []
    for rung in rungs:
        base = run_of[(rung, reference)]
        base_row = by_run.loc[base]
        for objective in objectives:
            run = run_of[(rung, objective)]
            r = by_run.loc[run]
            diffs = _paired(data, run, base) if run != base else []
            change = seed_stats(diffs) if diffs else (0.0, 0.0, 0.0)
            nll_change = stats.interval([d.mean() for d in diffs]) if diffs else stats.Interval.of(0.0, 0.0, 2)
            row: dict[str, Any] = {
                "rung": rung, "objective": objective, "run": run, "power": int(r["power"]),
                "n_seeds": int(r["n_seeds"]), "remedy": remedy_of(data.params.objectives[objective]),
                **{k: float(r[k]) for k in ("kl_nats", "kl_nats_std", "mi_nats", "mi_nats_std",
                                            "nll_iw_nats", "nll_iw_nats_std")},
                "nll_change_nats": change[0], "nll_change_std": change[1], "nll_change_se": change[2],
                "nll_change_lo": nll_change.lo, "nll_change_hi": nll_change.hi}
            for key in ("kl", "mi"):
                moved = stats.difference(_interval(r, key), _interval(base_row, key))
                row[f"{key}_change_nats"], row[f"{key}_change_lo"], row[f"{key}_change_hi"] = \
                    moved.mean, moved.lo, moved.hi
            row["mi_cap_nats"] = float(r["mi_cap_nats"])
            row["kl_floor_nats"] = kl_floor_nats(data.params.objectives[objective],
                                                 data.params.encoder.latent_dim)
            row.update(aggressive_phase(data, run, data.params.objectives[objective]))
            for key in ("twin", "nll_alone_nats", "z_adds_iw_nats", "z_adds_iw_std", "z_adds_iw_se",
                        "z_adds_iw_lo", "z_adds_iw_hi"):
                row[key] = r[key] if key in r.index else math.nan
            rows.append(row)
    return pd.DataFrame(rows)


def _interval(row, key: str) -> stats.Interval:
    """The 95 % interval of a cell's `key` (a Series row or a namedtuple of the grid table)."""
    return stats.Interval.of(float(getattr(row, f"{key}_nats")), float(getattr(row, f"{key}_nats_std")),
                             int(row.n_seeds))


def _side(row, key: str) -> str:
    """'above' / 'below' 0 / 'unresolved': the 95 % interval of a cell's `key` columns."""
    return _side_of(getattr(row, f"{key}_lo"), getattr(row, f"{key}_hi"))


def _side_of(lo: float, hi: float) -> str:
    if pd.isna(lo) or pd.isna(hi) or lo <= 0 <= hi:
        return "unresolved"
    return "above" if lo > 0 else "below"


MI_AT_CAP_NATS = 0.05  # a validation MI this close to its cap log M can only creep up


def _change(r, key: str) -> str:
    """A cell's change against its reference (`key`_nats, `key`_lo, `key`_hi), signed."""
    return stats.Interval.from_plain({"mean": getattr(r, f"{key}_nats"), "lo": getattr(r, f"{key}_lo"),
                                      "hi": getattr(r, f"{key}_hi"), "n": r.n_seeds}).text(sign="+")


def _mi_text(r) -> str:
    """A cell's MI with its interval; '≥' where it is within MI_BOUND_MARGIN of the estimator's
    cap log M (a lower bound)."""
    bounded = r.mi_cap_nats - r.mi_nats < MI_BOUND_MARGIN
    return ("≥ " if bounded else "") + _interval(r, "mi").text()


def cell_table(grid: pd.DataFrame) -> tuple[list[str], list[list[str]], str]:
    """Every cell of the grid with the 95 % intervals its claims decide on. -> (header, rows, caption)"""
    reference = grid["objective"].iloc[0]
    word = {"above": "more", "below": "less", "unresolved": "unresolved", "capped": "not compared (MI at its cap)"}
    rows = []
    for r in grid.itertuples():
        first = r.objective == reference
        rows.append([f"`{r.rung}`", f"`{r.objective}`", _interval(r, "kl").text(), _mi_text(r),
                     _interval(r, "nll_iw").text(),
                     "reference" if first else _change(r, "kl_change"),
                     "reference" if first else word[information_side(r)] + (" (by MI)" if r.kl_floor_nats > 0 else ""),
                     "reference" if first else _change(r, "nll_change"),
                     "" if pd.isna(r.z_adds_iw_nats) else _change(r, "z_adds_iw")])
    header = ["rung", "objective", "KL (nats)", "MI (nats)", "NLL_IW (nats)", f"KL change vs `{reference}`",
              "information in z", f"NLL_IW change vs `{reference}`", "what z adds by IW"]
    return header, rows, (
        "The grid, cell by cell: mean and 95 % interval over seeds. Changes against the reference cell "
        "of the same power: KL by Welch's interval, NLL_IW paired per test image and seed (positive: "
        "worse); 'information in z' is decided by the KL change, by the MI change where free bits "
        "floor the KL; what z adds is the decoder alone's NLL minus the cell's, paired.")


def phase_table(grid: pd.DataFrame) -> tuple[list[str], list[list[str]], str] | None:
    """The aggressive objectives' phase per cell. -> (header, rows, caption), None without one"""
    if "phase_epochs" not in grid or grid["phase_epochs"].isna().all():
        return None
    rows = [[f"`{r.objective}`", f"`{r.rung}`", f"{r.phase_epochs:.3g} of {r.phase_of_epochs:.3g}",
             f"{r.inner_steps:.1f} (cap {r.inner_cap:g})", f"{r.valid_mi_last_nats:.2f} (cap {r.valid_mi_cap_nats:.2f})"]
            for r in grid[grid["phase_epochs"].notna()].itertuples()]
    return (["objective", "rung", "phase epochs of epochs trained", "encoder steps per decoder step",
             "validation MI at the last epoch (nats)"], rows,
            "The aggressive phase, mean over seeds: how many epochs it lasted, the encoder steps it "
            "took per decoder step against their cap, and the validation MI that ends it against the "
            "estimator's cap log M.")


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


CELL_TABLE = "table 'The grid, cell by cell'"


def _grouped(pairs: dict[str, list[str]]) -> str:
    """'`beta` at `mlp`, `gated_5`; `free_bits` at `mlp`', or 'none'."""
    return "; ".join(f"`{o}` at {backticked(r)}" for o, r in pairs.items() if r) or "none"


def information_side(r) -> str:
    """Does a cell keep more information in z than the reference cell of its power: 'above',
    'below', 'unresolved' by the Welch interval of its KL change, of its MI change where free
    bits floor the KL; 'capped' where that MI comparison meets the estimator's cap log M (an MI
    within MI_BOUND_MARGIN of it is a lower bound: the reference's, or the cell's unless it is the
    higher one, makes the comparison meaningless)."""
    if not r.kl_floor_nats > 0:
        return _side(r, "kl_change")
    side = _side(r, "mi_change")
    reference_mi = r.mi_nats - r.mi_change_nats
    bounded = r.mi_cap_nats - r.mi_nats < MI_BOUND_MARGIN
    return "capped" if r.mi_cap_nats - reference_mi < MI_BOUND_MARGIN or (bounded and side != "above") else side


def objectives_claim(grid: pd.DataFrame) -> Claim | None:
    """For each objective but the reference: the powers where it keeps more information in z than
    the ELBO, and where less (`information_side`). The numbers are the grid table's."""
    if grid.empty:
        return None
    objectives = list(dict.fromkeys(grid["objective"]))
    reference, numbers = objectives[0], {}
    for objective in objectives[1:]:
        rows = grid[grid["objective"] == objective]
        side = [information_side(r) for r in rows.itertuples()]
        floor = float(rows["kl_floor_nats"].max())
        numbers[objective] = {**{f"{k}_at": [r for r, w in zip(rows["rung"], side) if w == word]
                                 for k, word in (("more_kl", "above"), ("less_kl", "below"), ("capped", "capped"))},
                              "judged_by": "mi" if floor > 0 else "kl", "kl_floor_nats": floor}
    by_mi = [o for o, n in numbers.items() if n["judged_by"] == "mi"]
    capped = {o: n["capped_at"] for o, n in numbers.items()}
    text = (f"Against the `{reference}` cell of the same power (Welch 95 %"
            + (f"; by MI for {backticked(by_mi)}, whose KL free bits floor" if by_mi else "")
            + "), more information in z: "
            + _grouped({o: n["more_kl_at"] for o, n in numbers.items()})
            + "; less: " + _grouped({o: n["less_kl_at"] for o, n in numbers.items()})
            + (f"; not compared, MI at the estimator's cap: {_grouped(capped)}" if any(capped.values()) else "")
            + f"; elsewhere unresolved ({CELL_TABLE}).")
    numbers["cells"] = grid.to_dict("records")  # the whole grid, as data
    return Claim("grid_objectives", text, numbers)


def likelihood_claim(grid: pd.DataFrame) -> Claim | None:
    """What each objective costs in likelihood: its NLL_IW against the ELBO cell of the same
    power, paired per test image and seed."""
    others = grid[grid["objective"] != grid["objective"].iloc[0]] if not grid.empty else grid
    if others.empty:
        return None
    side = pd.Series([_side_of(lo, hi) for lo, hi in zip(others["nll_change_lo"], others["nll_change_hi"])],
                     index=others.index)
    worse = {o: list(g["rung"]) for o, g in others[side == "above"].groupby("objective", sort=False)}
    better = {o: list(g["rung"]) for o, g in others[side == "below"].groupby("objective", sort=False)}
    text = (f"NLL_IW against the `{grid['objective'].iloc[0]}` cell of the same power (paired per test "
            f"image and seed, 95 %): worse with {_grouped(worse)}; better with {_grouped(better)}; "
            f"elsewhere unresolved ({CELL_TABLE}).")
    return Claim("grid_likelihood", text, {"worse_at": worse, "better_at": better})


def aggressive_claim(grid: pd.DataFrame) -> Claim | None:
    """Whether the aggressive objectives' phase was bound by its caps: every inner loop at the
    cap of encoder steps, or a phase that never ended while the MI that ends it sat at the
    estimator's own cap log M. The phase lengths are the aggressive table's."""
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
        text = f"`{objective}` (at most {cap} encoder steps per decoder step): "
        text += (f"every inner loop hit the cap at {backticked(capped)}, so the encoder may have stopped "
                 "with its loss still falling" if capped else "no power had every inner loop at the cap")
        if len(near):
            mi_cap = near["valid_mi_cap_nats"].iloc[0]
            text += (f"; at {backticked(near['rung'])} the phase never ended, its validation MI within "
                     f"{MI_AT_CAP_NATS} nats of the estimator's cap log M = "
                     f"{mi_cap:.2f} (M = {round(math.exp(mi_cap)):,} validation posteriors)")
        parts.append(text)
    return Claim("grid_aggressive_phase", "Aggressive training, " + "; ".join(parts)
                 + " (table 'The aggressive phase').", numbers)


def top_against_alone(grid: pd.DataFrame) -> Claim | None:
    """At the strongest rung with a decoder alone: does any objective's NLL_IW beat it?"""
    with_twin = grid[grid["z_adds_iw_nats"].notna()]
    if with_twin.empty:
        return None
    top = with_twin[with_twin["power"] == with_twin["power"].max()]
    first = top.iloc[0]
    words = {r.objective: {"above": "better", "below": "worse"}.get(_side(r, "z_adds_iw"), "unresolved")
             for r in top.itertuples()}
    better = [o for o, w in words.items() if w == "better"]
    worse = [o for o, w in words.items() if w == "worse"]
    alone = first.twin if isinstance(first.twin, str) else "independent pixels"
    verdict = (f"{backticked(better)} give{'s' if len(better) == 1 else ''} a better NLL_IW than the "
               "decoder alone" if better else "no objective gives a better NLL_IW than the decoder alone")
    text = (f"At the strongest rung `{first.rung}`, {verdict} (`{alone}`, {first.nll_alone_nats:.2f} nats; "
            "what z adds paired per test image, 95 %)"
            + (f"; {backticked(worse)} {'is' if len(worse) == 1 else 'are'} worse" if worse else "")
            + f" ({CELL_TABLE}).")
    return Claim("grid_top_against_alone", text, {"rung": first.rung, "better": better, "words": words})


def heatmaps(grid: pd.DataFrame) -> Figure:
    """KL, MI and the NLL_IW change against the ELBO cell, objectives (rows) x powers
    (columns, weakest first); each cell annotated with mean ± std over seeds; a KL that free bits
    floors is hatched and its floor (latent dims x lambda) written in the cell."""
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
            floor = (grid.pivot(index="objective", columns="rung", values="kl_floor_nats").loc[objectives, rungs]
                     if "kl_floor_nats" in grid else values * 0.0)
            limit = np.nanmax(np.abs(v)) or 1.0
            image = ax.imshow(v, cmap=cmap, aspect="auto",
                              **({"vmin": -limit, "vmax": limit} if cmap == "RdBu_r" else {}))
            for i in range(v.shape[0]):
                for j in range(v.shape[1]):
                    s, shade = spread.iat[i, j], float(image.norm(v[i, j]))
                    dark = shade < 0.5 if cmap == "viridis" else abs(shade - 0.5) > 0.3
                    value = v[i, j] if abs(v[i, j]) >= 0.005 else 0.0  # never "-0.00"
                    floored = key == "kl_nats" and floor.iat[i, j] > 0
                    ax.text(j, i, f"{value:.2f}" + ("" if pd.isna(s) else f"\n±{s:.2f}")
                            + (f"\nfloor {floor.iat[i, j]:.0f}" if floored else ""),
                            ha="center", va="center", fontsize=7.5, color="white" if dark else "black")
                    if floored:  # the rate free bits forces: this KL is not information kept
                        ax.add_patch(matplotlib.patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False,
                                                                  hatch="//", lw=0, alpha=0.5))
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
