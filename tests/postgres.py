"""A real PostgreSQL server for the tests (pytest plugin).

Where one answers on 127.0.0.1:5432 (this machine's kind, and CI on it), the tests use it, each in a
database of its own that is dropped afterwards. Elsewhere the plugin starts its own: Debian's postgresql
package (installed when initdb is missing), `initdb` in a temporary directory as an unprivileged user,
a free port, its socket in that directory; stopped and removed at the end of the session.

CDS_TEST_POSTGRES chooses: unset or "auto" as above, "own" to always start one's own (to check a fresh
machine's path), or a URL such as postgresql://postgres@127.0.0.1:5432/test to use that server.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from tests import debian

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
UNPRIVILEGED_USER = "nobody"  # initdb refuses to run as root


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    admin_database: str

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    @contextmanager
    def database(self) -> Iterator[str]:
        """A new empty database, dropped afterwards: its URL."""
        name = f"cds_test_{uuid.uuid4().hex[:16]}"
        self.admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield self.url(name)
        finally:
            self.admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def admin(self, statement: sql.Composable) -> None:
        with psycopg.connect(self.url(self.admin_database), autocommit=True, connect_timeout=5) as connection:
            connection.execute(statement)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    choice = os.environ.get("CDS_TEST_POSTGRES", "auto")
    if choice == "own" or (choice == "auto" and not _answers(DEFAULT_URL)):
        with _own_server() as server:
            yield server
        return
    url = make_url(DEFAULT_URL if choice == "auto" else choice)
    yield PostgresServer(url.host or "127.0.0.1", url.port or 5432, url.username or "postgres",
                         url.database or "postgres")


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


@contextmanager
def _own_server() -> Iterator[PostgresServer]:
    bin_dir = _bin_dir()
    home = Path(tempfile.mkdtemp(prefix="cds-test-pg-"))
    run_as = _unprivileged(home)
    data, port = home / "data", _free_port()

    def pg(*args: str) -> None:
        subprocess.run([*run_as, *args], cwd=home, check=True, stdout=subprocess.DEVNULL, timeout=120)

    try:
        pg(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync",
           "-E", "UTF8", "--locale=C")
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(home / "server.log"), "-w", "-o",
           f"-p {port} -k {home} -c listen_addresses=127.0.0.1", "start")
        try:
            yield PostgresServer("127.0.0.1", port, "postgres", "postgres")
        finally:
            pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _bin_dir() -> Path:
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        debian.install("postgresql")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        pytest.fail("the postgresql package is installed but no /usr/lib/postgresql/*/bin/initdb was found")
    return Path(found[-1]).parent


def _unprivileged(home: Path) -> list[str]:
    """The command prefix that runs the server as a user other than root, owning its directory."""
    if os.geteuid() != 0:
        return []
    user = pwd.getpwnam(UNPRIVILEGED_USER)
    os.chown(home, user.pw_uid, user.pw_gid)
    return ["runuser", "-u", UNPRIVILEGED_USER, "--"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
