"""DVC's SSH remote end to end, against a real OpenSSH server on a loopback port.

A throwaway sshd (its own host key, a throwaway client key, its own sshd_config, all under
tmp_path) serves a folder of this machine as `ssh://127.0.0.1:<port>/<path>`; the tiny study
pushes outputs and run-cache there and fresh clones pull them. The DVC client runs with a
private HOME, so nothing of the user's own ~/.ssh (config, keys, known_hosts) is read or
written; its .ssh/known_hosts pins the throwaway host key, for an OpenSSH client and for a
DVC that checks host keys (this one does not: see the last test).

What these tests pin down about DVC 3.x over SSH (docs/sharing.md says the same):
  * push writes each object to a hidden temp file next to it and renames it into place; a
    push cut mid-object fails and leaves that temp file behind, never a half-written object
    under its md5 name; a second push uploads what is missing;
  * pull also downloads into a temp file and renames; a cut pull fails, checks nothing out,
    keeps nothing half-written, and a second pull completes;
  * pull trusts the remote unless the remote has `verify = true` (DVC's default is false):
    without it a tampered object is checked out and `dvc status` calls it up to date; with
    it the object is rejected, left out of the workspace and named in the error; a push never
    overwrites an object that exists on the remote, so the repair is to delete it and push;
  * the SSH client does not check the server's host key at all (sshfs hands asyncssh
    known_hosts=None): it talks to a server whose key contradicts known_hosts.
"""

from __future__ import annotations

import copy
import getpass
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

import numpy as np
import psutil
import pytest
import yaml
from helpers import TINY_PARAMS, dvc, env_with_venv, make_project, ran_stages, sh

pytestmark = pytest.mark.slow

PARAMS = copy.deepcopy(TINY_PARAMS)
PARAMS["seeds"] = [0]
MODEL = "data/models/linear/seed0.pt"
# Large enough that a transfer is still in flight when the test sees its first bytes land
# (loopback SFTP moves it in about half a second here); the fault tests add it to the study.
PAYLOAD, PAYLOAD_BYTES = "payload/blob.bin", 96 << 20
OBJECT_NAME = re.compile(r"^[0-9a-f]{32}(\.dir)?$")


# --- a throwaway sshd -------------------------------------------------------------------------

SSHD = Path("/usr/sbin/sshd")


def _install_openssh_server() -> None:
    """Debian's openssh-server via apt-get when we are root and apt works; a skip otherwise."""
    if os.geteuid() != 0:
        pytest.skip(f"the SSH remote tests need OpenSSH's server ({SSHD} is absent) and, not being "
                    "root, cannot install it: run `apt-get install -y openssh-server` as root")
    if not shutil.which("apt-get"):
        pytest.skip(f"the SSH remote tests need OpenSSH's server ({SSHD} is absent) and there is "
                    "no apt-get to install it with: install an OpenSSH server at /usr/sbin/sshd")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = []
    install = ["apt-get", "install", "-y", "--no-install-recommends", "openssh-server"]
    for cmd in (install, ["apt-get", "update"], install):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
        log.append(f"$ {' '.join(cmd)} -> {done.returncode}\n{done.stderr[-1500:]}")
        if cmd is install and done.returncode == 0 and SSHD.exists():
            return
    pytest.skip("the SSH remote tests need OpenSSH's server (/usr/sbin/sshd) and apt-get could not "
                "install openssh-server:\n" + "\n".join(log))


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "throwaway", "-f", str(path)],
                   check=True, capture_output=True, timeout=60)
    return path


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    """`sshd -D -e` on 127.0.0.1:<port> that lets in one throwaway key and nothing else."""

    def __init__(self, root: Path):
        root.mkdir(parents=True)
        self.root = root
        self.host_key = _keygen(root / "host_ed25519")
        self.client_key = _keygen(root / "client_ed25519")
        (root / "authorized_keys").write_text(Path(f"{self.client_key}.pub").read_text())
        self.user, self.port = getpass.getuser(), _free_loopback_port()
        self.config = root / "sshd_config"
        self.config.write_text("\n".join([
            "ListenAddress 127.0.0.1",
            f"Port {self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {root / 'sshd.pid'}",
            f"AuthorizedKeysFile {root / 'authorized_keys'}",
            "AuthenticationMethods publickey",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            "UsePAM no",
            "AllowTcpForwarding no",
            "X11Forwarding no",
            "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE",
            ""]))
        # The DVC client's HOME: its known_hosts pins this server's throwaway host key.
        # (DVC 3.x ignores known_hosts; an OpenSSH client, and a future DVC, check it.)
        self.home = root / "home"
        (self.home / ".ssh").mkdir(parents=True)
        algo, key = Path(f"{self.host_key}.pub").read_text().split()[:2]
        (self.home / ".ssh/known_hosts").write_text(f"[127.0.0.1]:{self.port} {algo} {key}\n")
        self.log = root / "sshd.log"
        self.proc: subprocess.Popen | None = None

    def url(self, path: Path) -> str:
        return f"ssh://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = 30) -> Sshd:
        assert self.proc is None or self.proc.poll() is not None, "sshd is already running"
        if os.geteuid() == 0:  # root's sshd insists on its privilege-separation directory
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        check = subprocess.run([str(SSHD), "-t", "-f", str(self.config)], capture_output=True,
                               text=True, timeout=60)
        if check.returncode != 0:
            pytest.fail(f"sshd rejects the test's sshd_config: {check.stderr}")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"sshd exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    if s.recv(64).startswith(b"SSH-"):  # the server's identification string
                        return self
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"sshd did not answer on 127.0.0.1:{self.port}:\n{self.log.read_text()[-3000:]}")

    def processes(self) -> list[psutil.Process]:
        """The listener and every per-connection sshd it forked (they leave its session, so a
        process-group kill would miss them)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            main = psutil.Process(self.proc.pid)
            return [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _signal(self, procs: list[psutil.Process], sig: int) -> None:
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass

    def freeze(self) -> None:
        """SIGSTOP every sshd process: the transfer stops where it is, mid-object."""
        self._signal(self.processes(), signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL the listener and every connection: the wire goes dead."""
        procs = self.processes()
        self._signal(procs, signal.SIGKILL)
        psutil.wait_procs(procs, timeout=10)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        procs = self.processes()
        self._signal(procs, signal.SIGCONT)
        self._signal(procs, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=10)
        self._signal(alive, signal.SIGKILL)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def sshd_binary() -> Path:
    if not SSHD.exists():
        _install_openssh_server()
    if not shutil.which("ssh-keygen"):
        pytest.skip("the SSH remote tests need ssh-keygen (Debian: openssh-client)")
    return SSHD


@pytest.fixture
def sshd(sshd_binary, tmp_path, monkeypatch) -> Sshd:
    """A running throwaway sshd; every subprocess of the test sees HOME = its client home."""
    server = Sshd(tmp_path / "sshd")
    monkeypatch.setenv("HOME", str(server.home))  # env_with_venv() copies os.environ
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --- the tiny study and its copies ------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The tiny study (one seed) after one full `dvc repro`, committed."""
    root = make_project(tmp_path_factory.mktemp("built") / "study", PARAMS)
    dvc(root, "repro")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-q", "-m", "results")
    return root


def add_credentials(project: Path, server: Sshd) -> None:
    """Key and user into .dvc/config.local (which DVC's .dvc/.gitignore keeps out of git)."""
    dvc(project, "remote", "modify", "--local", "shared", "keyfile", str(server.client_key))
    dvc(project, "remote", "modify", "--local", "shared", "user", server.user)


@pytest.fixture
def study(built, sshd, tmp_path) -> Path:
    """A private copy of the built study with the SSH remote `shared` committed (url, verify)
    and the credentials configured locally."""
    root = Path(shutil.copytree(built, tmp_path / "study", symlinks=True))
    dvc(root, "remote", "add", "-d", "shared", sshd.url(tmp_path / "remote"))
    dvc(root, "remote", "modify", "shared", "verify", "true")
    add_credentials(root, sshd)
    sh(root, "git", "add", ".dvc/config")
    sh(root, "git", "commit", "-q", "-m", "shared SSH remote")
    return root


def clone(study: Path, dest: Path, server: Sshd) -> Path:
    sh(dest.parent, "git", "clone", "-q", str(study), str(dest))
    add_credentials(dest, server)
    return dest


def add_payload(study: Path) -> str:
    """A big DVC-tracked file, committed; -> its md5 (its object name)."""
    blob = np.random.default_rng(0).bytes(PAYLOAD_BYTES)
    (study / PAYLOAD).parent.mkdir()
    (study / PAYLOAD).write_bytes(blob)
    dvc(study, "add", "-q", PAYLOAD)
    sh(study, "git", "add", f"{PAYLOAD}.dvc", str(Path(PAYLOAD).parent / ".gitignore"))
    sh(study, "git", "commit", "-q", "-m", "payload")
    return hashlib.md5(blob).hexdigest()


# --- checking object stores and workspaces -----------------------------------------------------

def md5_of(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def object_path(odb: Path, oid: str) -> Path:
    """Where DVC 3 keeps object `oid` in a cache or remote: files/md5/<2 hex>/<30 hex>."""
    return odb / "files/md5" / oid[:2] / oid[2:]


def objects(odb: Path) -> dict[str, Path]:
    """Every file under files/md5 named like an object (what a pull would accept by name)."""
    found = {}
    for f in (odb / "files/md5").rglob("*"):
        if f.is_file() and OBJECT_NAME.match(f.parent.name + f.name):
            found[f.parent.name + f.name] = f
    return found


def strays(odb: Path) -> list[Path]:
    """Files under files/md5 not named like an object (no pull ever asks for them)."""
    names = set(objects(odb).values())
    return [f for f in (odb / "files/md5").rglob("*") if f.is_file() and f not in names]


def corrupt(odb: Path) -> list[str]:
    """Objects whose bytes do not hash to their name (.dir objects included: DVC names a
    directory listing by the md5 of its bytes too)."""
    return sorted(oid for oid, f in objects(odb).items() if md5_of(f) != oid.removesuffix(".dir"))


def output_problems(project: Path, allow_missing: bool = False) -> list[str]:
    """Each output in dvc.lock and in *.dvc files against its recorded md5, hashed here from
    the workspace's bytes (a directory: every file, no extra). [] when all match."""
    records = [o for s in yaml.safe_load((project / "dvc.lock").read_text())["stages"].values()
               for o in s.get("outs", [])]
    for f in project.rglob("*.dvc"):
        if f.is_file() and ".dvc" not in f.relative_to(project).parts[:-1]:
            records += [{**o, "path": str((f.parent / o["path"]).relative_to(project))}
                        for o in yaml.safe_load(f.read_text())["outs"]]
    problems = []
    for out in records:
        path, oid = project / out["path"], out["md5"]
        if not path.exists():
            if not allow_missing:
                problems.append(f"{out['path']}: missing")
        elif (actual := dir_md5(path) if path.is_dir() else md5_of(path)) != oid:
            problems.append(f"{out['path']}: md5 {actual} != {oid}")
    return problems


def dir_md5(path: Path) -> str:
    """DVC's hash of a directory: the md5 of its listing (relpath-sorted [{md5, relpath}] as
    JSON with sorted keys, the bytes of its .dir object), plus ".dir"."""
    listing = sorted(({"md5": md5_of(f), "relpath": f.relative_to(path).as_posix()}
                      for f in path.rglob("*") if f.is_file()), key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"


def start_dvc(project: Path, log: Path, *args: str) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=project, env=env_with_venv(),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def cut_mid_object(proc: subprocess.Popen, server: Sshd, folder: Path, oid: str, size: int,
                   timeout: float = 120) -> int:
    """Wait until object `oid` is partly written somewhere in `folder` (a file that is not the
    object itself, holding some but not all of its bytes), then freeze sshd where it is and
    kill it. -> the bytes written at the cut. No timed guess: the cut follows what is on disk."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dvc ended ({proc.returncode}) before {oid} was partly written: "
                        f"make PAYLOAD_BYTES larger for this machine")
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            entries = []
        partial = [e for e in entries if e.name != oid[2:] and 0 < _size(e) < size]
        if partial:
            server.freeze()
            written = max(_size(e) for e in partial)
            server.kill()
            assert 0 < written < size
            return written
        time.sleep(0.002)  # a polling interval, not a guess at timing: leave the CPU to dvc
    pytest.fail(f"{oid} was not partly written in {folder} within {timeout} s")


def _size(entry: os.DirEntry) -> int:
    try:
        return entry.stat().st_size
    except FileNotFoundError:  # renamed or removed between listing and stat
        return -1


def assert_transfer_failed(out: str, verb: str) -> None:
    """DVC names a cut transfer one of two ways, by where the lost connection surfaced: as the
    transfer's own failure ("failed to push data to the cloud - N files failed to upload"), or,
    when it surfaced outside the per-file transfers (the run cache, a listing), as "unexpected
    error - Connection lost". Either is DVC's error for the cut; anything else is not."""
    own = f"failed to {verb} data from the cloud" if verb == "pull" else f"failed to {verb} data to the cloud"
    assert own in out or "ERROR: unexpected error - Connection lost" in out, out


def finish(proc: subprocess.Popen, log: Path, timeout: float = 120) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return log.read_text()


# --- the tests ---------------------------------------------------------------------------------

def test_a_collaborator_pulls_over_ssh_and_reproduces_nothing(study, sshd, tmp_path):
    """repro + push --run-cache over a real sshd; a fresh clone pulls and `dvc repro` runs no
    stage; the credentials never reach git."""
    committed = sh(study, "git", "show", "HEAD:.dvc/config").stdout
    assert sshd.url(tmp_path / "remote") in committed and "verify = true" in committed
    assert not re.search(r"^\s*(keyfile|user|password|passphrase)\s*=", committed, re.M), committed
    assert str(sshd.client_key) not in committed and str(sshd.root) not in committed
    local = (study / ".dvc/config.local").read_text()
    assert f"keyfile = {sshd.client_key}" in local and f"user = {sshd.user}" in local
    assert sh(study, "git", "check-ignore", "-q", ".dvc/config.local", check=False).returncode == 0
    assert ".dvc/config.local" not in sh(study, "git", "status", "--porcelain", "--ignored=no").stdout
    # sshd listens on loopback only
    listening = {c.laddr for p in sshd.processes() for c in p.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN}
    assert listening == {("127.0.0.1", sshd.port)}

    out = dvc(study, "push", "--run-cache").stdout
    assert "pushed" in out
    assert f"Accepted publickey for {sshd.user} from 127.0.0.1" in sshd.log.read_text()
    remote = tmp_path / "remote"
    assert set(objects(remote)) == set(objects(study / ".dvc/cache")) and corrupt(remote) == []
    local_runs = {p.relative_to(study / ".dvc/cache") for p in (study / ".dvc/cache/runs").rglob("*")}
    assert local_runs and local_runs == {p.relative_to(remote) for p in (remote / "runs").rglob("*")}

    other = clone(study, tmp_path / "clone", sshd)
    assert not (other / "data").exists()
    dvc(other, "pull")
    assert output_problems(other) == []
    out = dvc(other, "repro").stdout
    assert ran_stages(out) == [] and "Data and pipelines are up to date" in out, out
    reports = sorted(p.relative_to(study) for p in (study / "reports").rglob("*") if p.is_file())
    assert reports and reports == sorted(p.relative_to(other) for p in (other / "reports").rglob("*")
                                         if p.is_file())
    for path in reports:
        assert (other / path).read_bytes() == (study / path).read_bytes(), path


def test_a_push_cut_mid_object_leaves_no_bad_object_and_a_retry_completes(study, sshd, tmp_path):
    """sshd dies while the payload's bytes are on the wire: the push fails with DVC's error,
    every object on the remote hashes to its name (the cut one is a stray temp file, not an
    object), and a push after sshd is back uploads the rest."""
    oid = add_payload(study)
    remote, log = tmp_path / "remote", tmp_path / "push.log"
    push = start_dvc(study, log, "push", "--run-cache")
    try:
        written = cut_mid_object(push, sshd, object_path(remote, oid).parent, oid, PAYLOAD_BYTES)
    finally:
        out = finish(push, log)
    assert push.returncode != 0, out
    assert_transfer_failed(out, "push")
    assert corrupt(remote) == []
    assert oid not in objects(remote)
    # What DVC leaves: the half-sent object as a hidden temp file beside where it would go.
    leftovers = [f for f in strays(remote) if f.parent == object_path(remote, oid).parent]
    assert leftovers and all(f.name.startswith(".") and f.name.endswith(".tmp") for f in leftovers)
    assert any(f.stat().st_size >= written for f in leftovers)

    sshd.start()
    out = dvc(study, "push", "--run-cache").stdout
    assert "pushed" in out
    assert set(objects(study / ".dvc/cache")) <= set(objects(remote)) and corrupt(remote) == []
    assert md5_of(object_path(remote, oid)) == oid
    assert "in sync" in dvc(study, "status", "--cloud").stdout
    assert all(f.exists() for f in leftovers)  # DVC never cleans them up (docs/sharing.md)


def test_a_pull_cut_mid_object_checks_out_nothing_half_written_and_a_retry_completes(study, sshd,
                                                                                     tmp_path):
    """sshd dies while a clone pulls the payload: the pull fails, nothing half-written is in
    the clone's cache or workspace, and a pull after sshd is back matches dvc.lock throughout."""
    oid = add_payload(study)
    dvc(study, "push", "--run-cache")
    other = clone(study, tmp_path / "clone", sshd)
    cache, log = other / ".dvc/cache", tmp_path / "pull.log"
    pull = start_dvc(other, log, "pull")
    try:
        cut_mid_object(pull, sshd, object_path(cache, oid).parent, oid, PAYLOAD_BYTES)
    finally:
        out = finish(pull, log)
    assert pull.returncode != 0, out
    assert_transfer_failed(out, "pull")
    assert corrupt(cache) == [] and oid not in objects(cache)
    assert strays(cache) == []  # the client removed its half-downloaded temp file
    # pull = fetch, then checkout; a failed fetch raises before the checkout: nothing is placed
    assert not (other / PAYLOAD).exists() and not (other / "data").exists()
    assert output_problems(other, allow_missing=True) == []

    sshd.start()
    dvc(other, "pull")
    assert output_problems(other) == []
    assert corrupt(cache) == []
    assert "up to date" in dvc(other, "status").stdout


def test_a_tampered_object_on_the_remote_is_never_checked_out(study, sshd, tmp_path):
    """Flip one byte of the checkpoint's object on the remote. DVC's default trusts it; with
    the committed `verify = true` a fresh clone's pull rejects it, names the file and leaves
    it out; deleting the object and pushing again repairs the remote."""
    dvc(study, "push", "--run-cache")
    lock = yaml.safe_load((study / "dvc.lock").read_text())
    oid = next(o["md5"] for o in lock["stages"]["train@linear-0"]["outs"] if o["path"] == MODEL)
    remote = tmp_path / "remote"
    target = object_path(remote, oid)
    tampered = bytearray(target.read_bytes())
    tampered[len(tampered) // 2] ^= 0xFF  # same size, same name: only the bytes tell
    target.chmod(0o644)
    target.write_bytes(bytes(tampered))
    assert corrupt(remote) == [oid]

    # DVC's default (no `verify` in the config): the tampered checkpoint lands in the workspace
    # and DVC calls everything up to date. Why the project commits `verify = true`.
    trusting = clone(study, tmp_path / "trusting", sshd)
    dvc(trusting, "remote", "modify", "shared", "--unset", "verify")
    assert "verify" not in (trusting / ".dvc/config").read_text()
    dvc(trusting, "pull")
    assert (trusting / MODEL).read_bytes() == bytes(tampered)
    assert "Data and pipelines are up to date" in dvc(trusting, "status").stdout
    assert output_problems(trusting) == [f"{MODEL}: md5 {md5_of(trusting / MODEL)} != {oid}"]

    # With the committed `verify = true`: rejected, named, not checked out, not kept.
    checking = clone(study, tmp_path / "checking", sshd)
    pulled = dvc(checking, "pull", check=False)
    assert pulled.returncode != 0
    assert "Checkout failed" in pulled.stderr and MODEL in pulled.stderr, pulled.stderr
    assert not (checking / MODEL).exists()
    assert oid not in objects(checking / ".dvc/cache")
    assert output_problems(checking, allow_missing=True) == []
    assert [p for p in output_problems(checking) if "missing" in p] == [f"{MODEL}: missing"]

    # A push never replaces an object the remote already has: delete it, then push.
    assert "Everything is up to date" in dvc(study, "push").stdout
    assert corrupt(remote) == [oid]
    target.unlink()
    assert "1 file pushed" in dvc(study, "push").stdout
    assert corrupt(remote) == []
    dvc(checking, "pull")
    assert output_problems(checking) == []


def test_dvc_does_not_check_the_ssh_server_host_key(study, sshd, tmp_path):
    """Pin a wrong host key for the server: OpenSSH's client refuses to connect, DVC's pushes
    anyway (dvc-ssh 4.3 / sshfs pass known_hosts=None to asyncssh). docs/sharing.md says what
    that means for users; if this fails, DVC has started checking host keys: update it."""
    known_hosts = sshd.home / ".ssh/known_hosts"
    wrong = " ".join(Path(f"{sshd.client_key}.pub").read_text().split()[:2])  # not the host key
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {wrong}\n")
    if shutil.which("ssh"):
        refused = sh(study, "ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                     "-o", f"UserKnownHostsFile={known_hosts}", "-o", "IdentitiesOnly=yes",
                     "-i", str(sshd.client_key), "-p", str(sshd.port), f"{sshd.user}@127.0.0.1", "true",
                     check=False, timeout=60)
        assert refused.returncode == 255 and "Host key verification failed" in refused.stderr
    assert "pushed" in dvc(study, "push").stdout
    assert objects(tmp_path / "remote")
