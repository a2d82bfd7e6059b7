"""Card feedback (CDS Hooks 2.0 §feedback) and override analytics, through HTTP and the CLI.

Every test that touches the store runs twice through the `database_url` fixture (tests/stores.py): on an
SQLite file and on a real PostgreSQL server.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from sqlalchemy import select
from sqlalchemy.engine import make_url

from cds_service import cli
from cds_service.web.app import create_app
from cds_service.cards import OVERRIDE_SYSTEM
from cds_service.config import Settings
from cds_service.feedback import body as feedback_body
from cds_service.feedback.models import Feedback, IssuedCard, metadata
from cds_service.feedback.settings import ConfigError, StoreSettings
from cds_service.feedback.store import Store
from conftest import EXAMPLES, SHARED, load_json

KEY = "the feedback tests' patient hash key, long enough"
TOKEN = "admin-token-for-the-feedback-tests"
SIGN = "/cds-services/cd20-order-sign"
FEEDBACK = SIGN + "/feedback"
CDS_HOOKS_EXAMPLES = SHARED / "cds-hooks" / "examples"
UTC = timezone.utc


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store(StoreSettings(database_url=database_url, patient_hash_key=KEY.encode(), admin_token=TOKEN))
    yield store
    store.close()


@pytest.fixture
def http(service, store: Store):
    return create_app(service, Settings(auth="off"), store=store).test_client()


def hook_call(http, example: str) -> tuple[dict[str, Any], dict[str, Any]]:
    request = load_json(EXAMPLES / example)
    request["hookInstance"] = str(uuid.uuid4())
    response = http.post(SIGN, json=request)
    assert response.status_code == 200, response.get_json()
    return request, response.get_json()


def card(response: dict[str, Any], rule_id: str) -> dict[str, Any]:
    return next(c for c in response["cards"] if c["source"]["topic"]["code"] == rule_id)


def stamp(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).isoformat().replace("+00:00", "Z")


def overridden(card_uuid: str, at: str | None = None, **reason: Any) -> dict[str, Any]:
    item = {"card": card_uuid, "outcome": "overridden", "outcomeTimestamp": at or stamp()}
    comment = reason.pop("comment", None)
    if reason or comment:
        item["overrideReason"] = {k: v for k, v in (("reason", reason or None), ("userComment", comment)) if v}
    return item


def accepted(issued: dict[str, Any], at: str | None = None) -> dict[str, Any]:
    return {"card": issued["uuid"], "outcome": "accepted", "outcomeTimestamp": at or stamp(),
            "acceptedSuggestions": [{"id": s["uuid"]} for s in issued["suggestions"]]}


def issued_card(card_uuid: str, rule_id: str, indicator: str) -> dict[str, Any]:
    return {"uuid": card_uuid, "indicator": indicator, "source": {"topic": {"code": rule_id}}}


def issue(store: Store, *card_uuids: str) -> None:
    """Record cards with these uuids as issued by the order-sign service: feedback is kept only for those."""
    store.record_cards("cd20-order-sign", "order-sign", "patient-1",
                       [issued_card(c, "igg-missing", "warning") for c in card_uuids])
    assert store.flush(30)


def table(store: Store, model: type) -> list[Any]:
    """The table's rows, once the issued cards queued so far are written."""
    assert store.flush(30)
    with store.transaction() as connection:
        return connection.execute(select(model.__table__)).all()


def run_cli(monkeypatch, capsys, database_url: str, *args: str, **env: str) -> tuple[int, str]:
    """`cds-service ...` in this process; its log set-up is undone so pytest's log capture survives."""
    monkeypatch.setenv("CDS_DATABASE_URL", database_url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        code = cli.main(list(args))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def report_rows(text: str, table: int = 0) -> dict[tuple[str, str], list[str]]:
    """A table of `cds-service report`, its lines by (rule, indicator). Table 0: issued, feedback, accepted,
    overridden, rate, reasons; table 1: live, silent, calls, live and silent per 1,000 calls."""
    rows = {}
    for line in text.split("\n\n")[table].splitlines()[2:]:  # each table: a title, then the column names
        rule, indicator, *figures = re.split(r"\s{2,}", line.strip())
        rows[(rule, indicator)] = figures
    return rows


def unrecorded(http) -> float:
    text = http.get("/metrics").get_data(as_text=True)
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "cds_issued_cards_unrecorded_total")


@contextmanager
def outage(request: pytest.FixtureRequest, database_url: str) -> Iterator[None]:
    """The database refuses work: SQLite locked by another writer; PostgreSQL refusing connections."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        blocker = sqlite3.connect(url.database, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        return
    server, name = request.getfixturevalue("postgres"), url.database
    server.admin(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
    server.admin(sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {}")
                 .format(sql.Literal(name)))
    try:
        yield
    finally:
        server.admin(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))


def test_a_hook_call_records_its_cards_under_a_keyed_hash_of_the_patient_id(http, store):
    request, response = hook_call(http, "hbv-screening-missing--first-dose.json")
    assert http.post(SIGN, json=request).status_code == 200  # the EHR retries the same hook instance
    issued = {row.card_uuid: row for row in table(store, IssuedCard)}
    assert set(issued) == {c["uuid"] for c in response["cards"]}
    screening = card(response, "hbv-screening-missing")
    row = issued[screening["uuid"]]
    assert (row.rule_id, row.indicator, row.service_id, row.hook) == (
        "hbv-screening-missing", screening["indicator"], "cd20-order-sign", "order-sign")
    patient = request["context"]["patientId"]
    assert row.patient_hash == hmac.new(KEY.encode(), patient.encode(), hashlib.sha256).hexdigest()
    assert not [value for r in issued.values() for value in r if patient in str(value)]


def test_feedback_on_issued_cards_is_counted_per_rule_and_indicator(http, store, monkeypatch, capsys):
    _, first = hook_call(http, "hbv-screening-missing--first-dose.json")
    _, second = hook_call(http, "igg-missing--maintenance.json")
    screening, igg = card(first, "hbv-screening-missing"), card(second, "igg-missing")
    sandbox_reason = {"code": "result-elsewhere", "system": OVERRIDE_SYSTEM}  # no display, as the sandbox sends
    response = http.post(FEEDBACK, json={"feedback": [accepted(screening), overridden(igg["uuid"], **sandbox_reason)]})
    assert (response.status_code, response.get_json()) == (200, {})
    assert store.flush(30)  # the calls' cards are written a moment after the calls are answered
    code, out = run_cli(monkeypatch, capsys, store.settings.database_url, "report")
    assert code == 0, out
    rows = report_rows(out)
    assert rows[("hbv-screening-missing", screening["indicator"])] == ["1", "1", "1", "0", "0%", "-"]
    assert rows[("igg-missing", igg["indicator"])] == ["1", "1", "0", "1", "100%", "result-elsewhere (1)"]


def test_the_spec_and_sandbox_feedback_examples_are_stored(http, store):
    names = ["spec-2.0/feedback-accepted.json", "spec-2.0/feedback-overridden-no-reason.json",
             "spec-2.0/feedback-overridden-with-reason.json", "sandbox/observed/feedback-accepted.json",
             "sandbox/observed/feedback-overridden.json"]
    issue(store, *{item["card"] for name in names for item in load_json(CDS_HOOKS_EXAMPLES / name)["feedback"]})
    for name in names:
        response = http.post(FEEDBACK, data=(CDS_HOOKS_EXAMPLES / name).read_bytes(), content_type="application/json")
        assert (response.status_code, response.get_json()) == (200, {}), name
    stored = {(row.card_uuid, row.outcome): row for row in table(store, Feedback)}
    assert len(stored) == len(names)
    with_reason = stored[("9368d37b-283f-44a0-93ea-547cebab93ed", "overridden")]
    assert (with_reason.reason_system, with_reason.reason_code, with_reason.reason_display) == (
        "https://example.com/cds-hooks/override-reason-system", "d7ecf885", None)
    assert with_reason.user_comment == "A comment entered by the clinician."
    sandbox = stored[("card-uuid-1", "accepted")]
    assert sandbox.accepted_suggestions == ["sugg-uuid-1"]
    assert sandbox.outcome_at == datetime(2026, 11, 21, 19, 18, 9, 735000, tzinfo=UTC)


def test_feedback_about_cards_never_issued_is_answered_and_not_stored(http, store):
    _, response = hook_call(http, "hbv-screening-missing--first-dose.json")
    issued = card(response, "hbv-screening-missing")["uuid"]
    body = {"feedback": [overridden(issued)] + [overridden(f"made-up-{n}") for n in range(50)]}
    answer = http.post(FEEDBACK, json=body)
    assert (answer.status_code, answer.get_json()) == (200, {})
    other_service = http.post("/cds-services/cd20-order-select/feedback", json={"feedback": [overridden(issued)]})
    assert other_service.status_code == 200  # a card of the order-sign service is not one of order-select's
    assert [(row.card_uuid, row.service_id) for row in table(store, Feedback)] == [(issued, "cd20-order-sign")]


def test_feedback_posts_are_bounded_in_items_and_size(http, store):
    many = http.post(FEEDBACK, json={"feedback": [overridden(f"card-{n}") for n in range(101)]})
    assert many.status_code == 400 and "at most 100 items" in many.get_json()["error"]
    comment = "x" * 4000
    large = http.post(FEEDBACK, json={"feedback": [overridden(f"card-{n}", comment=comment) for n in range(80)]})
    assert large.status_code == 413 and large.get_json()["status"] == 413
    issue(store, *(f"card-{n}" for n in range(100)))
    within = http.post(FEEDBACK, json={"feedback": [overridden(f"card-{n}", comment="y" * 2000) for n in range(100)]})
    assert within.status_code == 200
    assert len(table(store, Feedback)) == 100


def test_a_retried_feedback_is_stored_once(http, store):
    issue(store, "card-1")
    twice = {"feedback": [overridden("card-1", "2026-11-21T12:05:00Z")] * 2}
    for _ in range(3):
        assert http.post(FEEDBACK, json=twice).status_code == 200
    same_instant = overridden("card-1", "2026-11-21T13:05:00+01:00")
    assert http.post(FEEDBACK, json={"feedback": [same_instant]}).status_code == 200
    assert len(table(store, Feedback)) == 1
    later = overridden("card-1", "2026-11-21T12:06:00Z")
    assert http.post(FEEDBACK, json={"feedback": [later]}).status_code == 200
    assert len(table(store, Feedback)) == 2


def test_free_text_that_a_database_cannot_hold_is_cleaned_not_refused(http, store):
    issue(store, "c1")
    raw = ('{"feedback": [{"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-11-21T12:05:00Z", '
           '"overrideReason": {"reason": {"code": "other", "display": "%s"}, "userComment": "a\\u0000b\\ud800c"}}]}'
           % ("d" * 300))
    assert http.post(FEEDBACK, data=raw, content_type="application/json").status_code == 200
    [row] = table(store, Feedback)
    assert (row.user_comment, row.reason_display) == ("ab?c", "d" * 255)


VALID = {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-11-21T12:05:00Z"}
MALFORMED = [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"[" * 100 + b"]" * 100, "nested more than"),
    ({}, "feedback: Field required"),
    ({"feedback": {"card": "c1"}}, "feedback: Input should be a valid list"),
    ({"feedback": [{**VALID, "outcome": "dismissed"}]}, "feedback[0].outcome"),
    ({"feedback": [{"outcome": "overridden", "outcomeTimestamp": VALID["outcomeTimestamp"]}]}, "feedback[0].card"),
    ({"feedback": [{**VALID, "card": 42}]}, "feedback[0].card"),
    ({"feedback": [{**VALID, "card": ""}]}, "feedback[0].card"),
    ({"feedback": [{**VALID, "card": "x" * 256}]}, "feedback[0].card"),
    ({"feedback": [{**VALID, "card": "a\x00b"}]}, "NUL"),
    (b'{"feedback": [{"card": "\\ud800", "outcome": "overridden", "outcomeTimestamp": "2026-11-21T12:05:00Z"}]}',
     "feedback[0].card"),
    ({"feedback": [{**VALID, "outcomeTimestamp": "9999-12-31T23:59:59-05:00"}]}, "feedback[0].outcomeTimestamp"),
    ({"feedback": [{**VALID, "outcome": "accepted"}]}, "acceptedSuggestions (the ids"),
    ({"feedback": [{**VALID, "outcome": "accepted", "acceptedSuggestions": [{}]}]}, "acceptedSuggestions[0].id"),
    ({"feedback": [{**VALID, "acceptedSuggestions": [{"id": "s1"}]}]}, "only for outcome 'accepted'"),
    ({"feedback": [{**VALID, "outcomeTimestamp": "2026-11-21T12:05:00"}]}, "with a time zone"),
    ({"feedback": [{**VALID, "outcomeTimestamp": "yesterday"}]}, "feedback[0].outcomeTimestamp"),
    ({"feedback": [{**VALID, "overrideReason": {"reason": {"system": "s"}}}]}, "overrideReason.reason.code"),
    ({"feedback": [VALID, {**VALID, "outcome": "maybe"}]}, "feedback[1].outcome"),
]


def test_malformed_feedback_is_400_with_a_json_error_and_nothing_is_stored(http, store):
    for body, message in MALFORMED:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = http.post(FEEDBACK, data=raw, content_type="application/json")
        assert response.status_code == 400, body
        assert message in response.get_json()["error"], (body, response.get_json())
    assert table(store, Feedback) == []


def test_feedback_for_an_unknown_service_is_404(http, store):
    response = http.post("/cds-services/no-such-service/feedback", json={"feedback": [VALID]})
    assert response.status_code == 404
    assert "no-such-service" in response.get_json()["error"]
    assert table(store, Feedback) == []


@contextmanager
def table_locked(request: pytest.FixtureRequest, database_url: str) -> Iterator[None]:
    """Another client holds the write lock for a while: all of SQLite, or PostgreSQL's issued_cards table."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        with outage(request, database_url):
            yield
        return
    with psycopg.connect(database_url) as blocker:
        blocker.execute("LOCK TABLE issued_cards IN ACCESS EXCLUSIVE MODE")
        yield


def test_a_hook_call_does_not_wait_for_the_database_and_its_cards_are_written_when_it_is_free(
        request, http, store, database_url):
    store.upgrade()
    with table_locked(request, database_url):
        _, response = hook_call(http, "hbv-screening-missing--first-dose.json")
        assert response["cards"]
    issued = {row.card_uuid for row in table(store, IssuedCard)}
    assert issued == {c["uuid"] for c in response["cards"]}


def test_while_the_store_is_down_feedback_gets_503_and_hook_calls_still_get_cards(
        request, service, database_url, caplog):
    quick = database_url + "?timeout=0.2" if database_url.startswith("sqlite") else database_url
    store = Store(StoreSettings(database_url=quick, patient_hash_key=KEY.encode()))
    http = create_app(service, Settings(auth="off"), store=store).test_client()
    store.upgrade()
    issue(store, "card-during-outage")
    body = {"feedback": [overridden("card-during-outage")]}
    before = unrecorded(http)
    with outage(request, database_url):
        response = http.post(FEEDBACK, json=body)
        assert response.status_code == 503 and response.headers["Retry-After"]
        assert "send it again" in response.get_json()["error"]
        request_body, cards = hook_call(http, "hbv-screening-missing--first-dose.json")
        assert card(cards, "hbv-screening-missing")
        assert store.flush(30)  # the writer has tried, and failed
    assert unrecorded(http) == before + 1
    assert "issued cards not recorded" in caplog.text
    assert request_body["context"]["patientId"] not in caplog.text
    assert http.post(FEEDBACK, json=body).status_code == 200  # the EHR's retry, once the store is back
    assert [row.card_uuid for row in table(store, Feedback)] == ["card-during-outage"]
    store.close()


def test_prune_deletes_cards_and_feedback_older_than_the_retention_period(database_url, monkeypatch, capsys):
    settings = StoreSettings(database_url=database_url, patient_hash_key=KEY.encode())
    now = datetime.now(UTC)
    for name, days_ago in (("old", 40), ("recent", 20)):
        store = Store(settings, clock=lambda days_ago=days_ago: now - timedelta(days=days_ago))
        store.record_cards("cd20-order-sign", "order-sign", "patient-1",
                           [issued_card(f"{name}-card", "igg-missing", "warning")])
        store.save_feedback("cd20-order-sign", feedback_body.parse({"feedback": [overridden(f"{name}-card")]}))
        store.close()
    code, out = run_cli(monkeypatch, capsys, database_url, "db", "prune", CDS_RETENTION_DAYS="30")
    assert code == 0 and "pruned 1 issued card(s) and 1 feedback record(s)" in out
    store = Store(settings)
    assert [row.card_uuid for row in table(store, IssuedCard)] == ["recent-card"]
    assert [row.card_uuid for row in table(store, Feedback)] == ["recent-card"]
    store.close()


def test_db_upgrade_builds_the_schema_the_models_describe(database_url, monkeypatch, capsys):
    for run, migrated in ((1, True), (2, False)):  # the second run finds nothing to do
        code, out = run_cli(monkeypatch, capsys, database_url, "db", "upgrade")
        assert code == 0 and "feedback database at schema revision 0003" in out.splitlines()
        assert ("Running upgrade" in out) is migrated, run
    store = Store(StoreSettings(database_url=database_url))
    with store.transaction() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []
    store.close()


def test_the_report_counts_a_chosen_period_with_the_top_override_reasons(database_url, monkeypatch, capsys):
    march, may = datetime(2026, 3, 10, 9, tzinfo=UTC), datetime(2026, 5, 4, 9, tzinfo=UTC)
    store = Store(StoreSettings(database_url=database_url, patient_hash_key=KEY.encode()))
    hbv = [issued_card(f"hbv-{i}", "hbv-screening-missing", "critical") for i in range(4)]
    store.record_cards("cd20-order-sign", "order-sign", "patient-1", hbv, at=march)
    for name, at in (("igg-march", march), ("igg-may", may)):
        store.record_cards("cd20-order-sign", "order-sign", "patient-2", [issued_card(name, "igg-missing", "warning")],
                           at=at)
    elsewhere = {"code": "result-elsewhere", "system": OVERRIDE_SYSTEM}
    reviewed = {"code": "specialist-reviewed", "system": OVERRIDE_SYSTEM, "display": "Reviewed with a specialist"}
    items = [overridden("hbv-0", stamp(march), **elsewhere), overridden("hbv-1", stamp(march), **elsewhere),
             overridden("hbv-2", stamp(march), **reviewed), overridden("hbv-3", stamp(march)),
             {"card": "hbv-3", "outcome": "accepted", "outcomeTimestamp": stamp(march + timedelta(minutes=1)),
              "acceptedSuggestions": [{"id": "s"}]},  # the card's latest fate counts
             overridden("igg-march", stamp(march)), overridden("not-ours", stamp(march)),
             overridden("igg-may", stamp(may))]
    assert store.save_feedback("cd20-order-sign", feedback_body.parse({"feedback": items})) == len(items) - 1
    store.close()
    code, out = run_cli(monkeypatch, capsys, database_url, "report", "--since", "2026-03-01", "--until", "2026-03-31")
    assert code == 0, out
    assert out.startswith("Card feedback from 2026-03-01 00:00 to 2026-04-01 00:00 (UTC)")
    assert report_rows(out) == {
        ("hbv-screening-missing", "critical"): ["4", "5", "1", "3", "75%",
                                                "result-elsewhere (2), Reviewed with a specialist (1)"],
        ("igg-missing", "warning"): ["1", "1", "0", "1", "100%", "-"],
    }  # "not-ours" was never issued: its feedback was not stored
    code, out = run_cli(monkeypatch, capsys, database_url, "report", "--since", "March")
    assert code == 2 and "'March' is neither a date" in out


def test_the_admin_report_needs_the_token_and_shows_no_patient_data(http, store):
    request, response = hook_call(http, "hbv-screening-missing--first-dose.json")
    comment = "Mrs Example's HBV serology was done at St Elsewhere"
    item = overridden(card(response, "hbv-screening-missing")["uuid"], comment=comment)
    assert http.post(FEEDBACK, json={"feedback": [item]}).status_code == 200
    assert store.flush(30)  # the call's cards are written a moment after it is answered
    refused = http.get("/admin/report")
    assert refused.status_code == 401
    assert any(c.startswith("Basic ") for c in refused.headers.getlist("WWW-Authenticate"))
    assert http.get("/admin/report", headers={"Authorization": "Bearer not-the-token"}).status_code == 401
    basic = "Basic " + base64.b64encode(f"pharmacist:{TOKEN}".encode()).decode()
    assert http.get("/admin/report", headers={"Authorization": basic}).status_code == 200
    page = http.get("/admin/report", headers={"Authorization": f"Bearer {TOKEN}"})
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    html = page.get_data(as_text=True)
    assert 'id="override-rates"' in html and 'id="cards-per-week"' in html and "hbv-screening-missing" in html
    patient = request["context"]["patientId"]
    patient_hash = hmac.new(KEY.encode(), patient.encode(), hashlib.sha256).hexdigest()
    assert patient not in html and patient_hash not in html and "Mrs Example" not in html
    bad = http.get("/admin/report?since=soon", headers={"Authorization": f"Bearer {TOKEN}"})
    assert bad.status_code == 400 and "since" in bad.get_json()["error"]
    for query, said in (("since=0001-01-01&until=9999-12-31", "end of the calendar"),
                        ("since=0001-01-01&until=0001-01-02", "must lie between"),
                        ("until=0001-01-01", "too early"), ("since=2000-01-01&until=2026-01-01", "at most 3660 days")):
        bad = http.get(f"/admin/report?{query}", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bad.status_code == 400 and said in bad.get_json()["error"], query


def test_without_an_admin_token_the_report_is_off_in_production_and_open_in_development(service, database_url):
    for dev, status in ((False, 404), (True, 200)):
        store = Store(StoreSettings(database_url=database_url, patient_hash_key=KEY.encode()))
        http = create_app(service, Settings(dev=dev, auth="off"), store=store).test_client()
        assert http.get("/admin/report").status_code == status
        store.close()


def test_production_refuses_to_start_without_a_patient_hash_key(service, monkeypatch, caplog, tmp_path):
    monkeypatch.delenv("CDS_PATIENT_HASH_KEY")
    with pytest.raises(ConfigError, match="CDS_PATIENT_HASH_KEY is not set"):
        create_app(service, Settings(auth="off"))
    create_app(service, Settings(dev=True, auth="off"))
    assert "fixed, public development key" in caplog.text
    monkeypatch.setenv("CDS_PATIENT_HASH_KEY", "too short")
    with pytest.raises(ConfigError, match="at least 32 characters"):
        create_app(service, Settings(auth="off"))
    env = {k: v for k, v in os.environ.items() if k != "CDS_PATIENT_HASH_KEY"}
    env.update(CDS_AUTH="off", PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    serve = subprocess.run([sys.executable, "-m", "cds_service.cli", "serve", "--port", "9"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert serve.returncode == 2 and "CDS_PATIENT_HASH_KEY is not set" in serve.stderr
