"""The training history, written once per epoch through DVC's own logger (DVCLive) and read back.

Each train stage logs its per-epoch row (validation ELBO, KL, reconstruction, ...) with
`dvclive.Live` into `data/history/<rung>/seed<seed>/` (`Layout.history`):
- `metrics.json`: the latest epoch's values, declared as the stage's DVC metrics, so
  `dvc metrics show` and `dvc exp show` list them, also for a queued experiment while it
  trains (DVC reads the running experiment's workspace);
- `plots/metrics/<metric>.tsv`: one row per epoch (`step` = epoch), declared as the stage's DVC
  plots, so `dvc plots show` and DVC's editor integrations draw the curves.

Those files are the one record of training: `read_history` turns them back into the history
table the report reads, so the logger and the report never disagree.

DVC deletes a stage's outputs before it reruns it, so a run resumed from its scratch
checkpoint replays the rows it already has before logging new ones.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from stages.fsutil import output_error

logging.getLogger("dvclive").setLevel(logging.ERROR)  # it warns about git and Studio, not data


class EpochLog:
    """A DVCLive logger whose step is the epoch.

    DVCLive looks for the DVC project (and its Git repo) from the working directory, so the
    logger is created from the project `root` the stage writes into, never from wherever the
    caller happens to be. A write that fails (a full disk) is an OutputError naming the folder.
    """

    def __init__(self, directory: str | Path, root: str | Path = ".") -> None:
        from dvclive import Live

        self.directory = Path(directory).absolute()
        try:
            with contextlib.chdir(root):
                self.live = Live(str(self.directory), resume=False, report=None,
                                 save_dvc_exp=False, dvcyaml=None)
        except OSError as e:
            raise output_error(self.directory, e) from None

    def log(self, row: dict[str, Any]) -> None:
        """One epoch's row: {'epoch': e, metric: value, ...}; metrics.json is rewritten."""
        self.live.step = int(row["epoch"])
        try:
            for name, value in row.items():
                if name != "epoch":
                    self.live.log_metric(name, float(value), plot=True)
            self.live.make_summary()
        except OSError as e:
            raise output_error(self.directory, e) from None

    def close(self) -> None:
        try:
            self.live.end()
        except OSError as e:
            raise output_error(self.directory, e) from None


def read_history(directory: str | Path) -> pd.DataFrame:
    """The per-epoch table DVCLive wrote: epoch, then one column per metric.  Raises
    ValueError (naming the folder) when it holds no metrics."""
    folder = Path(directory) / "plots" / "metrics"
    files = sorted(folder.glob("*.tsv"))
    if not files:
        raise ValueError(f"no training history in it (no {folder}/*.tsv)")
    table: pd.DataFrame | None = None
    for path in files:
        column = pd.read_csv(path, sep="\t")[["step", path.stem]]
        table = column if table is None else table.merge(column, on="step", how="outer")
    return table.rename(columns={"step": "epoch"}).sort_values("epoch").reset_index(drop=True)
