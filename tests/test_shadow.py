"""Shadow mode: rules or whole services evaluated on every call, their cards recorded as silent and never
sent; `cds-service report` and /admin/report put silent cards next to live ones, per 1,000 calls.

Through HTTP (the Flask app with a real store, on SQLite and PostgreSQL), the CLI (`cds-service evaluate`
must print exactly what the HTTP service answers) and the overrides file / CDS_SHADOW.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from cds_service.engine import rulebook
from cds_service.web.app import create_app
from cds_service.config import Settings
from cds_service.feedback.models import HookCall, IssuedCard
from cds_service.feedback.settings import StoreSettings
from cds_service.feedback.store import Store
from cds_service.hooks import SERVICE_IDS
from cds_service.service import CdsService
from conftest import EXAMPLES, NOW, load_json
from tests.stores import sqlite_url
from test_feedback import KEY, SIGN, TOKEN, report_rows, run_cli, table

SCREENING = "hbv-screening-missing--first-dose.json"  # cards: hbv-screening-missing, premedication-missing
LIVER = "liver-injury--alt-and-bilirubin.json"  # liver-injury, which suppresses liver-enzymes-elevated


def codes(cards: list[dict]) -> list[str]:
    return [c["source"]["topic"]["code"] for c in cards]


def overrides(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def store(database_url: str):
    store = Store(StoreSettings(database_url=database_url, patient_hash_key=KEY.encode(), admin_token=TOKEN))
    yield store
    store.close()


def app_for(book: rulebook.Rulebook, store: Store):
    return create_app(CdsService(book, clock=lambda: NOW), Settings(auth="off"), store=store).test_client()


def post(http, example: str, hook_instance: str | None = None) -> dict:
    body = load_json(EXAMPLES / example)
    body["hookInstance"] = hook_instance or str(uuid.uuid4())
    response = http.post(SIGN, json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def recorded(store: Store) -> dict[str, bool]:
    """Recorded cards: rule id -> silent."""
    return {row.rule_id: row.silent for row in table(store, IssuedCard)}


def test_a_rule_in_shadow_mode_is_recorded_as_silent_and_never_sent(tmp_path, store):
    book = rulebook.load(overrides=overrides(tmp_path, "rules:\n  hbv-screening-missing:\n    shadow: true\n"))
    answer = post(app_for(book, store), SCREENING)
    assert codes(answer["cards"]) == ["premedication-missing"]
    assert recorded(store) == {"hbv-screening-missing": True, "premedication-missing": False}
    [call] = table(store, HookCall)
    assert (call.service_id, call.hook, call.cards, call.silent) == ("cd20-order-sign", "order-sign", 1, 1)


def test_a_silent_rule_never_suppresses_a_live_card(tmp_path, store):
    """liver-injury suppresses liver-enzymes-elevated; in shadow mode it must not take that warning away."""
    book = rulebook.load(overrides=overrides(tmp_path, "rules:\n  liver-injury:\n    shadow: true\n"))
    answer = post(app_for(book, store), LIVER)
    assert "liver-enzymes-elevated" in codes(answer["cards"]) and "liver-injury" not in codes(answer["cards"])
    assert recorded(store)["liver-injury"] is True
    assert recorded(store)["liver-enzymes-elevated"] is False


def test_a_service_in_shadow_mode_answers_no_cards_and_records_every_one(tmp_path, store, service):
    book = rulebook.load(overrides=overrides(tmp_path, "services:\n  cd20-order-sign:\n    shadow: true\n"))
    answer = post(app_for(book, store), SCREENING)
    would_show = service.call("cd20-order-sign", load_json(EXAMPLES / SCREENING))["cards"]
    assert answer == {"cards": []}
    assert recorded(store) == {rule: True for rule in codes(would_show)}


def test_cds_shadow_names_rules_and_services(monkeypatch):
    monkeypatch.setenv("CDS_SHADOW", "igg-missing, cd20-patient-view")
    book = rulebook.load()
    assert book.silent("cd20-order-sign", "igg-missing") and not book.silent("cd20-order-sign", "igg-low")
    assert book.silent("cd20-patient-view", "igg-monitoring-due")
    assert book.shadow_services == {"cd20-patient-view"}


def test_the_shadow_services_are_the_services_discovery_lists(service):
    assert tuple(service.services) == SERVICE_IDS


def test_evaluate_prints_only_the_live_cards_as_the_http_service_answers(tmp_path, store, monkeypatch, capsys):
    site = overrides(tmp_path, "rules:\n  hbv-screening-missing:\n    shadow: true\n")
    body = load_json(EXAMPLES / SCREENING)
    over_http = post(app_for(rulebook.load(overrides=site), store), SCREENING, body["hookInstance"])
    code, out = run_cli(monkeypatch, capsys, store.settings.database_url, "evaluate", str(EXAMPLES / SCREENING),
                        "--now", NOW.isoformat(), CDS_RULES_OVERRIDES=str(site))
    assert code == 0, out
    assert json.loads(out) == over_http
    assert codes(over_http["cards"]) == ["premedication-missing"]


def test_the_report_shows_silent_and_live_cards_per_1000_calls(tmp_path, store, monkeypatch, capsys):
    book = rulebook.load(overrides=overrides(tmp_path, "rules:\n  hbv-screening-missing:\n    shadow: true\n"))
    http = app_for(book, store)
    retried = str(uuid.uuid4())
    for hook_instance in (retried, retried, None):  # the EHR retries one call: it counts once
        post(http, SCREENING, hook_instance)
    post(http, "clean--first-dose-all-labs-normal.json")  # no card, but a call
    assert store.flush(30)
    code, out = run_cli(monkeypatch, capsys, store.settings.database_url, "report")
    assert code == 0, out
    assert report_rows(out, table=1) == {
        ("hbv-screening-missing", "critical"): ["0", "2", "3", "0.0", "666.7"],
        ("premedication-missing", "info"): ["2", "0", "3", "666.7", "0.0"],
    }
    assert ("hbv-screening-missing", "critical") not in report_rows(out)  # shown cards and feedback only
    week = [line for line in out.split("\n\n")[2].splitlines()[2:] if "hbv-screening-missing" in line]
    assert len(week) == 1 and "hbv-screening-missing critical 0/2" in week[0] and week[0].split()[1:4] == ["3", "2", "2"]
    page = http.get("/admin/report", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(as_text=True)
    chart = page.split('id="cards-per-1000"')[1].split("</svg>")[0]
    assert "hbv-screening-missing (critical): 666.7 silent per 1,000 calls" in chart
    assert "premedication-missing (info): 666.7 live per 1,000 calls" in chart
    assert page.split('id="cards-per-week"')[1].split("</svg>")[0].count('class="bar silent"') >= 1


BAD_SHADOW = [  # overrides file text, what the error must name
    ("rules:\n  pml:\n    shadow: 'yes'\n", r"rules\.pml\.shadow: expected true or false"),
    ("services:\n  cd20-order-sing:\n    shadow: true\n", r"services\.cd20-order-sing: no such service"),
    ("services:\n  cd20-order-sign:\n    silent: true\n", r"services\.cd20-order-sign\.silent: unknown key"),
    ("services:\n  cd20-order-sign:\n    shadow: 1\n", r"services\.cd20-order-sign\.shadow: expected true or false"),
    ("services: [cd20-order-sign]\n", "services: expected a mapping"),
    ("rules:\n  pml:\n    enabled: false\n    shadow: true\n", r"rules\.pml: disabled, yet in shadow mode"),
]


@pytest.mark.parametrize("text, message", BAD_SHADOW)
def test_a_bad_shadow_setting_is_refused_naming_the_key(tmp_path, text, message):
    with pytest.raises(rulebook.RulebookError, match=message):
        rulebook.load(overrides=overrides(tmp_path, text))


def test_cds_shadow_refuses_a_name_it_does_not_know(monkeypatch):
    monkeypatch.setenv("CDS_SHADOW", "igg-misssing")
    with pytest.raises(rulebook.RulebookError, match="CDS_SHADOW: 'igg-misssing' is neither a rule id nor"):
        rulebook.load()


def test_the_catalogue_marks_what_is_in_shadow_mode(monkeypatch, capsys, tmp_path):
    code, out = run_cli(monkeypatch, capsys, sqlite_url(tmp_path / "cds.db"), "rules", CDS_SHADOW="pml cd20-patient-view")
    assert code == 0
    assert out.startswith("Services in shadow mode (every card recorded, never shown): cd20-patient-view")
    assert [line for line in out.splitlines() if line.startswith("pml ")][0].endswith("SHADOW MODE: recorded, never shown")
