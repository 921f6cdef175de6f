"""`vae-study gather`: the report's inputs, copied from data/ into reports/<study>/inputs/, which
git tracks (the gather stage of dvc.yaml; its output is `cache: false`).

The report reads only these copies (`Layout(gathered=True)`), so its stage depends on files a
clone has: after a change to the report's code, `dvc repro -s report` renders it again from git
alone, in seconds, where reading data/ would first need every training and evaluation of the
study on this machine (hours). The copies are every per-run metrics, evaluation and history
file, the binarized split's summary and the download's sources (`Layout.report_sources`): a few
MB per study, kilobytes per run. This module imports no report code, so a change to the report
reruns the report alone, never this stage.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from stages.errors import DataError
from stages.fsutil import atomic_dir
from stages.layout import Layout
from stages.options import ROOT, STUDY

OPTIONAL = ("sources.json",)  # the download's record of where MNIST came from: reported if present


def gather(layout: Layout) -> list[Path]:
    """Copy `layout.report_sources` into `layout.inputs` (replaced whole); return the copies."""
    into = dataclasses.replace(layout, gathered=True)
    pairs = list(zip(layout.report_sources, into.report_sources))
    missing = [src for src, _ in pairs if not src.exists() and src.name not in OPTIONAL]
    if missing:
        raise DataError("gather: missing " + ", ".join(map(str, missing)) + "; the train, evaluate "
                        "and binarize stages write them (`dvc repro` runs them)")
    written = []
    with atomic_dir(layout.inputs) as tmp:
        for src, dst in pairs:
            if not src.exists():
                continue
            dst = tmp / dst.relative_to(layout.inputs)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copy2(src, dst)
            written.append(layout.inputs / dst.relative_to(tmp))
    return written


def command(root: Path = ROOT, study: str = STUDY) -> None:
    """Copy the report's inputs from data/ into reports/[<study>/]inputs/ (git tracks them)."""
    layout = Layout(root, study)
    written = gather(layout)
    n_files = sum(1 for p in layout.inputs.rglob("*") if p.is_file())
    print(f"gather: {n_files} files ({', '.join(p.name for p in written)}) -> {layout.inputs}")
