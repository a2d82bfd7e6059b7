"""Debian packages a test needs (a PostgreSQL server, a browser), installed once, when missing.

CI runs as root on a fresh machine; a developer's machine usually has them already. apt-get runs at most
once per test session, and only for what is missing.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

_updated = False


def install(*packages: str) -> None:
    """Install Debian packages, or fail the test saying what to install by hand."""
    global _updated
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail(f"needs the Debian package(s) {', '.join(packages)}: install them (apt-get install "
                    f"{' '.join(packages)}), or run the tests as root on Debian to have them installed")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _updated:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
        _updated = True
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
                   check=True, env=env, stdout=subprocess.DEVNULL)
