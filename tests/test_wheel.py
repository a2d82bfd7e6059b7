"""The package installs like any other: built as a wheel, installed (not editable) into a fresh virtual
environment, and run from a directory that is not the repository, it finds its rules and answers.

The fresh environment borrows the test environment's dependencies through a .pth file (so no download and
no C compile of durable-rules), but not its editable install of this project: a .pth file's paths are added
to sys.path without their own .pth files being run. So the code and data run here are the wheel's alone.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests

from conftest import EXAMPLES, NOW, ROOT, load_json

EXAMPLE = "hbv-active--hbsag-positive.json"
EXPECTED = load_json(EXAMPLES / "expected.json")[EXAMPLE]  # the cards present, and those absent
AT = NOW.isoformat().replace("+00:00", "Z")
SOURCES = ("pyproject.toml", "README.md", "cds_service", "rules", "config")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    elsewhere: Path  # a directory that is not the repository, where the commands run

    def env(self, **extra: str) -> dict[str, str]:
        """Only what a user's shell would have: nothing pointing into the repository."""
        return {"PATH": f"{self.venv / 'bin'}:{os.environ['PATH']}", "HOME": str(self.elsewhere), **extra}

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.venv / "bin" / args[0]), *args[1:]], cwd=self.elsewhere, env=self.env(**extra),
                              capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # what the Dockerfile's build stage copies; building writes build/ and egg-info
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(work / "dist"),
                    str(source)], check=True, capture_output=True, timeout=120)
    (wheel,) = (work / "dist").glob("cd20_cds-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--ignore-installed", str(wheel)], check=True, capture_output=True, timeout=120)
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    return Installed(wheel, venv, elsewhere)


def test_the_wheel_holds_every_module_and_the_rules_and_config(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    package = ROOT / "cds_service"
    modules = {p.relative_to(ROOT).as_posix() for p in package.rglob("*.py")}
    data = {f"cds_service/_data/{p.relative_to(ROOT).as_posix()}" for d in ("rules", "config") for p in (ROOT / d).iterdir()}
    assert modules - names == set()
    assert data - names == set()
    assert "cds_service/web/openapi.yaml" in names


def test_the_installed_package_runs_its_own_code_and_rules(installed):
    where = installed.run("python", "-c", "import cds_service, cds_service.engine.rulebook as r; "
                          "print(cds_service.__file__); print(r.DEFAULT_RULES_DIR)")
    code, rules = where.stdout.split()
    assert Path(code).is_relative_to(installed.venv) and Path(rules).is_relative_to(installed.venv), where.stderr


def test_evaluate_gives_the_example_its_cards(installed):
    result = installed.run("cds-service", "evaluate", str(EXAMPLES / EXAMPLE), "--now", AT)
    assert result.returncode == 0, result.stdout + result.stderr
    _assert_expected(json.loads(result.stdout)["cards"])


def test_a_site_rules_dir_is_still_used(installed, tmp_path):
    """CDS_RULES_DIR names a site's own rules instead of the shipped ones: an unreadable one stops the command."""
    result = installed.run("cds-service", "rules", CDS_RULES_DIR=str(tmp_path))
    assert result.returncode != 0 and str(tmp_path) in result.stdout


@pytest.fixture
def serving(installed) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (installed.elsewhere / "metrics").mkdir(exist_ok=True)
    env = installed.env(CDS_AUTH="off", CDS_NOW=AT, CDS_DATABASE_URL=f"sqlite:///{installed.elsewhere / 'cds.db'}",
                        CDS_PATIENT_HASH_KEY="k" * 32, PROMETHEUS_MULTIPROC_DIR=str(installed.elsewhere / "metrics"))
    log = (installed.elsewhere / "serve.log").open("wb")
    process = subprocess.Popen([str(installed.venv / "bin" / "cds-service"), "serve", "--host", "127.0.0.1",
                                "--port", str(port), "--workers", "1", "--threads", "2"],
                               cwd=installed.elsewhere, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (installed.elsewhere / "serve.log").read_text()
            try:
                if requests.get(base + "/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                assert time.monotonic() < deadline, (installed.elsewhere / "serve.log").read_text()
                time.sleep(0.1)
        yield base
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=15)
        log.close()


def test_serve_answers_discovery_and_a_hook(serving):
    services = requests.get(serving + "/cds-services", timeout=10).json()["services"]
    body = load_json(EXAMPLES / EXAMPLE)
    (service,) = [s["id"] for s in services if s["hook"] == body["hook"]]
    response = requests.post(f"{serving}/cds-services/{service}", json=body, timeout=30)
    assert response.status_code == 200, response.text
    _assert_expected(response.json()["cards"])


def _assert_expected(cards: list[dict]) -> None:
    given = {c["source"]["topic"]["code"]: c["indicator"] for c in cards}
    assert EXPECTED["present"].items() <= given.items() and not set(EXPECTED["absent"]) & set(given), given
