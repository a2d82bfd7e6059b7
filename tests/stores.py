"""Feedback stores for the tests (pytest plugin).

Every app a test builds records the cards it issues. `_scratch_feedback_store` (autouse, for the whole
session) points CDS_DATABASE_URL at a scratch SQLite file and sets a test CDS_PATIENT_HASH_KEY, so that
no test writes into a developer's var/cds.db and `cds-service serve` started with os.environ can start
in production mode (which refuses to run without a key).

`database_url` runs a test on both back ends, each time on a fresh, empty database: an SQLite file, and
a database on a real PostgreSQL server (tests/postgres.py).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

TEST_HASH_KEY = "test-only patient hash key, not a secret, 32+ characters"


@pytest.fixture(scope="session", autouse=True)
def _scratch_feedback_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CDS_DATABASE_URL", sqlite_url(tmp_path_factory.mktemp("feedback-store") / "cds.db"))
        patch.setenv("CDS_PATIENT_HASH_KEY", TEST_HASH_KEY)
        patch.delenv("CDS_ADMIN_TOKEN", raising=False)
        yield


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "cds.db")
        return
    with request.getfixturevalue("postgres").database() as url:
        yield url


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"
