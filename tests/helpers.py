"""Synthetic data and small builders shared by the tests (no real MNIST needed)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from stages import binarize, train
from stages.checkpoint import load_checkpoint
from stages.data import Split
from stages.idx import write_idx
from stages.layout import Layout
from stages.params import parse_params
from stages.model import build_model

RAW_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images (n,28,28) uint8 of ten class templates (blurred strokes) plus noise, and labels."""
    rng = np.random.default_rng(1234)  # the templates are the same for every split
    templates = np.zeros((10, 28, 28))
    for c in range(10):
        for _ in range(3):  # three random strokes per class
            r0, c0 = rng.integers(4, 24, size=2)
            dr, dc = rng.integers(-1, 2, size=2)
            for t in range(12):
                r, cc = np.clip(r0 + dr * t, 2, 25), np.clip(c0 + dc * t, 2, 25)
                templates[c, r - 2:r + 2, cc - 2:cc + 2] = 1.0
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    noise = rng.random((n, 28, 28)) * 0.3
    x = np.clip(templates[labels] * rng.uniform(0.6, 1.0, size=(n, 1, 1)) + noise - 0.15, 0, 1)
    return (x * 255).round().astype(np.uint8), labels.astype(np.uint8)


def write_synthetic_mnist(raw_dir: Path, n_train: int = 600, n_test: int = 200) -> Path:
    raw_dir.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x, y = synthetic_digits(n, seed)
        write_idx(raw_dir / RAW_NAMES[split][0], x)
        write_idx(raw_dir / RAW_NAMES[split][1], y)
    return raw_dir


TINY_PARAMS = {
    "binarize": {"method": "static", "seed": 0, "valid_size": 100, "train_subset": None},
    "encoder": {"latent_dim": 4, "hidden": [32]},
    "train": {"epochs": 2, "batch_size": 50, "lr": 0.003, "precision": "fp32", "valid_subset": None,
              "patience": None, "min_delta_nats": 0.0},
    "evaluate": {"k": 8, "n_test": 40, "batch_size": 20, "chunk_size": 40, "precision": "fp32",
                 "probe_train_size": 200, "mi_samples": 2, "active_unit_threshold": 0.01,
                 "n_show": 3, "seed": 0},
    "report": {"collapse_threshold_nats": 1.0},
    "seeds": [0],
    "decoders": {
        "linear": {"family": "linear"},
        "pixelcnn_2": {"family": "pixelcnn", "n_layers": 2, "channels": 4, "first_kernel_size": 3},
    },
}


def tiny_params(**overrides):
    """The tiny study's params (validated), with top-level sections replaced by overrides."""
    raw = {**TINY_PARAMS, **overrides}
    return parse_params(raw)


def tiny_model(params, name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(params.rung(name), params.encoder)


# --- tiny DVC projects --------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("dvc.yaml", ".dvcignore", ".gitignore", "reference", "stages")


def env_with_venv() -> dict[str, str]:
    """The environment for subprocesses: this interpreter's bin first on PATH (vae-study, dvc)."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.org"}


def sh(cwd: Path, *args: str, check: bool = True, timeout: float = 600):
    proc = subprocess.run(list(args), cwd=cwd, env=env_with_venv(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_stage(root: Path, *args: str, preexec_fn=None) -> subprocess.CompletedProcess:
    """`python -m stages <args>` on the project at `root` (its params.yaml), no progress bars."""
    return subprocess.run([sys.executable, "-m", "stages", *args, "--root", str(root), "--params",
                           str(root / "params.yaml"), "--no-progress"], preexec_fn=preexec_fn,
                          env=env_with_venv(), capture_output=True, text=True, timeout=300)


def dvc(cwd: Path, *args: str, check: bool = True, timeout: float = 600):
    return sh(cwd, sys.executable, "-m", "dvc", *args, check=check, timeout=timeout)


def built_study(root: Path, params: dict) -> tuple[Path, str]:
    """make_project, one full `dvc repro` and a commit of its results: (root, repro's stdout)."""
    root = make_project(root, params)
    out = dvc(root, "repro").stdout
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-q", "-m", "results")
    return root, out


def private_copy(built: Path, tmp_path: Path) -> Path:
    """A copy of a built study, git history and DVC cache included, for a test to change."""
    return Path(shutil.copytree(built, tmp_path / "copy", symlinks=True))


def make_project(root: Path, params: dict) -> Path:
    """A git + DVC project with this repo's pipeline, the given params and synthetic raw data
    committed as the download stage's output; the download stage is frozen (no network)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(root, "git", "init", "-q")
    dvc(root, "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    raw = write_synthetic_mnist(root / "data/raw")
    (raw / "sources.json").write_text(json.dumps({"note": "synthetic test data"}))
    dvc(root, "commit", "-f", "-q", "download")
    dvc(root, "freeze", "download")  # never fetch real MNIST here, not even on --force
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-q", "-m", "tiny study")
    return root


def stage_status(root: Path) -> set[str]:
    """Names of the stages `dvc status` marks as changed."""
    return set(json.loads(dvc(root, "status", "--json").stdout or "{}"))


def downstream(root: Path, stages: set[str]) -> set[str]:
    """The stages and everything downstream of them in `dvc dag`."""
    edges = re.findall(r'"([^"]+)" -> "([^"]+)"', dvc(root, "dag", "--dot").stdout)
    reached, frontier = set(stages), list(stages)
    while frontier:
        node = frontier.pop()
        for a, b in edges:
            if a == node and b not in reached:
                reached.add(b)
                frontier.append(b)
    return reached


def stale_code(root: Path, pipeline: str = "dvc.yaml") -> dict[str, list[str]]:
    """Per stage of `pipeline`, what its dvc.lock entry records that the checkout no longer
    ships, by `dvc status`: a code dep under stages/ modified, a params file or key changed, the
    command changed. Data a fresh clone lacks (deleted deps, outputs not in the cache) is not
    stale code and is left out."""
    status = json.loads(dvc(root, "status", pipeline, "--json").stdout or "{}")
    stale: dict[str, list[str]] = {}
    for stage, changes in status.items():
        found = []
        for change in changes:
            if change == "changed command":
                found.append("its command")
            elif isinstance(change, dict):
                for path, what in change.get("changed deps", {}).items():
                    if isinstance(what, dict) or path.endswith("params.yaml"):  # params: {key: change}
                        found.append(f"{path} ({what})")
                    elif what == "modified" and path.startswith("stages/"):
                        found.append(path)
        if found:
            stale[stage] = found
    return stale


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def build_tiny_study(root: Path, params_raw: dict | None = None):
    """Synthetic data, binarized and every rung trained, in-process (no DVC). -> params, layout"""
    raw = params_raw or TINY_PARAMS
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params, layout = parse_params(raw), Layout(root)
    write_synthetic_mnist(layout.raw)
    binarize.run(layout.raw, layout.binarized, layout.binarized_summary, params.binarize)
    for name in params.decoders:
        train.run(params, name, 0, layout, progress=False)
    return params, layout



# --- interrupting a training run ----------------------------------------------------------

@dataclasses.dataclass
class InterruptedSplit(Split):
    """A training split whose process gets a real SIGINT (Ctrl-C) at the first batch it is
    asked for once `resume` holds epoch `after_epoch`: the run is interrupted early in the
    next epoch, after that epoch's resume state was saved. The images are the split's own, so
    the run is the real one up to the interruption. Use it with `pytest.raises(KeyboardInterrupt)`."""

    resume: Path | None = None
    after_epoch: int = 1
    _seen: tuple[int, int, int] | None = None  # the resume file last read: (inode, mtime, size)

    def images(self, index, generator=None):
        if self.resume is not None and self.resume.exists():
            stat = self.resume.stat()
            seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if seen != self._seen:  # written since it was last read: one more epoch saved
                self._seen = seen
                if load_checkpoint(self.resume)["epoch"] >= self.after_epoch:
                    _ctrl_c()
        return super().images(index, generator)


def _ctrl_c() -> None:
    """A real SIGINT to this process, handled as at a terminal. Python keeps SIGINT ignored when it
    starts ignored (any launch with `&` or `nohup`), and then the signal would do nothing; so
    Python's own handler is in place while it is raised (raise_signal runs it before returning)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)


def interrupted(split: Split, resume: Path, after_epoch: int = 1) -> InterruptedSplit:
    """`split`, interrupted once `resume` holds epoch `after_epoch` (see InterruptedSplit)."""
    return InterruptedSplit(split.x, split.labels, split.dynamic, resume=resume, after_epoch=after_epoch)
