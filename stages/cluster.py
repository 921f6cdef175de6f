"""A pipeline's stages on a Dask distributed cluster, meeting in DVC's remote and run-cache.

DVC runs one stage at a time, and two DVC processes in one workspace collide on its lock: it has
no parallel stage execution (treeverse/dvc#755). Its maintainers' advice (treeverse/dvc#4876) is
one git clone per worker, the clones sharing a cache. This command does that with Dask:

* the coordinator (this command, in the user's workspace) reads the stage graph from DVC and
  refuses what a worker could not reproduce: a dirty git tree (workers see the commit, not the
  working copy) and stages the run-cache cannot carry (no deps or no outs, `persist`,
  `always_changed`). It submits one task per stage, its upstream stages' futures as arguments;
* a task clones the commit into scratch, with the machine's shared object store and a run-cache
  of its own (`task_cache`), and runs `dvc repro --pull <stage>` in its own process group: the
  upstream stages, finished by other tasks, restore from the run-cache, and the task fails naming
  any upstream stage that ran instead. Only then it pushes the stage's outputs and its run-cache
  entries, each renamed into place whole (`push_runs`): a worker killed mid-stage pushes nothing,
  and the scheduler reruns its task elsewhere;
* at the end `dvc repro --pull` in the workspace restores every stage from the run-cache; the
  stages with git-tracked outputs (`cache: false`: gather and the report), which DVC keeps out of the
  run-cache, run there. Only the coordinator writes dvc.lock.

A coordinator killed and rerun finds the finished stages in the run-cache and recomputes none.
GPU stages (`--gpu`, default on when VAE_STUDY_DEVICE asks for cuda): train and evaluate tasks
request the resource GPU=1, so start each worker with `--resources GPU=1` and its own
CUDA_VISIBLE_DEVICES (a `--local` worker without one gets its ordinal). docs/cluster.md has the
usage, the design and the pitfalls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import typer

from stages.errors import StudyError

GPU_STAGES = ("train", "evaluate")  # the stages that run torch on VAE_STUDY_DEVICE
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
POLL_S = 0.5
INCOMING = ".vae-study-incoming"  # on the remote, beside runs/: run-cache entries on their way in
# The task's process group: the command in the background, and a watcher that kills the whole
# group (SIGKILL to pid 0) once the worker that started it is no longer this shell's parent: it
# died, however (a SIGKILLed worker's children are re-parented at once, even while it is a zombie
# that `kill -0` still finds; that test is the fallback where /proc is absent).
GROUP_SCRIPT = """watched=$1; shift
parent() { if [ -r /proc/$$/stat ]; then set -- $(cat /proc/$$/stat); echo "$4";
           elif kill -0 "$watched" 2>/dev/null; then echo "$watched"; fi; }
"$@" & job=$!
(while [ "$(parent)" = "$watched" ]; do sleep 1; done; kill -KILL 0) & watcher=$!
wait "$job"; rc=$?
kill "$watcher" 2>/dev/null
exit "$rc"
"""


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # DVC's addressing: `train@mlp-0`, `profiles/grid/dvc.yaml:train@...`
    upstream: tuple[str, ...]  # the stages whose outputs it reads directly
    frozen: bool
    in_git: bool  # has outputs git tracks (cache: false): DVC keeps it out of the run-cache
    refusal: str  # why the run-cache cannot carry it ("" when it can)

    @property
    def base(self) -> str:
        return self.name.rpartition(":")[2].split("@", 1)[0]


@dataclasses.dataclass(frozen=True)
class Task:
    """What a worker needs to reproduce one stage of one commit."""
    stage: str
    git_url: str
    commit: str
    remote: str
    remote_url: str
    scratch: str  # "" for the machine's default
    threads: int
    gpu: bool
    run_id: str  # names the run's cancel Event
    frozen: tuple[str, ...]  # the pipeline's frozen stages, whose lock entries workers keep


# --- the coordinator's checks -------------------------------------------------------------

def run(cmd: list[str], cwd: Path | str, env: dict | None = None, check: bool = True) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise StudyError(f"`{' '.join(cmd)}` failed in {cwd} ({done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout + done.stderr


def dirty_paths(root: Path) -> list[str]:
    """Changed, staged and untracked paths: what a clone of HEAD would not see."""
    out = run(["git", "status", "--porcelain", "--untracked-files=all"], root)
    return [line[3:] for line in out.splitlines() if line.strip()]


def refuse_dirty(root: Path) -> None:
    if paths := dirty_paths(root):
        shown = ", ".join(paths[:10]) + (f" and {len(paths) - 10} more" if len(paths) > 10 else "")
        raise StudyError(f"the git tree at {root} is dirty ({shown}): workers clone the commit, "
                         "not the working copy; commit or stash these first")


def refusal(stage) -> str:
    """Why DVC's run-cache cannot carry this dvc.stage.Stage from a worker ("" if it can)."""
    if stage.always_changed:
        return "always_changed"
    if not stage.deps or not stage.outs:
        return "no deps" if not stage.deps else "no outs"
    if any(out.persist for out in stage.outs):
        return "persist: true"
    return ""


def stage_graph(root: Path, pipeline: str) -> dict[str, Stage]:
    """The pipeline's stages and every stage upstream of them, from DVC's own graph."""
    import networkx as nx
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(".") as repo:  # addressing relative to the project root
        graph = repo.index.graph  # edges run from a stage to the stages it depends on
        targets = repo.stage.collect(pipeline)
        wanted = set(targets).union(*(nx.descendants(graph, s) for s in targets))
        return {s.addressing: Stage(s.addressing, tuple(sorted(u.addressing for u in graph.successors(s))),
                                    s.frozen, any(not o.use_cache and not (o.is_metric or o.is_plot)
                                                  for o in s.outs), refusal(s))
                for s in wanted}


def plan(stages: dict[str, Stage]) -> list[Stage]:
    """The stages the cluster runs, upstream first; refuses those it cannot carry."""
    cluster = {n: s for n, s in stages.items() if not s.frozen and not s.in_git}
    if bad := sorted(f"{n} ({s.refusal})" for n, s in cluster.items() if s.refusal):
        raise StudyError("the run-cache cannot carry these stages from a worker: " + ", ".join(bad))
    if bad := sorted(n for n, s in cluster.items() if any(stages[u].in_git for u in s.upstream)):
        raise StudyError("these stages read outputs that git tracks (cache: false), which only the "
                         "coordinator writes: " + ", ".join(bad))
    order, done = [], set()
    while len(order) < len(cluster):
        ready = sorted(n for n, s in cluster.items()
                       if n not in done and all(u in done or u not in cluster for u in s.upstream))
        if not ready:  # DVC refuses cycles; this guards the loop
            raise StudyError("the stage graph has a cycle among: " + ", ".join(sorted(set(cluster) - done)))
        order += [cluster[n] for n in ready]
        done.update(ready)
    return order


def remote_url(root: Path, name: str | None) -> tuple[str, str]:
    """(name, url) of the DVC remote; it must be the workspace's default (the final `dvc repro
    --pull` pulls from that one)."""
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(".") as repo:
        default, remotes = repo.config["core"].get("remote"), repo.config["remote"]
    name = name or default
    if not name:
        raise StudyError("no DVC remote: add one (`dvc remote add -d NAME URL`) that every worker reaches")
    if name not in remotes:
        raise StudyError(f"no DVC remote named {name!r} (have: {', '.join(remotes) or 'none'})")
    if name != default:
        raise StudyError(f"--remote {name} is not this workspace's default remote ({default}); the final "
                         f"`dvc repro --pull` pulls from the default: `dvc remote default --local {name}`")
    return name, str(remotes[name]["url"])


def git_source(root: Path, git_url: str | None, commit: str) -> str:
    """Where workers clone from: --git-url, else origin, else the workspace itself (one machine)."""
    origin = subprocess.run(["git", "remote", "get-url", "origin"], cwd=root, capture_output=True, text=True)
    url = git_url or (origin.stdout.strip() if origin.returncode == 0 else "")
    if not url:
        return str(root.resolve())
    refs = [line.split()[0] for line in run(["git", "ls-remote", url], root).splitlines() if line.strip()]
    on_it = commit in refs or any(
        subprocess.run(["git", "merge-base", "--is-ancestor", commit, ref], cwd=root,
                       capture_output=True).returncode == 0 for ref in refs)
    if not on_it:
        raise StudyError(f"commit {commit[:12]} is not on {url}, where workers clone from: git push it")
    return url


# --- one task on a worker ------------------------------------------------------------------

def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def outcome(output: str, stage: str) -> str:
    """What DVC did with the stage: ran it, restored it from the run-cache, pulled or kept it."""
    quoted = re.escape(stage)
    if f"Running stage '{stage}'" in output:
        return "ran"
    if re.search(rf"Stage '{quoted}' is cached", output):
        return "restored"
    if re.search(rf"Pulling data for .*'{quoted}'", output):
        return "pulled"
    return "unchanged"


def scratch_dir(task: Task) -> Path:
    return Path(task.scratch or Path(tempfile.gettempdir()) / f"vae-study-cluster-{os.getuid()}")


def task_env(task: Task, clone: Path, worker_name) -> dict[str, str]:
    """The clone's code first on the path, this interpreter's tools on PATH, torch's threads capped."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
           "PYTHONPATH": str(clone), "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1",
           **{v: str(task.threads) for v in THREAD_VARIABLES}}
    if task.gpu and "CUDA_VISIBLE_DEVICES" not in os.environ and isinstance(worker_name, int):
        env["CUDA_VISIBLE_DEVICES"] = str(worker_name)  # a LocalCluster worker: its ordinal
    return env


class StageClock:
    """When DVC starts and ends the stage's own command, read from the log as DVC writes it (to
    POLL_S: a command that starts and ends between two reads counts 0 s): the rest of a task's
    time (clone, pulls, DVC's start-up, push) is the cluster's."""

    def __init__(self, log: Path, stage: str):
        self.log, self.marker, self.text = log, f"Running stage '{stage}'", ""
        self.started: float | None = None
        self.ended: float | None = None

    def __call__(self) -> None:
        if self.ended is not None or not self.log.exists():
            return
        self.text = self.log.read_text(errors="replace")
        now = time.perf_counter()
        if self.started is None and self.marker in self.text:
            self.started = now
        if self.started is not None and "lock file" in self.text.partition(self.marker)[2]:
            self.ended = now  # DVC records the stage in dvc.lock once its command has exited

    @property
    def seconds(self) -> float:
        return 0.0 if self.started is None else (self.ended or time.perf_counter()) - self.started


def run_in_group(cmd: list[str], cwd: Path, env: dict, log: Path, cancelled,
                 on_poll=lambda: None) -> tuple[int, str]:
    """Run cmd in a new process group, its output to `log`; the group is killed when the worker
    dies (GROUP_SCRIPT), when `cancelled()` turns true, or when this thread is interrupted."""
    with open(log, "w") as out:
        proc = subprocess.Popen(["sh", "-c", GROUP_SCRIPT, "sh", str(os.getpid()), *cmd], cwd=cwd, env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            while proc.poll() is None:
                if cancelled():
                    raise StudyError(f"cancelled: {' '.join(cmd)}")
                on_poll()
                time.sleep(POLL_S)
            on_poll()
        except BaseException:
            kill_group(proc.pid)
            proc.wait()
            raise
    return proc.returncode, log.read_text()


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def task_cache(scratch: Path, clone: Path) -> Path:
    """The clone's DVC cache: the machine's shared object store (`files/`, a link) and a run-cache
    (`runs/`) of its own. DVC's run-cache takes no lock: `dvc repro --pull` rewrites every entry
    through a temp file in the entry's folder (stage_cache.pull with force), and a restore reads the
    newest file of that folder, which can be another task's temp file, half-written or renamed away
    under it ("corrupted cache file '.../.XXXX.tmp'", then ENOENT: two tasks of one machine in one
    cache). Objects are named by their content and written by rename, so those are shared."""
    shared = scratch / "cache" / "files"
    shared.mkdir(parents=True, exist_ok=True)
    cache = clone.with_name(f"{clone.name}.cache")
    cache.mkdir()
    (cache / "files").symlink_to(shared.resolve(), target_is_directory=True)
    return cache


def push_runs(clone: Path, remote: str) -> list[str]:
    """The clone's run-cache entries the remote lacks, each uploaded under INCOMING and renamed into
    `runs/` whole; an entry there is never rewritten. (`dvc push --run-cache` rewrites every entry
    through a temp file inside its folder, where another task's `dvc repro --pull` lists and copies
    it half-written.) Push the outputs first: an entry names outputs a restore must find.
    -> the entries pushed, `runs/<k>/<key>/<value>`."""
    from dvc.fs import LocalFileSystem
    from dvc.repo import Repo

    with Repo(str(clone)) as repo:
        runs = Path(repo.cache.legacy.path) / "runs"
        odb = repo.cloud.get_remote_odb(remote, "push --run-cache", hash_name="md5-dos2unix")
        fs, pushed = odb.fs, []
        for entry in sorted(runs.rglob("*")) if runs.is_dir() else []:
            if not entry.is_file() or entry.name.startswith("."):  # DVC's own temp files
                continue
            rel = entry.relative_to(runs.parent).as_posix()
            dst = fs.join(odb.path, *rel.split("/"))
            if fs.exists(dst):
                continue
            tmp = fs.join(odb.path, INCOMING, uuid.uuid4().hex)
            fs.makedirs(fs.parent(tmp), exist_ok=True)
            fs.put_file(str(entry), tmp)
            fs.makedirs(fs.parent(dst), exist_ok=True)
            if isinstance(fs, LocalFileSystem):
                os.replace(tmp, dst)  # DVC's local mv passes through a temp name beside dst
            else:
                fs.mv(tmp, dst)
            pushed.append(rel)
        return pushed


def clone_commit(task: Task, clone: Path, cache: Path) -> None:
    """A clone of the commit, with `cache` as its DVC cache and pointed at the project's remote."""
    run(["git", "clone", "--quiet", "--no-checkout", task.git_url, str(clone)], clone.parent)
    run(["git", "checkout", "--quiet", "--detach", task.commit], clone)
    dvc = [sys.executable, "-m", "dvc"]
    run([*dvc, "cache", "dir", "--local", str(cache)], clone)
    run([*dvc, "remote", "add", "--local", "--force", "--default", task.remote, task.remote_url], clone)
    frozen_entries_only(clone, task.frozen)


def frozen_entries_only(clone: Path, frozen: tuple[str, ...], locks: list[Path] | None = None) -> None:
    """Drop from the lock files (default: every one in the clone) every stage but the frozen ones
    (whose outputs workers pull, never run). Stages meet through the run-cache alone: a committed
    lock names outputs of an earlier run that the cluster's remote need not hold, and DVC, failing
    to pull those, reruns the stage instead of restoring the run a task pushed (its run-cache
    restore takes an unchanged stage's lock entry over the run-cache)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    for lock in clone.rglob("dvc.lock") if locks is None else [p for p in locks if p.exists()]:
        pipeline = lock.relative_to(clone).with_name("dvc.yaml").as_posix()
        prefix = "" if pipeline == "dvc.yaml" else f"{pipeline}:"
        data = yaml.load(lock)
        data["stages"] = {n: s for n, s in (data.get("stages") or {}).items() if f"{prefix}{n}" in frozen}
        yaml.dump(data, lock)


def reproduce(task: Task, *upstream: dict) -> dict:
    """The Dask task: reproduce one stage in a scratch clone and push it to the run-cache."""
    from distributed import Event, get_worker

    worker, start = get_worker(), time.perf_counter()
    worker.log_event(started_topic(task.run_id), {"stage": task.stage, "worker": worker.address})
    scratch = scratch_dir(task)
    (scratch / "clones").mkdir(parents=True, exist_ok=True)
    clone = scratch / "clones" / f"{re.sub(r'[^A-Za-z0-9_-]', '_', task.stage)}-{uuid.uuid4().hex[:8]}"
    log = clone.parent / f"{clone.name}.log"
    cache = task_cache(scratch, clone)
    clone_commit(task, clone, cache)
    env, cancel = task_env(task, clone, worker.name), Event(f"cancel-{task.run_id}")
    dvc, clock = [sys.executable, "-m", "dvc"], StageClock(log, task.stage)
    rc, output = run_in_group([*dvc, "repro", "--pull", task.stage], clone, env, log, cancel.is_set, clock)
    if rc != 0:
        raise StudyError(f"`dvc repro --pull {task.stage}` failed on {worker.address} (log: {log}):\n"
                         f"{output[-3000:]}")
    if others := [s for s in ran_stages(output) if s != task.stage]:
        raise StudyError(f"stage {task.stage}: upstream stages were recomputed on {worker.address} "
                         f"instead of restored from the run-cache: {', '.join(others)}")
    rc, pushed = run_in_group([*dvc, "push", "-r", task.remote, task.stage], clone, env,
                              log.with_suffix(".push.log"), cancel.is_set)
    if rc != 0:
        raise StudyError(f"`dvc push {task.stage}` failed on {worker.address}:\n{pushed[-2000:]}")
    push_runs(clone, task.remote)
    shutil.rmtree(clone, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)  # unlinks files/, the shared store stays
    seconds = time.perf_counter() - start
    return {"stage": task.stage, "outcome": outcome(output, task.stage), "worker": worker.address,
            "seconds": round(seconds, 1), "command_s": round(clock.seconds, 1),
            "overhead_s": round(seconds - clock.seconds, 1)}


# --- the coordinator -----------------------------------------------------------------------

def connect(scheduler: str | None, local: int, gpu: bool, timeout_s: float):
    """A distributed Client: to the scheduler at `scheduler`, or to a new LocalCluster."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout=f"{timeout_s}s")
        except (OSError, TimeoutError) as e:
            raise StudyError(f"no Dask scheduler answered at {scheduler} within {timeout_s:g} s: "
                             f"{e}") from None
    cluster = LocalCluster(n_workers=local, threads_per_worker=1, processes=True, dashboard_address=None,
                           resources={"GPU": 1} if gpu else None)
    return Client(cluster)


def submit(client, order: list[Stage], task: Task) -> dict:
    """One future per stage, its upstream stages' futures as arguments (the DAG's edges)."""
    futures = {}
    for stage in order:
        upstream = [futures[u] for u in stage.upstream if u in futures]
        gpu = task.gpu and stage.base in GPU_STAGES
        futures[stage.name] = client.submit(
            reproduce, dataclasses.replace(task, stage=stage.name, gpu=gpu), *upstream,
            key=f"{stage.name}-{uuid.uuid4().hex[:8]}", pure=False, resources={"GPU": 1} if gpu else None)
    return futures


def started_topic(run_id: str) -> str:
    """The scheduler's event topic where a run's tasks say they started executing (the scheduler's
    `processing` also counts tasks merely queued on a worker)."""
    return f"vae-study-started-{run_id}"


def watch(client, futures: dict, run_id: str) -> tuple[list[dict], dict[str, str]]:
    """Wait for every future, printing each start, finish and failure as it happens."""
    results, failures, started, seen = [], {}, {}, 0
    while len(results) + len(failures) < len(futures):
        for name, future in futures.items():
            if name in failures or any(r["stage"] == name for r in results):
                continue
            if future.status == "finished":
                results.append(future.result())
            elif future.status in ("error", "cancelled"):
                failures[name] = str(future.exception()) if future.status == "error" else "cancelled"
            else:
                continue
            ended = {r["stage"] for r in results} | set(failures)
            running = len(set(started) - ended)
            left = len(futures) - len(ended) - running
            state = f"{len(results)} done, {running} running, {len(failures)} failed, {left} waiting"
            where = f" on {results[-1]['worker']}" if name not in failures else ""
            verb = f"done ({results[-1]['outcome']})" if name not in failures else "FAILED"
            print(f"[cluster] {verb} {name}{where} [{state}]", flush=True)
        events = client.get_events(started_topic(run_id))
        for _, event in events[seen:]:  # a task rerun after its worker died starts again elsewhere
            started[event["stage"]] = event["worker"]
            print(f"[cluster] started  {event['stage']} on {event['worker']}", flush=True)
        seen = len(events)
        time.sleep(POLL_S)
    return results, failures


def table(results: list[dict]) -> str:
    """Each stage's outcome, its task's seconds (the stage's own command, the rest) and worker."""
    width = max([len(r["stage"]) for r in results] + [5])
    rows = [f"{'stage':<{width}}  {'outcome':<9}  {'seconds':>7}  {'command':>7}  {'overhead':>8}  worker"]
    rows += [f"{r['stage']:<{width}}  {r['outcome']:<9}  {r['seconds']:>7.1f}  {r['command_s']:>7.1f}  "
             f"{r['overhead_s']:>8.1f}  {r['worker']}" for r in results]
    return "\n".join(rows)


PROJECTED_WORKERS = (2, 4, 16, 54)


def projection(results: list[dict], stages: dict[str, Stage]) -> str:
    """The run's critical path and its wall time projected onto more workers, from its tasks'
    measured seconds (overhead included)."""
    seconds = {r["stage"]: r["seconds"] for r in results}
    upstream = {n: stages[n].upstream for n in seconds}
    total, path = critical_path(seconds, upstream)
    walls = ", ".join(f"{w} workers {projected_wall(seconds, upstream, w):.0f} s" for w in PROJECTED_WORKERS)
    return (f"[cluster] critical path {total:.0f} s: {' -> '.join(path)}\n"
            f"[cluster] projected wall time (these tasks' seconds, one stage per worker at a time, "
            f"critical-path list scheduling): {walls}")


def critical_path(seconds: dict[str, float], upstream: dict[str, tuple[str, ...]]) -> tuple[float, list[str]]:
    """The longest chain of stages through the DAG, by their seconds: no number of workers runs
    the pipeline faster. -> (its seconds, its stages, upstream first)"""
    best: dict[str, tuple[float, list[str]]] = {}

    def longest(name: str) -> tuple[float, list[str]]:
        if name not in best:
            before = max((longest(u) for u in upstream.get(name, ()) if u in seconds), default=(0.0, []))
            best[name] = (before[0] + seconds[name], [*before[1], name])
        return best[name]

    return max((longest(n) for n in seconds), default=(0.0, []))


def projected_wall(seconds: dict[str, float], upstream: dict[str, tuple[str, ...]], workers: int) -> float:
    """The pipeline's wall time on `workers` workers, each running one stage at a time at its
    measured seconds (no contention between workers: one core each), a free worker always taking
    the ready stage with the longest path still ahead of it (critical-path list scheduling)."""
    downstream = {n: [m for m in seconds if n in upstream.get(m, ())] for n in seconds}
    ahead: dict[str, float] = {}

    def tail(name: str) -> float:
        if name not in ahead:
            ahead[name] = seconds[name] + max((tail(m) for m in downstream[name]), default=0.0)
        return ahead[name]

    finish: dict[str, float] = {}
    free = [0.0] * workers
    while len(finish) < len(seconds):
        ready = [n for n in seconds if n not in finish
                 and all(u in finish for u in upstream.get(n, ()) if u in seconds)]
        name = max(ready, key=lambda n: (tail(n), n))
        start = max([min(free), *(finish[u] for u in upstream.get(name, ()) if u in seconds)])
        slot = free.index(min(free))
        finish[name] = free[slot] = start + seconds[name]
    return max(finish.values(), default=0.0)


def finish(root: Path, pipeline: str, stages: dict[str, Stage]) -> str:
    """`dvc repro --pull` in the workspace: everything restores from the run-cache but the
    git-tracked outputs' stages; then `dvc status` must be clean. The workspace's lock files keep
    only the frozen stages first, as in the workers' clones: a committed entry whose outputs are
    neither here nor on the remote would make DVC rerun its stage, and one whose outputs are here
    would keep an earlier run's outputs instead of the cluster's."""
    pipelines = {n.rpartition(":")[0] or "dvc.yaml" for n in stages}
    frozen_entries_only(root, tuple(n for n, s in stages.items() if s.frozen),
                        [root / Path(p).with_name("dvc.lock") for p in sorted(pipelines)])
    in_git = {n for n, s in stages.items() if s.in_git}
    out = run([sys.executable, "-m", "dvc", "repro", "--pull", pipeline], root)
    print(out, end="", flush=True)
    if recomputed := sorted(set(ran_stages(out)) - in_git):
        raise StudyError("the run-cache did not carry these stages to the workspace, which recomputed "
                         "them: " + ", ".join(recomputed))
    status = run([sys.executable, "-m", "dvc", "status", pipeline], root)
    if "up to date" not in status:
        raise StudyError(f"`dvc status {pipeline}` is not clean after the run:\n{status}")
    return out


def distribute(client, root: Path, pipeline: str, remote: str | None, scratch: str, git_url: str | None,
               threads: int, gpu: bool, local: int, connect_timeout: float):
    """The checks, then the stages on the cluster (a LocalCluster of `local` workers when `client` is
    None): -> (each finished stage's row, {failed stage: error}, the stage graph)."""
    commit = run(["git", "rev-parse", "HEAD"], root).strip()
    stages = stage_graph(root, pipeline)
    order = plan(stages)
    remote, url = remote_url(root, remote)
    frozen = sorted(n for n, s in stages.items() if s.frozen)
    task = Task("", git_source(root, git_url, commit), commit, remote, url, scratch, threads, gpu,
                uuid.uuid4().hex, tuple(frozen))
    own = connect(None, local, gpu, connect_timeout) if client is None else None
    client = client or own
    try:
        if frozen:  # workers pull what they never run
            run([sys.executable, "-m", "dvc", "push", "-r", remote, *frozen], root)
        print(f"[cluster] {len(order)} stages of {pipeline} at {commit[:12]} on {client.scheduler.address}",
              flush=True)
        try:
            return (*watch(client, submit(client, order, task), task.run_id), stages)
        except BaseException:
            from distributed import Event

            Event(f"cancel-{task.run_id}", client=client).set()  # running tasks kill their process groups
            raise
    finally:
        if own is not None:
            own.close()
            own.cluster.close()  # the LocalCluster of --local


def command(pipeline: str = typer.Argument("dvc.yaml", help="the pipeline file, e.g. profiles/grid/dvc.yaml"),
            scheduler: str | None = typer.Option(None, "--scheduler", help="a running Dask scheduler, "
                                                 "tcp://host:8786"),
            local: int = typer.Option(0, "--local", min=0, help="else start a LocalCluster of N "
                                      "single-threaded worker processes"),
            remote: str | None = typer.Option(None, "--remote", help="the DVC remote where the outputs "
                                              "meet (default: the workspace's default remote)"),
            scratch: str = typer.Option("", "--scratch", help="the workers' folder for clones and the shared "
                                        "DVC cache (default: <tmp>/vae-study-cluster-<uid> on each machine)"),
            git_url: str | None = typer.Option(None, "--git-url", help="where workers clone the commit from "
                                               "(default: origin, else this workspace)"),
            threads: int = typer.Option(1, "--threads", min=1, help="torch threads per task"),
            gpu: bool | None = typer.Option(None, "--gpu/--no-gpu", help="train and evaluate tasks request "
                                            "GPU=1 (default: when VAE_STUDY_DEVICE asks for cuda)"),
            connect_timeout: float = typer.Option(5.0, "--connect-timeout", min=0.1, help="seconds"),
            root: Path = typer.Option(Path("."), "--root", help="the project's workspace")) -> None:
    """Run the pipeline's stages on a Dask cluster; the workspace then restores them all."""
    if bool(scheduler) == bool(local):
        raise StudyError("give one of --scheduler tcp://host:port or --local N")
    refuse_dirty(root)
    if gpu is None:
        gpu = os.environ.get("VAE_STUDY_DEVICE", "").startswith("cuda")
    client = connect(scheduler, 0, gpu, connect_timeout) if scheduler else None  # a bad address fails fast
    try:
        results, failures, stages = distribute(client, root, pipeline, remote, scratch, git_url, threads, gpu,
                                               local, connect_timeout)
    finally:
        if client is not None:
            client.close()
    print(table(results), flush=True)
    print(projection(results, stages), flush=True)
    if failures:
        raise StudyError("stages failed:\n" + "\n".join(f"  {n}: {e}" for n, e in sorted(failures.items())))
    finish(root, pipeline, stages)


if __name__ == "__main__":
    try:
        typer.run(command)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
