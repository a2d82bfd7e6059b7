"""Rules and overrides reload without a restart, through a real server with two workers: POST /admin/reload
(admin token) and SIGHUP to the master. A bad set is refused and the running one keeps serving."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import requests

from security_support import example_request, serve, serve_process

ADMIN = "reload-test-admin-token"
ORDER = "cardiac-history--heart-failure.json"  # gets a cardiac-history card until the rule is disabled


def _cards(base: str) -> set[str]:
    body = example_request(ORDER)
    answer = requests.post(f"{base}/cds-services/cd20-order-sign", json=body, timeout=10)
    answer.raise_for_status()
    return {c["source"]["topic"]["code"] for c in answer.json()["cards"]}


def _all_workers(base: str, has_rule: bool, seconds: float = 20) -> None:
    """Every worker answers alike: eight calls in a row agree, within a bounded wait for restarts."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(("cardiac-history" in _cards(base)) is has_rule for _ in range(8)):
            return
        time.sleep(0.2)
    raise AssertionError(f"workers did not all {'keep' if has_rule else 'drop'} cardiac-history in {seconds} s")


@pytest.fixture
def overrides(tmp_path: Path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text("thresholds: {}\n")
    return path


def _env(overrides: Path) -> dict[str, str]:
    return {"CDS_DEV": "1", "CDS_AUTH": "off", "CDS_NOW": "2026-11-21T12:00:00Z", "WEB_CONCURRENCY": "2",
            "CDS_RULES_OVERRIDES": str(overrides), "CDS_ADMIN_TOKEN": ADMIN}


def test_admin_reload_applies_new_overrides_in_every_worker(tmp_path, overrides):
    with serve(_env(overrides), tmp_path / "serve.log") as base:
        assert "cardiac-history" in _cards(base)
        overrides.write_text("rules:\n  cardiac-history:\n    enabled: false\n")
        refused = requests.post(f"{base}/admin/reload", timeout=10)
        assert refused.status_code == 401
        answer = requests.post(f"{base}/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
        assert answer.status_code == 200, answer.text
        _all_workers(base, has_rule=False)


@pytest.mark.parametrize("bad, named", [
    ("rules:\n  cardiac-history:\n    enabled: nope\n", "rules.cardiac-history.enabled"),
    # 0.00005 would reach durable-rules as 5e-05, which its parser mis-reads (engine/durable_rules.py)
    ("thresholds:\n  neutrophils:\n    critical_below: 0.00005\n", "a rule compares with 5e-05"),
], ids=["not-a-boolean", "a-limit-the-engine-cannot-read"])
def test_a_bad_set_is_refused_and_the_running_one_stays(tmp_path, overrides, bad, named):
    with serve(_env(overrides), tmp_path / "serve.log") as base:
        overrides.write_text(bad)
        answer = requests.post(f"{base}/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
        assert answer.status_code == 422
        assert named in answer.json()["error"]
        _all_workers(base, has_rule=True, seconds=3)


def test_sighup_reloads_a_good_set_and_ignores_a_bad_one(tmp_path, overrides):
    with serve_process(_env(overrides), tmp_path / "serve.log") as (base, master):
        overrides.write_text("thresholds:\n  neutrophils:\n    critical_bellow: 0.4\n")
        os.kill(master.pid, signal.SIGHUP)  # `serve` runs gunicorn's master in its own process
        time.sleep(1)
        _all_workers(base, has_rule=True, seconds=3)
        assert "rules not reloaded" in (tmp_path / "serve.log").read_text()
        overrides.write_text("rules:\n  cardiac-history:\n    enabled: false\n")
        os.kill(master.pid, signal.SIGHUP)
        _all_workers(base, has_rule=False)
