"""`vae-study gather`: the report's inputs, copied from data/ into reports/<study>/inputs/, which
git tracks (the gather stage of dvc.yaml; its output is `cache: false`).

The report reads only these copies (`GatheredLayout`), so its stage depends on files a clone
has: after a change to the report's code, `dvc repro -s report` renders it again from git alone,
in seconds, where reading data/ would first need every training and evaluation of the study on
this machine (hours). The copies are every per-run metrics, evaluation and history file, the
binarized split's summary and the download's sources (`sources`): a few MB per study, about
100 kB per run. This module imports no report code, so a change to the report reruns the
report alone, never this stage; and it leaves stages.layout, which every stage imports, as it is.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from stages.errors import DataError
from stages.fsutil import atomic_dir
from stages.layout import Layout
from stages.options import ROOT, STUDY

FOLDER = "inputs"  # reports/[<study>/]inputs: no named study may take this name (stages.studies)
OPTIONAL = ("sources.json",)  # the download's record of where MNIST came from: reported if present


@dataclasses.dataclass(frozen=True)
class GatheredLayout(Layout):
    """The study's layout with every data path read from the gathered copy in reports/."""

    @property
    def data(self) -> Path:
        return self.reports / FOLDER

    @property
    def raw(self) -> Path:
        return self.data / "raw"


def gathered(layout: Layout) -> GatheredLayout:
    return GatheredLayout(layout.root, layout.study)


def sources(layout: Layout) -> list[Path]:
    """Every file the report reads that a stage writes: the per-run folders, the binarized
    split's summary and the download's sources (the gather stage's deps, in this order)."""
    return [layout.data / "metrics", layout.data / "eval", layout.data / "history",
            layout.binarized_summary, layout.raw / "sources.json"]


def gather(layout: Layout) -> list[Path]:
    """Copy `sources(layout)` into the gathered copy (replaced whole); return the copies."""
    into = gathered(layout)
    pairs = list(zip(sources(layout), sources(into)))
    missing = [src for src, _ in pairs if not src.exists() and src.name not in OPTIONAL]
    if missing:
        raise DataError("gather: missing " + ", ".join(map(str, missing)) + "; the train, evaluate "
                        "and binarize stages write them (`dvc repro` runs them)")
    written = []
    with atomic_dir(into.data) as tmp:
        for src, dst in pairs:
            if not src.exists():
                continue
            copy = tmp / dst.relative_to(into.data)  # where data/ has it, inside the copy
            copy.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, copy)
            else:
                shutil.copy2(src, copy)
            written.append(dst)
    return written


def command(root: Path = ROOT, study: str = STUDY) -> None:
    """Copy the report's inputs from data/ into reports/[<study>/]inputs/ (git tracks them)."""
    layout = Layout(root, study)
    written = gather(layout)
    into = gathered(layout).data
    n_files = sum(1 for p in into.rglob("*") if p.is_file())
    print(f"gather: {n_files} files ({', '.join(p.name for p in written)}) -> {into}")
