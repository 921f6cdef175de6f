"""`vae-study answer`: the README's answer, written from the committed reports.

The README opens with the default study's abstract and scope (reports/claims.json, computed by
`stages.report.abstract`) and one table of the top of the power axis in every committed study:
the default, the early-stopped one (reports/long) and the grid (reports/grid, its ELBO cells).
Each row is read from that study's results.csv, each number with its 95 % interval over seeds
(`stages.report.stats`). A second table sets the early-stopped study's KL beside the default's,
rung by rung, with the change's Welch interval: what training longer does to the information in
z (no study's report reads another's, so that `dvc repro` of one never reruns another). The
block sits between two markers; `tests/test_answer.py` fails when it is not what the committed
reports say, so the README cannot drift from them. Not a DVC stage:
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
TRAINING_LENGTH = STUDIES[:2]  # the same ladder on the default schedule and early-stopped


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


def training_length_table(root: Path) -> str | None:
    """KL at every rung with z that both the default and the early-stopped study trained, in
    order of power: each study's mean [95 % t interval], and the change (early-stopped minus
    default) with its 95 % Welch interval (independent seeds)."""
    from stages.report.claims import kl_interval
    from stages.report.stats import difference

    paths = [root / folder / "results.csv" for _, folder, _ in TRAINING_LENGTH]
    if not all(p.exists() for p in paths):
        return None
    default, long = (pd.read_csv(p).set_index("rung") for p in paths)
    shared = [r for r in long.sort_values("power").index
              if r in default.index and bool(long.loc[r, "uses_z"]) and bool(default.loc[r, "uses_z"])]
    if not shared:
        return None
    lines = ["| rung | role | KL, default (nats) | KL, long (nats) | change, long - default (nats) |",
             "|---|---|---:|---:|---:|"]
    for r in shared:
        a, b = (kl_interval(t.loc[r]) for t in (default, long))
        lines.append(f"| `{r}` | {long.loc[r, 'role']} | {a.text()} | {b.text()} | {difference(b, a).text(sign='+')} |")
    return "\n".join(lines)


def render(root: Path) -> str:
    """The README block: the default study's answer and scope, then the cross-study table."""
    claims = root / "reports" / "claims.json"
    try:
        found = json.loads(claims.read_text())
        answer = found["abstract"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{claims}: no abstract to state ({e}); render the report first (`dvc repro`)") from None
    parts = [BEGIN, " ".join(answer["sentences"]), f"*{answer['scope']}*",
             "The top of the power axis in each committed study (mean [95 % interval] over seeds; each "
             "study's report gives its scope):", cross_study_table(root)]
    longer = training_length_table(root)
    if longer is not None:
        schedules = [schedule(root / params) if (root / params).exists() else "its params"
                     for _, _, params in TRAINING_LENGTH]
        parts += [f"What training longer does to KL, rung by rung: the default study ({schedules[0]}) "
                  f"against the long one ({schedules[1]}), mean [95 % interval] over seeds, and the change "
                  "with its Welch interval (an interval that holds 0 is no decided change):", longer]
    return "\n\n".join([*parts, END])


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
