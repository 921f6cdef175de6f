"""Outputs that are either whole or absent: write to a temp file beside the target, then rename.

An interrupted or failing write (a crash, kill -9, a full disk) never leaves a file under its
final name, and an earlier version of the output stays intact until the rename.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stages.errors import OutputError


def default_file_mode() -> int:
    """0o666 minus the umask: what open() would give, where mkstemp gives 0o600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def ensure_writable_dir(path: str | Path) -> Path:
    """Create `path` if needed and prove a file can be written there; fail before any work."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write to output folder {path}: {e.strerror or e}") from None
    return path


def output_error(target: str | Path, e: OSError) -> OutputError:
    """The clear error for a failed write of `target`: a full disk named as such."""
    if e.errno == errno.ENOSPC:
        return OutputError(f"disk full while writing {target}; earlier outputs are intact")
    return OutputError(f"cannot write {target}: {e.strerror or e}")


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path in target's folder; on success rename it onto target, else delete it."""
    target = Path(target)
    ensure_writable_dir(target.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the bytes are on disk before the name points at them
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise output_error(target, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode())


def write_json(target: str | Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(target: str | Path, frame: Any) -> None:
    """A pandas DataFrame as CSV (no index, 6 decimals)."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6f")


def write_npz(target: str | Path, arrays: dict[str, Any]) -> None:
    """Arrays as a compressed .npz; the same arrays give the same bytes."""
    import numpy as np

    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez must not append ".npz"
            np.savez_compressed(f, **arrays)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temp folder beside `target`; on success it replaces `target` whole.

    The folder's files are all new or all old: a failure while they are written leaves the old
    folder untouched. The swap is two renames (old folder aside, new one in), so a kill between
    them leaves no folder under the target's name, never a mix; the old one is deleted last.
    """
    target = Path(target)
    ensure_writable_dir(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        tmp.chmod(0o777 & ~mask)  # what mkdir would give, where mkdtemp gives 0o700
        old = None
        if target.exists():
            old = tmp.with_suffix(".old")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise output_error(target, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
