"""`vae-study answer`: the README's answer, written from the committed reports.

The README opens with the default study's abstract and scope (reports/claims.json, computed by
`stages.report.abstract`) and one table of the top of the power axis in every committed study:
the default, the early-stopped one (reports/long) and the grid (reports/grid, its ELBO cells).
Each row is read from that study's results.csv, each number with its 95 % interval over seeds
(`stages.report.stats`). The block sits between two markers; `tests/test_answer.py` fails when it
is not what the committed reports say, so the README cannot drift from them. Not a DVC stage:
run it after committing a study's report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from stages.errors import DataError
from stages.fsutil import write_text
from stages.options import ROOT

BEGIN, END = "<!-- answer:begin (vae-study answer writes this block) -->", "<!-- answer:end -->"
STUDIES = (("default", "reports", "params.yaml"), ("long", "reports/long", "profiles/long/params.yaml"),
           ("grid", "reports/grid", "profiles/grid/params.yaml"))  # (name, its reports, its params)


def _ci(row: pd.Series, mean: str, std: str) -> str:
    from stages.report.stats import Interval

    if mean not in row.index or pd.isna(row[mean]):
        return "n/a"
    return Interval.of(float(row[mean]), float(row[std]) if std in row.index else math.nan,
                       int(row["n_seeds"])).text()


def top_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The two strongest trend rungs of a study (a grid's ELBO cells are its trend rungs)."""
    trend = results[results["role"] == "trend"].sort_values("power")
    return trend.tail(2)


def schedule(params: Path) -> str:
    """A study's training schedule, as its params file sets it."""
    from stages.params import load_params

    train = load_params(params).train
    if train.patience is None:
        return f"{train.epochs} epochs"
    return f"early-stopped, patience {train.patience}, cap {train.epochs} epochs"


def cross_study_table(root: Path) -> str:
    lines = ["| study | rung | seeds | KL (nats) | NLL_IW (nats) | z adds by IW (nats) |",
             "|---|---|---:|---:|---:|---:|"]
    for name, folder, params in STUDIES:
        path = root / folder / "results.csv"
        if not path.exists():
            continue
        label = f"{name} ({schedule(root / params)})" if (root / params).exists() else name
        for _, row in top_rows(pd.read_csv(path)).iterrows():
            lines.append(f"| {label} | `{row['rung']}` | {int(row['n_seeds'])} | "
                         f"{_ci(row, 'kl_nats', 'kl_nats_std')} | {_ci(row, 'nll_iw_nats', 'nll_iw_nats_std')} | "
                         f"{_ci(row, 'z_adds_iw_nats', 'z_adds_iw_std')} |")
    return "\n".join(lines)


def render(root: Path) -> str:
    """The README block: the default study's answer and scope, then the cross-study table."""
    claims = root / "reports" / "claims.json"
    try:
        found = json.loads(claims.read_text())
        answer = found["abstract"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{claims}: no abstract to state ({e}); render the report first (`dvc repro`)") from None
    return "\n\n".join([
        BEGIN, " ".join(answer["sentences"]), f"*{answer['scope']}*",
        "The top of the power axis in each committed study (mean [95 % interval] over seeds; each "
        "study's report gives its scope):", cross_study_table(root), END])


def block_of(readme: str) -> str | None:
    """The README's current answer block, markers included (None without the markers)."""
    if BEGIN not in readme or END not in readme:
        return None
    return readme[readme.index(BEGIN):readme.index(END) + len(END)]


def command(root: Path = ROOT) -> None:
    """Write the README's answer from the committed reports (reports/claims.json, results.csv)."""
    readme = root / "README.md"
    text = readme.read_text()
    current = block_of(text)
    if current is None:
        raise DataError(f"{readme}: no answer block; put the two lines {BEGIN!r} and {END!r} where it goes")
    write_text(readme, text.replace(current, render(root)))
    print(f"wrote the answer into {readme}")
