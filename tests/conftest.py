"""Shared pytest fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def _find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def _install_chromium() -> str:
    """Debian's `chromium` package via apt-get (as root); a clear failure otherwise."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail("the browser test needs Chromium: install it (Debian: `apt-get install -y "
                    "chromium`, as root); none of " + ", ".join(CHROMIUM_NAMES) + " is on PATH")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = []
    for cmd in (["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                ["apt-get", "update"],
                ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900,
                              check=False)
        log.append(f"$ {' '.join(cmd)} -> {done.returncode}\n{done.stderr[-1500:]}")
        if cmd[1] == "install" and done.returncode == 0 and (path := _find_chromium()):
            return path
    pytest.fail("could not install Chromium for the browser test:\n" + "\n".join(log))


@pytest.fixture(scope="session")
def chromium() -> Callable[[Path], str]:
    """dump_dom(html_file) -> the DOM headless Chromium holds after the page's load events
    (virtual time budget 10 s). Installs Debian's chromium when absent."""
    binary = _find_chromium() or _install_chromium()

    def dump_dom(page: Path, *extra: str) -> str:
        with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
            cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                   "--no-first-run", "--disable-background-networking",
                   "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                   "--virtual-time-budget=10000", *extra, "--dump-dom", Path(page).resolve().as_uri()]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            pytest.fail(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
        return done.stdout

    return dump_dom
