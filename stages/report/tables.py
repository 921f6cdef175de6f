"""The report's tables, computed from the collected runs (`stages.report.collect`): one row per
rung ordered by decoder power, with each metric's mean and std over seeds, its role and its
verdict (`summarize`); the training runs, histories and K-curves in long form.

Power is measured from the architecture alone (`power_of`): the causal receptive field on an
unbounded image, then the family; the share of the 28x28 raster past seen is a column beside it.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from stages.model import build_decoder
from stages.params import Rung
from stages.schema import to_plain
from stages.report import claims
from stages.report.collect import METRICS, PAPER_EPOCHS, PAPER_K, PAPER_TEST, PAPER_TRAIN, ReportData


def power_of(rung: Rung, latent_dim: int) -> tuple[int, int, float]:
    """The decoder-power measure, from the architecture alone: (causal receptive field in
    pixels on an unbounded image, the family's rank: linear < mlp < conv < pixelcnn <
    gated_pixelcnn, and the share of the 28x28 raster past seen, 0 for a factorized decoder).

    The count orders the rungs: it grows with every layer, where the share saturates at 1 once
    every pixel sees its whole past."""
    decoder = build_decoder(rung.family, rung.decoder, latent_dim)
    share = float(getattr(decoder, "raster_share", 0.0))
    return decoder.receptive_field, type(decoder).power_rank, share


def changed_options(objective) -> dict:
    """An objective's options that differ from the plain ELBO's (the one place this is decided
    in the report: the grid's remedy names and the page's setup both read it)."""
    default = to_plain(type(objective)())
    return {k: v for k, v in to_plain(objective).items() if v != default[k]}


def summarize(data: ReportData, threshold: float) -> pd.DataFrame:
    """One row per rung, ordered by decoder power (then name): mean and std (ddof 1; NaN for
    one seed) over seeds of every metric, the rung's role, power and verdict."""
    rows, trained = [], training_runs(data)
    for r, rung in data.params.decoders.items():
        runs = [data.runs[(r, s)] for s in data.params.seeds]
        m = pd.DataFrame([run.metrics for run in runs])
        uses_z = bool(runs[0].info["uses_z"])
        rf, family_rank, share = power_of(rung, data.params.encoder.latent_dim)
        cell = data.params.cells.get(r)  # a grid run: its rung and objective, as columns
        row: dict[str, Any] = {"rung": r, "decoder": cell.rung if cell else r,
                               "objective": cell.objective if cell else "",
                               "family": rung.family, "role": rung.role,
                               "receptive_field": rf, "raster_share": share, "family_rank": family_rank,
                               "uses_z": uses_z,
                               "n_seeds": len(runs), "seeds": ";".join(str(s) for s in data.params.seeds)}
        for key in METRICS:
            row[key] = float(m[key].mean())
            row[f"{key}_std"] = float(m[key].std(ddof=1)) if len(runs) > 1 else math.nan
        # free bits floor the KL by construction: whether z carries information is then its MI
        floored = claims.kl_floor_nats(rung.objective, data.params.encoder.latent_dim) > 0
        row["verdict_by"] = "mi" if uses_z and floored else "kl"
        by = row["verdict_by"]
        row["verdict"] = claims.verdict(row[f"{by}_nats"], row[f"{by}_nats_std"], len(runs), threshold,
                                        uses_z)
        row["mi_cap_nats"] = float(m["mi_cap_nats"].min())
        row["iw_k"], row["n_test"] = int(m["iw_k"].min()), int(m["n_test"].min())
        row["latent_dim"] = len(runs[0].latent)
        row["kl_top_dim_nats"] = float(np.mean([run.latent["kl_nats"].max() for run in runs]))
        row["n_params"] = int(runs[0].info["n_params"])
        row["best_epoch"] = float(np.mean([run.info["best_epoch"] for run in runs]))
        row["epochs_trained"] = float(np.mean([run.history["epoch"].max() for run in runs]))
        row["n_converged"] = int(trained.loc[trained["rung"] == r, "converged"].sum())
        row["config"] = json.dumps(rung.plain(), sort_keys=True)
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["receptive_field", "family_rank", "rung"], kind="stable")
    key = list(zip(table["receptive_field"], table["family_rank"]))
    table.insert(3, "power", [sorted(set(key)).index(k) for k in key])  # dense rank of the measure
    return table.reset_index(drop=True)


def training_runs(data: ReportData) -> pd.DataFrame:
    """rung, seed, epochs_trained, best_epoch, converged: did early stopping end the run, or
    the epoch cap (or, without a patience, the fixed schedule)?"""
    rows = []
    for (r, s), run in data.runs.items():
        trained, best = int(run.history["epoch"].max()), int(run.info["best_epoch"])
        rows.append({"rung": r, "seed": s, "epochs_trained": trained, "best_epoch": best,
                     "converged": data.params.train.converged(trained, best)})
    return pd.DataFrame(rows)


def history_table(data: ReportData) -> pd.DataFrame:
    return pd.concat([run.history.assign(rung=r, seed=s) for (r, s), run in data.runs.items()],
                     ignore_index=True)


def k_curve_table(data: ReportData) -> pd.DataFrame:
    """rung, k, nll_iw_nats, nll_iw_stderr_nats: means over seeds."""
    return (pd.concat([run.k_curve.assign(rung=r) for (r, _), run in data.runs.items()])
            .groupby(["rung", "k"], sort=False, as_index=False).mean())


def paper_scale(data: ReportData, results: pd.DataFrame) -> tuple[bool, str]:
    """Comparable with published numbers: the full 50k training split, the full training
    schedule (>= 100 epochs, best-validation epoch kept), and K >= 5000 on all 10,000 test images."""
    n_train = int(data.summary["train"]["n_images"])
    trained = [int(run.history["epoch"].max()) for run in data.runs.values()]  # (runs,)
    epochs, longest = min(trained), max(trained)  # early stopping ends runs at different epochs
    k, n_test = int(results["iw_k"].min()), int(results["n_test"].min())
    ok = n_train == PAPER_TRAIN and epochs >= PAPER_EPOCHS and k >= PAPER_K and n_test == PAPER_TEST
    span = f"{epochs}-{longest} epochs" if longest > epochs else f"{epochs} epoch{'s' if epochs != 1 else ''}"
    return ok, f"{n_train:,} training images for {span}, K = {k:,} on {n_test:,} test images"
