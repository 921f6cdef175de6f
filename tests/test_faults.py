"""Faults: kill -9 mid-training, two repros at once, unwritable folders, a full disk."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from helpers import TINY_PARAMS, build_tiny_study, dvc, env_with_venv, make_project, run_stage

from stages import evaluate
from stages.errors import OutputError
from stages.layout import Layout
from stages.live import read_history

pytestmark = pytest.mark.slow

SLOW_RUNG = "pixelcnn_2"  # made slow enough below that a kill lands mid-run


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    params = copy.deepcopy(TINY_PARAMS)
    params["train"]["epochs"] = 6
    params["decoders"][SLOW_RUNG].update(channels=32, n_layers=4)
    root = make_project(tmp_path_factory.mktemp("faults") / "study", params)
    dvc(root, "repro", "binarize")
    return root


def start_repro(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dvc", "repro", *args], cwd=root,
                            env=env_with_venv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"finished before {path} appeared:\n{proc.communicate()[0]}"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.005)


def test_kill_9_mid_training_then_repro_resumes_and_matches_an_uninterrupted_run(project, tmp_path):
    reference = Path(shutil.copytree(project, tmp_path / "reference", symlinks=True))
    target = f"train@{SLOW_RUNG}-0"
    scratch = project / f".scratch/train/{SLOW_RUNG}-seed0.pt"

    proc = start_repro(project, target)
    wait_for(scratch, proc)  # at least one epoch finished and saved
    stage = [p for p in psutil.Process(proc.pid).children(recursive=True)
             if "train" in p.cmdline() and SLOW_RUNG in p.cmdline()]
    assert stage, "the training process was not found"
    for p in stage:
        p.send_signal(signal.SIGKILL)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, output
    assert not (project / f"data/models/{SLOW_RUNG}/seed0.pt").exists()

    resumed = dvc(project, "repro", target).stdout
    done = int(re.search(rf"resuming {SLOW_RUNG} seed 0 after epoch (\d+)", resumed).group(1))
    assert 1 <= done < 6
    assert not scratch.exists()  # removed on success
    dvc(reference, "repro", target)  # the same stage, never interrupted

    def model_hash(root: Path) -> str:
        lock = yaml.safe_load((root / "dvc.lock").read_text())
        [model] = [o for o in lock["stages"][target]["outs"] if o["path"].startswith("data/models/")]
        return model["md5"]

    assert model_hash(project) == model_hash(reference)
    history = [read_history(Layout(root).history(SLOW_RUNG, 0)).drop(columns="seconds")
               for root in (project, reference)]
    assert list(history[0]["epoch"]) == list(range(1, 7))  # the resumed run logged every epoch
    pd.testing.assert_frame_equal(history[0], history[1])


def test_a_second_repro_while_one_runs_fails_cleanly_on_the_lock(project):
    target = f"train@{SLOW_RUNG}-0"
    first = start_repro(project, "--force", target)
    try:
        wait_for(project / f".scratch/train/{SLOW_RUNG}-seed0.pt", first)
        second = dvc(project, "repro", "train@linear-0", check=False, timeout=120)
        assert second.returncode != 0 and "Traceback" not in second.stderr
        # DVC's lock message: the repo lock, or the read/write lock on the stage's files
        assert re.search(r"Unable to acquire lock|is busy, it is being blocked by",
                         second.stderr), second.stderr
    finally:
        output = first.communicate(timeout=300)[0]
    assert first.returncode == 0, output
    status = dvc(project, "status", target).stdout
    assert "changed" not in status  # the first run finished and recorded its outputs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    params, layout = build_tiny_study(root)
    evaluate.run(params, "linear", 0, layout, progress=False)
    return params, layout


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_unwritable_output_folder_is_a_clear_error_and_earlier_outputs_stay(trained):
    params, layout = trained
    before = snapshot(layout.root / "data")
    blocker = layout.metrics("pixelcnn_2", 0).parent
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the output folder should be")
    try:
        with pytest.raises(OutputError, match="cannot write to output folder"):
            evaluate.run(params, "pixelcnn_2", 0, layout, progress=False)
    finally:
        blocker.unlink()
    after = snapshot(layout.root / "data")
    assert {k: v for k, v in after.items() if k != str(blocker.relative_to(layout.root / "data"))} == before
    if os.geteuid() != 0:  # permissions bind everyone but root
        locked = layout.metrics("linear", 0).parent
        locked.chmod(0o555)
        try:
            with pytest.raises(OutputError, match="cannot write"):
                evaluate.run(params, "linear", 0, layout, progress=False)
        finally:
            locked.chmod(0o755)


def run_stage_limited(root: Path, args: list[str], file_size_limit: int) -> subprocess.CompletedProcess:
    """Run a stage command whose writes fail past `file_size_limit` bytes (EFBIG), as a
    nearly full disk would make them fail."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return run_stage(root, *args, preexec_fn=limit)


def test_a_failing_write_is_a_clear_error_and_leaves_earlier_outputs_intact(trained):
    params, layout = trained
    model = layout.model("linear", 0)
    before = model.read_bytes()
    proc = run_stage_limited(layout.root, ["train", "linear"], file_size_limit=20_000)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot write" in proc.stderr and "File too large" in proc.stderr
    assert model.read_bytes() == before
    assert not [p for p in model.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_is_reported_as_such(trained, tmp_path):
    params, layout = trained
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs privileges this machine does not grant")
    try:
        shutil.copytree(layout.root / "data/binarized", disk / "data/binarized")
        shutil.copy(layout.root / "params.yaml", disk / "params.yaml")
        earlier = disk / "data/models/linear/seed0.pt"
        earlier.parent.mkdir(parents=True)
        earlier.write_bytes(b"an earlier model")
        proc = run_stage(disk, "train", "linear")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "disk full while writing" in proc.stderr
        assert earlier.read_bytes() == b"an earlier model"
        assert not [p for p in disk.rglob("*.tmp")]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_an_evaluation_failing_midway_leaves_the_earlier_one_whole(trained, tmp_path):
    """A write failing after some of a new evaluation's files are written (a nearly full disk)
    leaves every file of the earlier evaluation as it was, metrics included: never new files
    beside old metrics, and no temp folder behind."""
    params, layout = trained
    root = Path(shutil.copytree(layout.root, tmp_path / "copy", symlinks=True))
    copied = Layout(root)
    eval_dir, metrics = copied.eval_dir("linear", 0), copied.metrics("linear", 0)
    before, metrics_before = snapshot(eval_dir), metrics.read_bytes()
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["evaluate"]["k"] = 4  # another evaluation: other numbers in every file
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sizes = {name: len(data) for name, data in before.items()}
    written_first = max(sizes["k_curve.csv"], sizes["latent_dims.csv"])  # evaluate writes these first
    assert written_first + 200 < sizes["per_image.csv"], sizes
    proc = run_stage_limited(root, ["evaluate", "linear"], file_size_limit=written_first + 200)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot write" in proc.stderr and "File too large" in proc.stderr
    assert snapshot(eval_dir) == before and metrics.read_bytes() == metrics_before, proc.stderr
    assert not [p for p in eval_dir.parent.iterdir() if p.name != eval_dir.name]  # no temp folder

    done = run_stage(root, "evaluate", "linear")  # the same evaluation with room: all new, whole
    assert done.returncode == 0, done.stderr
    assert snapshot(eval_dir)["k_curve.csv"] != before["k_curve.csv"]
    info = json.loads((eval_dir / "info.json").read_text())
    assert info["metrics_sha256"] == hashlib.sha256(metrics.read_bytes()).hexdigest()
    assert info["code_sha256"] == evaluate.code_sha256()
