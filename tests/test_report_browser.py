"""The admin report in a real browser: headless Chromium (Debian's `chromium`, installed when missing)
opens /admin/report on a served app, as a person would, with the admin token as the Basic-auth password.
The charts must render: their SVG is in the DOM, and their bar colours fill the screenshot, which is kept
as test-artifacts/admin-report.png for a person to look at."""
from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image
from werkzeug.serving import make_server

from cds_service.web.app import create_app
from cds_service.config import Settings
from cds_service.feedback import body as feedback_body
from cds_service.feedback.page import OVERRIDE_COLOUR, WEEK_COLOUR
from cds_service.feedback.settings import StoreSettings
from cds_service.feedback.store import Store
from conftest import ROOT
from tests import debian

TOKEN = "admin-token-for-the-browser-test"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1100,1000"]
# (rule, indicator, cards issued each week, of which overridden, of which accepted)
HISTORY = [("hbv-screening-missing", "critical", 3, 2, 1), ("igg-missing", "warning", 4, 1, 2),
           ("liver-tests-missing", "warning", 2, 0, 0)]
WEEKS = 8


@pytest.fixture(scope="session")
def chromium() -> str:
    if not shutil.which("chromium"):
        debian.install("chromium")
    return shutil.which("chromium") or pytest.fail("chromium was installed but is not on PATH")


@pytest.fixture
def report_url(service, tmp_path: Path) -> Iterator[str]:
    """A served app whose store holds eight weeks of cards and feedback; the URL carries the token."""
    settings = StoreSettings(database_url=f"sqlite:///{tmp_path / 'cds.db'}", patient_hash_key=b"k" * 32,
                             admin_token=TOKEN)
    store = Store(settings)
    _seed(store, datetime.now(timezone.utc))
    server = make_server("127.0.0.1", 0, create_app(service, Settings(auth="off"), store=store), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://pharmacist:{TOKEN}@127.0.0.1:{server.server_port}/admin/report"
    server.shutdown()
    thread.join()
    store.close()


def _seed(store: Store, now: datetime) -> None:
    items = []
    for week in range(WEEKS):
        at = now - timedelta(weeks=week, hours=1)
        for rule, indicator, per_week, overridden, accepted in HISTORY:
            cards = [f"{rule}-{week}-{n}" for n in range(per_week + week % 3)]
            made = [{"uuid": c, "indicator": indicator, "source": {"topic": {"code": rule}}} for c in cards]
            store.record_cards("cd20-order-sign", "order-sign", f"patient-{week}", made, at=at)
            stamp = at.isoformat()
            items += [{"card": c, "outcome": "overridden", "outcomeTimestamp": stamp,
                       "overrideReason": {"reason": {"code": "result-elsewhere"}}} for c in cards[:overridden]]
            items += [{"card": c, "outcome": "accepted", "outcomeTimestamp": stamp,
                       "acceptedSuggestions": [{"id": "s"}]} for c in cards[overridden:overridden + accepted]]
    store.save_feedback("cd20-order-sign", feedback_body.parse({"feedback": items}))
    assert store.flush(30)


def browse(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=90)


def rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def test_the_admin_report_charts_render_in_chromium(chromium, report_url, tmp_path):
    dom = browse(chromium, tmp_path / "profile-dom", "--dump-dom", report_url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert 'id="override-rates"' in page and 'id="cards-per-week"' in page, page[:2000]
    rate_chart = page.split('id="override-rates"')[1].split("</svg>")[0]
    assert rate_chart.count('class="bar"') == 2  # liver-tests-missing got no feedback: no bar
    assert "no feedback" in rate_chart
    week_chart = page.split('id="cards-per-week"')[1].split("</svg>")[0]
    assert WEEKS <= week_chart.count('class="bar"') <= WEEKS + 1  # the current week may have begun
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "admin-report.png"
    screenshot.unlink(missing_ok=True)
    shot = browse(chromium, tmp_path / "profile-shot", f"--screenshot={screenshot}", report_url)
    assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-2000:]
    with Image.open(screenshot) as image:
        colours = {colour: count for count, colour in image.convert("RGB").getcolors(1 << 24)}
    assert colours.get(rgb(OVERRIDE_COLOUR), 0) > 2000, "no override-rate bars on the screenshot"
    assert colours.get(rgb(WEEK_COLOUR), 0) > 2000, "no cards-per-week bars on the screenshot"
