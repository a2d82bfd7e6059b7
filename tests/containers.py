"""The container engine that `make container-test` builds and runs the image and the compose lab with
(a pytest plugin; the tests that use it are marked `container` and run only with --containers).

Docker where its engine answers and `docker compose` (Compose v2) is installed. Otherwise podman, installed
from Debian's packages when missing (as root), with podman-compose from PyPI (a test dependency). Podman
runs with a configuration and image store of its own, under ~/.cache/cd20-cds/containers (or
$XDG_CACHE_HOME), kept between runs so that base images and build layers are there the next time, and
chosen for what a machine like CI's needs:
- open-file and process limits no higher than this machine's hard limits (podman's defaults are higher,
  and a container cannot raise a limit past the machine's),
- runc (crun refuses hosts that mix cgroup v1 and v2), netavark with aardvark-dns (so that the lab's
  services find each other by name) and iptables, which netavark runs (a machine without it fails every
  build step that uses the network with "netavark: No such file or directory"),
- images in the docker format (the OCI format drops HEALTHCHECK).
CDS_CONTAINER_ENGINE=docker or podman overrides the choice.
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from conftest import NOW
from security_support import SigningEhr
from tests import debian

ROOT = Path(__file__).resolve().parent.parent
PODMAN_PACKAGES = {"podman": "/usr/bin/podman", "runc": "/usr/bin/runc", "netavark": "/usr/lib/podman/netavark",
                   "aardvark-dns": "/usr/lib/podman/aardvark-dns",
                   "iptables": "/usr/sbin/iptables"}  # netavark 1.4 sets up every network with iptables
MIN_FREE_BYTES = 8 * 2**30  # a cold run's base images and builds take 2 to 3 GB; never fill the disk


EXAMPLE_CLOCK = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")  # CDS_NOW for the containers: the examples' clock


class EngineError(RuntimeError):
    pass


@dataclass(frozen=True)
class Engine:
    name: str  # the command: docker or podman
    compose_command: tuple[str, ...]
    env: dict[str, str]
    store: Path  # where its images are kept on disk

    def run(self, *args: str, timeout: float = 120, check: bool = True,
            stdin: int | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.name, *args], env=self.env, stdin=stdin, capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise EngineError(f"{self.name} {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
        return done

    def compose(self, project: str, files: Sequence[Path], *args: str, env: dict[str, str] | None = None,
                timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The compose command on these files, as a project of its own (its containers, volumes, network)."""
        argv = [*self.compose_command, "--project-name", project, *(a for f in files for a in ("-f", str(f))), *args]
        done = subprocess.run(argv, cwd=ROOT, env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise EngineError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def exists(self, image: str) -> bool:
        return self.run("image", "inspect", image, check=False).returncode == 0

    def label(self, image: str, name: str) -> str | None:
        found = self.run("image", "inspect", "--format", f'{{{{index .Config.Labels "{name}"}}}}', image,
                         check=False)
        value = found.stdout.strip()
        return value if found.returncode == 0 and value not in ("", "<no value>") else None

    def pull(self, image: str) -> bool:
        """Whether the image could be had from its registry (none answers on a machine like CI's)."""
        try:
            return self.run("pull", image, timeout=600, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def build(self, tag: str, context: Path, dockerfile: Path | None = None, target: str | None = None) -> None:
        options = [*(("--file", str(dockerfile)) if dockerfile else ()), *(("--target", target) if target else ())]
        self.run("build", "--tag", tag, *options, str(context), timeout=1800)

    def health_check_flags(self) -> list[str]:
        """`run` options that let the image's own health check be observed without waiting its interval."""
        return [] if self.name == "podman" else ["--health-interval=1s", "--health-retries=1"]

    def healthy(self, container: str, timeout: float = 60) -> bool:
        """Runs the container's health check (podman: now; docker: waits for its next verdict)."""
        if self.name == "podman":
            return self.run("healthcheck", "run", container, check=False, timeout=timeout).returncode == 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.run("inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip()
            if status in ("healthy", "unhealthy"):
                return status == "healthy"
            time.sleep(0.5)
        raise EngineError(f"{container}: no health verdict within {timeout} s")

    def prune_images(self) -> None:
        """Images no tag names any longer (earlier builds); the tagged ones stay as the next run's cache."""
        self.run("image", "prune", "--force", timeout=600)


def wait_for(url: str, engine: Engine, container: str | None = None, timeout: float = 180) -> None:
    """Until the URL answers 200: podman 4 starts a service without waiting for what it depends on to be
    healthy, so whoever uses it waits for readiness itself."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    logs = engine.run("logs", container, check=False) if container else None
    raise AssertionError(f"{url} did not answer 200 within {timeout} s"
                         + (f"; {container} logged:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}" if logs else ""))


def readable_issuers(ehr: SigningEhr, directory: Path, fhir_server: str) -> Path:
    """The EHR's trusted-issuers file (naming the FHIR server its calls may name), in a folder the image's
    unprivileged user can read when it is mounted into a container."""
    path = ehr.issuers_file(directory, fhir_servers=[fhir_server])
    for item in (directory, *directory.iterdir()):
        item.chmod(0o755 if item.is_dir() else 0o644)
    return path


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cd20-cds" / "containers"


def select() -> Engine:
    choice = os.environ.get("CDS_CONTAINER_ENGINE", "auto")
    if choice not in ("auto", "docker", "podman"):
        pytest.fail(f"CDS_CONTAINER_ENGINE={choice!r}: use docker, podman or auto")
    if choice == "docker" or (choice == "auto" and _docker_with_compose()):
        root = subprocess.run(["docker", "info", "--format", "{{.DockerRootDir}}"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
        return Engine("docker", ("docker", "compose"), dict(os.environ), Path(root or "/var/lib/docker"))
    return _podman()


def _docker_with_compose() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return all(subprocess.run(["docker", *args], capture_output=True, timeout=30).returncode == 0
                   for args in (["info"], ["compose", "version"]))
    except subprocess.TimeoutExpired:
        return False


def _podman() -> Engine:
    missing = [package for package, path in PODMAN_PACKAGES.items() if not Path(path).exists()]
    if missing:
        debian.install(*missing)
    compose = shutil.which("podman-compose", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if compose is None:
        pytest.fail("podman-compose is missing: it is a test dependency (pip install -e '.[test]')")
    config = cache_dir()
    config.mkdir(parents=True, exist_ok=True)
    run_dir = Path("/dev/shm" if Path("/dev/shm").is_dir() else "/tmp") / f"cd20-cds-podman-{os.getuid()}"
    (config / "containers.conf").write_text(_containers_conf(config, run_dir))
    (config / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{config / "storage"}"\nrunroot = "{run_dir / "storage"}"\n')
    env = {**os.environ, "CONTAINERS_CONF": str(config / "containers.conf"),
           "CONTAINERS_STORAGE_CONF": str(config / "storage.conf"), "BUILDAH_FORMAT": "docker"}
    return Engine("podman", (compose,), env, config / "storage")


def _containers_conf(config: Path, run_dir: Path) -> str:
    """Run state lives in memory (run_dir, on tmpfs where there is one), as podman expects after a reboot."""
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1048576)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
    return (f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            f'[network]\nnetwork_backend = "netavark"\nnetwork_config_dir = "{config / "networks"}"\n'
            f'[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            f'tmp_dir = "{run_dir / "libpod"}"\n')


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """The engine, with room on disk; images left untagged by this session's builds are removed at its end."""
    chosen = select()
    existing = next(p for p in (chosen.store, *chosen.store.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        pytest.fail(f"only {free / 2**30:.1f} GB free where the images go ({chosen.store}); the container "
                    f"tests need {MIN_FREE_BYTES / 2**30:.0f} GB")
    yield chosen
    chosen.prune_images()
