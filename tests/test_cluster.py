"""`stages.cluster`: the tiny study's stages on a real Dask cluster on loopback.

A `dask scheduler` process and two single-threaded `dask worker` processes (each its own local
directory), the project pushed to a bare git repo and a file DVC remote in a temp folder; real
`dvc`, `git` and training subprocesses throughout, nothing mocked.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from helpers import TINY_PARAMS, dvc, env_with_venv, make_project, ran_stages, sh

pytestmark = pytest.mark.slow

PARAMS = copy.deepcopy(TINY_PARAMS)
PARAMS["train"]["epochs"] = 1
PARAMS["decoders"] = {"linear": {"family": "linear"},
                      "pixelcnn_2": TINY_PARAMS["decoders"]["pixelcnn_2"]}
LONG = {**copy.deepcopy(PARAMS), "decoders": {"linear": {"family": "linear"}}}
LONG["train"]["epochs"] = 200
HISTORY = "data/history/linear/seed0/metrics.json"  # DVCLive rewrites it every epoch
ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
ROW = re.compile(r"^(\S+)\s+(ran|restored|pulled|unchanged)\s+([\d.]+)\s+([\d.]+)\s+(-?[\d.]+)\s+(\S+)$", re.M)
# A run takes 1-2 minutes on 2 idle cores; at nice 19 beside a training study it can take 10 times
# that, so the time limits only catch a hang.
SLOW_S = 1800
DASK = str(Path(sys.executable).parent / "dask")


class Cluster:
    """A scheduler and workers, each a process of its own, on 127.0.0.1."""

    def __init__(self, tmp: Path):
        self.tmp, self.procs, self.workers = tmp, [], {}
        file = tmp / "scheduler.json"
        self.start([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                    "--scheduler-file", str(file)], tmp / "scheduler.log")
        deadline = time.time() + 60
        while not file.exists() and time.time() < deadline:
            time.sleep(0.2)
        self.address = json.loads(file.read_text())["address"]

    def start(self, cmd: list[str], log: Path) -> subprocess.Popen:
        with open(log, "w") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen(cmd, env=env_with_venv(), stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def add_worker(self, name: str) -> None:
        folder = self.tmp / name
        folder.mkdir()
        proc = self.start([DASK, "worker", self.address, "--nthreads", "1", "--no-nanny", "--name", name,
                           "--no-dashboard", "--local-directory", str(folder)], self.tmp / f"{name}.log")
        self.workers[name] = proc

    def wait_for(self, n: int) -> dict[int, str]:
        """{pid: address} of the connected workers, once there are n."""
        from distributed import Client

        with Client(self.address, timeout="30s") as client:
            client.wait_for_workers(n, timeout=120)
            return {pid: address for address, pid in client.run(os.getpid).items()}

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def cluster(tmp_path):
    (tmp_path / "cluster").mkdir()
    c = Cluster(tmp_path / "cluster")
    try:
        c.add_worker("w0")
        c.add_worker("w1")
        c.wait_for(2)
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The tiny study committed (synthetic raw data as the frozen download stage's output)."""
    return make_project(tmp_path_factory.mktemp("template") / "study", PARAMS)


@pytest.fixture
def project(template, tmp_path) -> Path:
    return pushed_project(template, tmp_path)


def pushed_project(template: Path, tmp_path: Path) -> Path:
    """A copy of a study, pushed to a bare repo (origin), with a file remote as its default."""
    root = Path(shutil.copytree(template, tmp_path / "work", symlinks=True))
    sh(root, "git", "init", "-q", "--bare", str(tmp_path / "origin.git"))
    sh(root, "git", "remote", "add", "origin", str(tmp_path / "origin.git"))
    sh(root, "git", "push", "-q", "origin", "HEAD:refs/heads/main")
    dvc(root, "remote", "add", "--local", "-d", "store", str(tmp_path / "remote"))
    return root


def cluster_command(root: Path, *args: str) -> subprocess.Popen:
    """`python -m stages.cluster` (what `vae-study cluster` will be) on the project at `root`."""
    return subprocess.Popen([sys.executable, "-m", "stages.cluster", "--root", str(root),
                             "--scratch", str(root.parent / "scratch"), *args],
                            env=env_with_venv(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def run_cluster(root: Path, *args: str, check: bool = True) -> tuple[int, str]:
    proc = cluster_command(root, *args)
    out, _ = proc.communicate(timeout=SLOW_S)
    if check and proc.returncode != 0:
        raise AssertionError(f"the cluster run failed ({proc.returncode}):\n{out}")
    return proc.returncode, out


def outcomes(output: str) -> dict[str, tuple[str, str]]:
    """{stage: (outcome, worker)} from the command's closing table."""
    return {m[0]: (m[1], m[5]) for m in ROW.findall(output)}


def lock_outs(root: Path) -> dict[str, str]:
    """{output path: md5} from dvc.lock."""
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {o["path"]: o["md5"] for s in stages.values() for o in s.get("outs", [])}


UNTIMED = ("data/raw", "data/params.valid", "data/binarized", "data/models")  # same md5s in dvc.lock
TIMED = ("seconds", "seconds_std", "metrics_sha256")  # wall times, and a hash of a file holding one


def timeless(path: Path):
    """A file's content without the wall times the stages record (JSON keys, CSV columns)."""
    if path.suffix == ".json":
        return {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMED}
    if path.suffix == ".csv":
        return pd.read_csv(path).drop(columns=list(TIMED), errors="ignore").to_csv(index=False)
    return hashlib.md5(path.read_bytes()).hexdigest()


def outputs(root: Path) -> dict[str, object]:
    """Every output file of dvc.lock (directories walked), timeless; DVCLive's seconds.tsv left out."""
    files = {}
    for out in lock_outs(root):
        path = root / out
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file() and f.name != "seconds.tsv":
                files[str(f.relative_to(root))] = timeless(f)
    return files


def corrupt(odb: Path) -> list[str]:
    """Objects of a DVC cache or remote whose bytes do not hash to their name."""
    bad = []
    for f in (odb / "files/md5").rglob("*"):
        oid = f.parent.name + f.name
        named = f.is_file() and re.fullmatch(r"[0-9a-f]{32}(\.dir)?", oid)
        if named and hashlib.md5(f.read_bytes()).hexdigest() != oid.removesuffix(".dir"):
            bad.append(oid)
    return bad


def test_cluster_outputs_equal_a_serial_repro_of_the_same_commit(project, cluster, tmp_path):
    serial = Path(shutil.copytree(project, tmp_path / "serial", symlinks=True))
    dvc(serial, "repro", timeout=SLOW_S)  # one torch thread, as on the workers (the one_thread fixture)
    _, out = run_cluster(project, "--scheduler", cluster.address)
    rows = outcomes(out)
    assert {"train@linear-0", "train@pixelcnn_2-0", "evaluate@linear-0", "evaluate@pixelcnn_2-0"} <= set(rows)
    assert all(outcome == "ran" for outcome, _ in rows.values()), rows
    # the stage's own time, and the rest; the clock reads DVC's log every POLL_S, so a command that
    # starts and ends between two reads (the tiny binarize, on a fast CPU) shows 0.0
    commands = {}
    for stage, _, seconds, command, overhead, _ in ROW.findall(out):
        assert 0 <= float(command) < float(seconds) and float(overhead) > 0, (stage, seconds, command)
        commands[stage] = float(command)
    assert all(commands[s] > 0 for s in commands if s.startswith("train@")), commands
    assert re.search(r"critical path \d+ s: validate -> binarize -> train@\S+ -> evaluate@\S+\n", out), out
    # progress: a stage is 'started' when a worker executes it, not when it is queued there, so
    # no more run at once than the two single-threaded workers, and each starts before it ends
    assert max(int(n) for n in re.findall(r"(\d+) running", out)) <= 2, out
    for stage in rows:
        assert out.index(f"started  {stage} on") < out.index(f"] done (ran) {stage} on"), stage
    assert set(ran_stages(out.split("[cluster]")[-1])) <= {"gather", "report"}  # the workspace restored the rest
    ours, theirs = lock_outs(project), lock_outs(serial)
    assert set(ours) == set(theirs)
    untimed = {p for p in ours if p.startswith(UNTIMED)}
    assert untimed and {p: ours[p] for p in untimed} == {p: theirs[p] for p in untimed}
    assert outputs(project) == outputs(serial)  # models, images, curves, metrics, figures, report
    assert "up to date" in dvc(project, "status").stdout


def test_a_committed_lock_whose_outputs_are_not_on_the_remote_is_recomputed_not_an_error(
        project, cluster):
    """The study's own case, on a fresh clone: dvc.lock records a finished run whose outputs
    neither the workspace nor the cluster's remote holds (only the frozen raw data was pushed).
    Workers reproduce from the run-cache alone, so each stage runs once, no task sees an upstream
    stage recomputed, and the workspace's last step restores every stage from the run-cache
    instead of rerunning those whose committed outputs it could not pull."""
    dvc(project, "repro", timeout=SLOW_S)
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-q", "-m", "the study run, its lock and report committed")
    sh(project, "git", "push", "-q", "origin", "HEAD:refs/heads/main")
    dvc(project, "push", "download")  # the raw data, as a collaborator left it on the remote
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "data")
    dvc(project, "pull", "download")  # a fresh clone: its lock, the raw data, nothing else
    _, out = run_cluster(project, "--scheduler", cluster.address)
    rows = outcomes(out)
    assert {"train@linear-0", "evaluate@pixelcnn_2-0"} <= set(rows)
    assert all(outcome == "ran" for outcome, _ in rows.values()), rows
    last = out.split("[cluster]")[-1]
    assert set(ran_stages(last)) <= {"gather", "report"} and "is cached - skipping run" in last, last
    assert "up to date" in dvc(project, "status").stdout


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """The serial repro's torch threads as the workers' (bitwise equal results on one machine)."""
    for k, v in ONE_THREAD.items():
        monkeypatch.setenv(k, v)


@pytest.fixture(scope="module")
def long_template(tmp_path_factory) -> Path:
    """One rung trained for many tiny epochs: seconds of training, an epoch's metrics written each
    ~0.05 s, so a kill lands mid-stage."""
    return make_project(tmp_path_factory.mktemp("long") / "study", LONG)


def training_process(workers: dict[int, str], deadline: float):
    """(the `vae-study train` process, the worker pid it runs under) once one has logged an epoch."""
    while time.time() < deadline:
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if not (any(c.endswith("vae-study") for c in cmd) and "train" in cmd):
                continue
            owner = next((p.pid for p in proc.parents() if p.pid in workers), None)
            with contextlib.suppress(psutil.Error):
                if owner and (Path(proc.cwd()) / HISTORY).exists():
                    return proc, owner
        time.sleep(0.05)
    raise AssertionError("no training process on a worker logged an epoch")


def test_a_worker_killed_mid_stage_has_its_task_rerun_on_the_other_and_pushes_nothing_half_written(
        long_template, cluster, tmp_path):
    root = pushed_project(long_template, tmp_path)
    workers = cluster.wait_for(2)
    coordinator = cluster_command(root, "--scheduler", cluster.address)
    trainer, victim = training_process(workers, time.time() + SLOW_S)
    clone = Path(trainer.cwd())
    os.kill(victim, signal.SIGKILL)
    _, alive = psutil.wait_procs([trainer], timeout=10)
    assert alive == [], "the killed worker's training process outlived it by 10 s"
    last_epoch = json.loads((clone / HISTORY).read_text())["step"]  # step = epoch, from 1
    assert last_epoch < LONG["train"]["epochs"], "the kill came after training had finished"
    out, _ = coordinator.communicate(timeout=SLOW_S)
    assert coordinator.returncode == 0, out
    outcome, worker = outcomes(out)["train@linear-0"]
    assert outcome == "ran" and worker != workers[victim] and worker in workers.values()
    assert corrupt(tmp_path / "remote") == []
    assert "up to date" in dvc(root, "status").stdout


def test_a_coordinator_killed_and_rerun_restores_every_finished_stage_and_recomputes_none(project, cluster):
    first = cluster_command(project, "--scheduler", cluster.address)
    finished = []
    for line in first.stdout:  # the coordinator prints each stage as it finishes
        if m := re.match(r"\[cluster\] done \(\w+\) (\S+)", line):
            finished.append(m[1])
            if m[1].startswith("train@"):
                break
    first.kill()
    first.wait()
    assert finished and finished[-1].startswith("train@"), finished
    _, out = run_cluster(project, "--local", "2")  # another cluster: the run-cache is where they meet
    rows = outcomes(out)
    assert {stage: rows[stage][0] for stage in finished} == {stage: "restored" for stage in finished}
    assert set(ran_stages(out.split("[cluster]")[-1])) <= {"gather", "report"}
    assert "up to date" in dvc(project, "status").stdout


def test_a_dirty_tree_is_refused_naming_the_dirty_paths(project):
    (project / "params.yaml").write_text((project / "params.yaml").read_text() + "\n# edited\n")
    (project / "notes.txt").write_text("untracked\n")
    code, out = run_cluster(project, "--scheduler", "tcp://127.0.0.1:1", check=False)
    assert code == 1 and "dirty" in out and "params.yaml" in out and "notes.txt" in out
    assert "Traceback" not in out


def test_a_commit_missing_from_the_git_url_is_refused_before_any_work(project):
    (project / "notes.txt").write_text("committed, never pushed\n")
    sh(project, "git", "add", "notes.txt")
    sh(project, "git", "commit", "-q", "-m", "local only")
    code, out = run_cluster(project, "--local", "1", check=False)  # refused before the cluster starts
    assert code == 1 and "is not on" in out and "origin.git" in out and "git push" in out, out


def test_an_unreachable_scheduler_is_refused_within_seconds_naming_it(project):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    start = time.time()
    code, out = run_cluster(project, "--scheduler", address, "--connect-timeout", "2", check=False)
    assert code == 1 and address in out and "Traceback" not in out
    assert time.time() - start < 20, "imports, the stage graph and a 2 s connect timeout"


def test_stages_the_run_cache_cannot_carry_are_refused_by_name(tmp_path):
    from stages.cluster import plan, stage_graph
    from stages.errors import StudyError

    root = tmp_path / "p"
    root.mkdir()
    sh(root, "git", "init", "-q")
    dvc(root, "init", "-q")
    (root / "in.txt").write_text("x\n")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "fine": {"cmd": "cp in.txt a.txt", "deps": ["in.txt"], "outs": ["a.txt"]},
        "kept": {"cmd": "cp a.txt b.txt", "deps": ["a.txt"], "outs": [{"b.txt": {"persist": True}}]},
        "always": {"cmd": "cp a.txt c.txt", "deps": ["a.txt"], "outs": ["c.txt"], "always_changed": True},
        "nodeps": {"cmd": "echo > d.txt", "outs": ["d.txt"]},
    }}))
    with pytest.raises(StudyError) as refused:
        plan(stage_graph(root, "dvc.yaml"))
    message = str(refused.value)
    assert "kept (persist: true)" in message and "always (always_changed)" in message
    assert "nodeps (no deps)" in message and "fine" not in message


def small_dvc_project(root: Path, stages: dict) -> Path:
    """A git + DVC project of shell stages (no training), committed."""
    root.mkdir()
    sh(root, "git", "init", "-q")
    dvc(root, "init", "-q")
    (root / "in.txt").write_text("x\n")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-q", "-m", "stages")
    return root


def test_a_failing_stage_fails_the_run_naming_it_and_pushes_nothing_of_it(cluster, tmp_path):
    root = small_dvc_project(tmp_path / "p", {
        "fine": {"cmd": "cp in.txt a.txt", "deps": ["in.txt"], "outs": ["a.txt"]},
        "broken": {"cmd": "cp a.txt b.txt && echo the stage broke >&2 && false", "deps": ["a.txt"],
                   "outs": ["b.txt"]},
    })
    dvc(root, "remote", "add", "--local", "-d", "store", str(tmp_path / "remote"))
    code, out = run_cluster(root, "--scheduler", cluster.address, check=False)
    assert code == 1 and "Traceback" not in out, out
    assert "done (ran) fine" in out and "FAILED broken" in out
    assert re.search(r"broken: `dvc repro --pull broken` failed .*the stage broke", out, re.DOTALL), out
    pushed = {yaml.safe_load(f.read_text())["outs"][0]["path"] for f in (tmp_path / "remote/runs").rglob("*")
              if f.is_file()} if (tmp_path / "remote/runs").exists() else set()
    assert pushed == {"a.txt"}, "the run-cache holds the finished stage only"
    assert not (root / "dvc.lock").exists(), "the workspace is left as it was"


def test_gpu_stages_request_a_gpu_worker_and_wait_for_one(tmp_path):
    """With --gpu, train and evaluate tasks carry the resource GPU=1: on a cluster without such a
    worker they stay unassigned, while the others run (here they fail: no such commit)."""
    from distributed import Client, LocalCluster

    from stages.cluster import Stage, Task, submit

    order = [Stage("validate", (), False, False, ""), Stage("train@linear-0", (), False, False, "")]
    task = Task("", str(tmp_path / "none.git"), "0" * 40, "store", str(tmp_path), str(tmp_path), 1, True, "t", ())
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            Client(lc) as client:
        futures = submit(client, order, task)
        time.sleep(3)  # the scheduler has seen both; the validate task has failed
        restrictions = client.run_on_scheduler(
            lambda dask_scheduler: {k: ts.resource_restrictions for k, ts in dask_scheduler.tasks.items()})
        assert restrictions[futures["train@linear-0"].key] == {"GPU": 1}
        assert not restrictions[futures["validate"].key]
        assert futures["validate"].status == "error" and futures["train@linear-0"].status == "pending"
        client.cancel(list(futures.values()))


def test_the_critical_path_and_projected_wall_time_follow_the_stage_graph():
    from stages.cluster import critical_path, projected_wall

    # validate -> binarize -> four independent trainings, each with its evaluation
    upstream = {"v": (), "b": ("v",), **{f"t{i}": ("b",) for i in range(4)},
                **{f"e{i}": (f"t{i}",) for i in range(4)}}
    seconds = {"v": 1.0, "b": 2.0, "t0": 10.0, "t1": 4.0, "t2": 4.0, "t3": 4.0,
               "e0": 1.0, "e1": 1.0, "e2": 1.0, "e3": 1.0}
    assert critical_path(seconds, upstream) == (14.0, ["v", "b", "t0", "e0"])
    assert projected_wall(seconds, upstream, 1) == sum(seconds.values())  # one worker: serial
    assert projected_wall(seconds, upstream, 54) == 14.0  # enough workers: the critical path
    # two workers: t0 (the longest path ahead) first on one, t1-t3 on the other (3 -> 15), and
    # the evaluations fill the gaps: 16 s, not the 17 of taking the trainings in name order
    assert projected_wall(seconds, upstream, 2) == 16.0


def test_run_cache_entries_reach_the_remote_whole_once_and_restore_in_another_task(tmp_path):
    """Each task's clone has its own run-cache beside the machine's shared objects; push_runs puts
    the entries the remote lacks there whole (never a temp name under runs/, never rewriting one),
    and another task's `dvc repro --pull` restores the stage from them instead of running it."""
    from stages.cluster import INCOMING, Task, clone_commit, push_runs, task_cache

    root = small_dvc_project(tmp_path / "p", {
        "fine": {"cmd": "cp in.txt a.txt", "deps": ["in.txt"], "outs": ["a.txt"]},
        "next": {"cmd": "cp a.txt b.txt", "deps": ["a.txt"], "outs": ["b.txt"]},
    })
    remote = tmp_path / "remote"
    commit = sh(root, "git", "rev-parse", "HEAD").stdout.strip()
    task = Task("", str(root), commit, "store", str(remote), "", 1, False, "t", ())
    scratch, clones = tmp_path / "scratch", tmp_path / "scratch" / "clones"
    clones.mkdir(parents=True)
    first, second = clones / "fine-1", clones / "next-2"
    cache = task_cache(scratch, first)
    clone_commit(task, first, cache)
    dvc(first, "repro", "fine")
    (cache / "runs" / ".half-written.tmp").write_text("cmd: cp in")  # DVC's own temp files stay home
    dvc(first, "push", "-r", "store", "fine")
    pushed = push_runs(first, "store")
    entries = sorted(f for f in (remote / "runs").rglob("*") if f.is_file())
    assert [f.relative_to(remote).as_posix() for f in entries] == pushed and len(pushed) == 1, pushed
    assert entries[0].read_bytes() == (cache / pushed[0]).read_bytes()
    assert not [f for f in (remote / INCOMING).rglob("*") if f.is_file()]
    mtime = entries[0].stat().st_mtime_ns
    assert push_runs(first, "store") == [] and entries[0].stat().st_mtime_ns == mtime

    other = task_cache(scratch, second)
    assert (other / "files").resolve() == (cache / "files").resolve() and other != cache
    clone_commit(task, second, other)
    out = dvc(second, "repro", "--pull", "next").stdout
    assert "Stage 'fine' is cached" in out and "Running stage 'fine'" not in out, out
    assert not (other / "runs" / ".half-written.tmp").exists()
    shutil.rmtree(cache)
    assert (scratch / "cache" / "files").is_dir(), "removing a task's cache keeps the shared objects"
