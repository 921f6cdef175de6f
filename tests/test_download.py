"""The downloader against real HTTP servers on loopback, and real (crafted) npm tarballs."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest

from stages.download import HttpSource, NpmSource, RawFile, download
from stages.errors import DownloadError


def raw_file(name: str, data: bytes) -> RawFile:
    return RawFile(name, len(data), hashlib.sha256(data).hexdigest())


FILES = {"a-idx1-ubyte": bytes(range(256)) * 40, "b-idx3-ubyte": b"\x07" * 5000}
TABLE = [raw_file(n, d) for n, d in FILES.items()]


class Mirror:
    """A loopback HTTP server whose responses per path are set by the test."""

    def __init__(self, routes: dict[str, bytes | int]) -> None:
        self.routes, self.requests = routes, []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                mirror.requests.append(self.path)
                body = mirror.routes.get(self.path.lstrip("/"), 404)
                if isinstance(body, int):
                    self.send_error(body)
                    return
                if isinstance(body, tuple):  # (announced length, bytes actually sent)
                    length, body = body
                else:
                    length = len(body)
                self.send_response(200)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirrors():
    started = []

    def start(routes):
        m = Mirror(routes)
        started.append(m)
        return m

    yield start
    for m in started:
        m.close()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def good_routes() -> dict[str, bytes]:
    return {f"{n}.gz": gz(d) for n, d in FILES.items()}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".part", ".tmp")))


def test_corrupted_mirror_falls_back_to_the_next_source(tmp_path, mirrors):
    corrupt = {k: gz(d[:-1] + b"X") for k, d in zip(good_routes(), FILES.values())}
    bad, good = mirrors(corrupt), mirrors(good_routes())
    record = download(tmp_path, TABLE, [HttpSource(bad.url), HttpSource(good.url)])
    for name, data in FILES.items():
        assert (tmp_path / name).read_bytes() == data
        assert record[name]["source"] == good.url
    assert json.loads((tmp_path / "sources.json").read_text()) == record
    assert bad.requests and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "serve",
    [
        lambda d: gz(d[: len(d) // 2]),  # truncated gzip stream
        lambda d: gz(d + b"extra"),  # wrong size
        lambda d: (len(gz(d)) + 100, gz(d)),  # connection ends before Content-Length
        lambda d: 500,  # HTTP error
        lambda d: b"not gzip at all",
    ],
    ids=["truncated", "wrong-size", "short-body", "http-500", "not-gzip"],
)
def test_every_kind_of_bad_response_leads_to_the_next_source(tmp_path, mirrors, serve):
    bad = mirrors({f"{n}.gz": serve(d) for n, d in FILES.items()})
    good = mirrors(good_routes())
    download(tmp_path, TABLE, [HttpSource(bad.url), HttpSource(good.url)])
    for name, data in FILES.items():
        assert (tmp_path / name).read_bytes() == data
    assert leftovers(tmp_path) == []


def test_when_every_source_fails_the_error_lists_each_and_why(tmp_path, mirrors):
    broken = mirrors({f"{n}.gz": 404 for n in FILES})
    corrupt = mirrors({f"{n}.gz": gz(b"wrong") for n in FILES})
    with pytest.raises(DownloadError) as err:
        download(tmp_path, TABLE, [HttpSource(broken.url), HttpSource(corrupt.url),
                                   HttpSource("http://127.0.0.1:9/", timeout_s=0.5)])
    text = str(err.value)
    assert "HTTP 404" in text and "wrong size" in text and "cannot reach" in text
    assert broken.url in text and corrupt.url in text
    assert not (tmp_path / "a-idx1-ubyte").exists() and leftovers(tmp_path) == []


def test_a_verified_file_is_not_fetched_again(tmp_path, mirrors):
    good = mirrors(good_routes())
    download(tmp_path, TABLE, [HttpSource(good.url)])
    n_requests = len(good.requests)
    record = download(tmp_path, TABLE, [HttpSource(good.url)])
    assert len(good.requests) == n_requests
    assert record["a-idx1-ubyte"]["source"] == good.url  # provenance is kept
    (tmp_path / "b-idx3-ubyte").write_bytes(b"tampered")
    download(tmp_path, TABLE, [HttpSource(good.url)])
    assert (tmp_path / "b-idx3-ubyte").read_bytes() == FILES["b-idx3-ubyte"]
    assert len(good.requests) == n_requests + 1


def test_an_interrupted_download_leaves_no_file_under_its_final_name(tmp_path):
    class Crashing:
        label = "crashing"

        def fetch(self, file, out):
            out.write(b"\x00" * 100)
            raise KeyboardInterrupt  # like Ctrl-C (or a kill) in the middle of the transfer

    with pytest.raises(KeyboardInterrupt):
        download(tmp_path, TABLE, [Crashing()])
    assert not (tmp_path / "a-idx1-ubyte").exists() and leftovers(tmp_path) == []


def npm_tarball(path: Path, extra: tarfile.TarInfo | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in FILES.items():
            info = tarfile.TarInfo(f"package/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size) if extra.isfile() else None)
    return path


def test_npm_tarball_is_extracted_and_verified(tmp_path):
    tgz = npm_tarball(tmp_path / "pkg.tgz")
    out = tmp_path / "raw"
    record = download(out, TABLE, [NpmSource(tarball=tgz)])
    assert (out / "b-idx3-ubyte").read_bytes() == FILES["b-idx3-ubyte"]
    assert record["b-idx3-ubyte"]["source"].startswith("npm:")


def _member(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    if kind == tarfile.REGTYPE:
        info.size = 3
    return info


@pytest.mark.parametrize(
    "member, reason",
    [
        (_member("package/../../evil", tarfile.REGTYPE), "escapes"),
        (_member("/etc/evil", tarfile.REGTYPE), "escapes"),
        (_member("package/data/link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (_member("package/data/hard", tarfile.LNKTYPE, "package/data/a-idx1-ubyte"), "link"),
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink"],
)
def test_npm_tarball_with_traversal_or_link_entries_is_refused(tmp_path, member, reason):
    tgz = npm_tarball(tmp_path / "pkg.tgz", member)
    with pytest.raises(DownloadError, match=reason):
        download(tmp_path / "raw", TABLE, [NpmSource(tarball=tgz)])
    assert not (tmp_path / "raw" / "a-idx1-ubyte").exists()
    assert not (tmp_path / "evil").exists()
