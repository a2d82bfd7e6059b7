"""Shared test fixtures. Feature-specific fixtures live in their own modules, listed in pytest_plugins."""
from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from cds_service.engine import rulebook
from cds_service.web.app import create_app
from cds_service.config import Settings
from cds_service.service import CdsService
from devtools import fhir_server as fhir

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
EXAMPLES = ROOT / "fhir_examples"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)  # the clock every example is written against

pytest_plugins: list[str] = ["tests.postgres", "tests.stores", "tests.containers"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--containers", action="store_true",
                     help="also run the tests marked container: they build and run the image and the compose lab "
                          "(make container-test)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Container tests take minutes and gigabytes: `make test` leaves them to `make container-test`."""
    if config.getoption("--containers"):
        return
    deselected = [item for item in items if item.get_closest_marker("container")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("container")]


@pytest.fixture(scope="session")
def book() -> rulebook.Rulebook:
    return rulebook.load()


@pytest.fixture(scope="session")
def service(book: rulebook.Rulebook) -> CdsService:
    """The whole pipeline, in process, with the clock frozen at NOW."""
    return CdsService(book, clock=lambda: NOW)


@pytest.fixture(scope="session")
def client(service: CdsService):
    """A Flask test client over the same service, authentication off (tests/test_auth.py covers it)."""
    return create_app(service, Settings(auth="off")).test_client()


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[fhir.FhirServer]:
    """The FHIR server for this test session (devtools/fhir_server.py); every call must carry its token."""
    server = fhir.start(token=secrets.token_urlsafe(24))
    yield server
    server.stop()


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
