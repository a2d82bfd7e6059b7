"""The feedback database: SQLite by default, PostgreSQL when CDS_DATABASE_URL says so.

Hook calls and their issued cards (shown, and silent ones of rules in shadow mode) are written a moment
after the hook call, by writer.IssuedCardWriter. Two promises about
feedback. Feedback answered 200 is on disk: each POST is one committed transaction (SQLite in WAL
mode with synchronous=FULL; PostgreSQL commits synchronously). A retried POST is stored once: a unique
key on card, outcome and outcomeTimestamp, with inserts that skip what is already there.
Database trouble becomes StoreUnavailable, which the web app turns into 503 so the EHR retries.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from prometheus_client import Counter
from sqlalchemy import Connection, Engine, Table, create_engine, delete, event, inspect, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from .body import FeedbackItem
from .models import Feedback, HookCall, IssuedCard
from .settings import ConfigError, StoreSettings, patient_hash
from .writer import Call, IssuedCardWriter

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 0x63643230  # PostgreSQL advisory lock: instances starting together migrate one at a time
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)
# Lock waits fail fast so a hook call never hangs on the store; reports may take longer.
PG_OPTIONS = "-c TimeZone=UTC -c lock_timeout=2000 -c statement_timeout=30000"
SQLITE_BUSY_TIMEOUT_S = 5.0
ISSUED_WAIT_S = 1.0  # feedback about a card not on record waits this long for queued issued cards
Clock = Callable[[], datetime]
UNRECORDED = Counter("cds_issued_cards_unrecorded_total",
                     "Hook calls whose cards could not be recorded in the feedback store (cards were still sent)",
                     ["service"])  # labelled, so no sample file exists before a worker counts one


class StoreUnavailable(Exception):
    """The database could not be reached or did not answer in time: retry later (HTTP 503)."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Store:
    def __init__(self, settings: StoreSettings, clock: Clock = utc_now) -> None:
        self.settings = settings
        self.engine = _engine(settings.database_url)
        self.clock = clock
        self._lock = threading.Lock()
        # SQLite lets one writer in at a time and makes the others sleep in growing steps (up to 100 ms):
        # a worker's threads queue here instead, so only the worker processes ever meet SQLite's lock.
        self._writers = threading.RLock() if self.engine.dialect.name == "sqlite" else nullcontext()
        self._schema_ready = False
        self._issued = IssuedCardWriter(self._write_issued, lambda call: _unrecorded(call[0], len(call[2]), "QueueFull"))

    def close(self) -> None:
        """Write the issued cards still queued, then close the connections."""
        self._issued.stop()
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One committed transaction on the current schema; database trouble becomes StoreUnavailable."""
        if not self._schema_ready:  # a store that was down at start-up gets its migrations now
            self.upgrade()
        with self._transaction() as connection:
            yield connection

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        try:
            with self._writers, self.engine.begin() as connection:
                yield connection
        except UNAVAILABLE as e:
            raise StoreUnavailable(type(getattr(e, "orig", None) or e).__name__) from e

    def check(self) -> None:
        """Readiness: raises StoreUnavailable unless the database answers."""
        with self._transaction() as connection:
            connection.execute(text("SELECT 1"))

    def upgrade(self) -> str:
        """Bring the schema to the newest migration; returns it. Alembic runs (and logs) only when a
        migration is due, so the workers' start-up check is quiet and quick."""
        head = ScriptDirectory(str(MIGRATIONS)).get_current_head() or ""
        with self._lock, self._transaction() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK})
            if _revision(connection) != head:
                config = Config()
                config.set_main_option("script_location", str(MIGRATIONS))
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        self._schema_ready = True
        return head

    def record_cards(self, service_id: str, hook: str, patient_id: str, cards: Sequence[dict[str, Any]],
                     at: datetime | None = None, silent: Sequence[dict[str, Any]] = (),
                     hook_instance: str | None = None) -> None:
        """Remember a hook call, and which rule made each card it showed or kept silent, so feedback can be
        tied to the rule and the report can count cards per 1,000 calls: queued now, written a moment
        later (see writer.py). A call is counted once per service and `hook_instance` (an EHR's retry is
        the same call); without one, every record is a call of its own. Best effort: a failure is logged
        (without patient data) and counted, and never reaches the clinician's hook call."""
        issued_at = at or self.clock()
        call = {"call_key": _call_key(service_id, hook_instance or uuid.uuid4().hex), "service_id": service_id,
                "hook": hook, "called_at": issued_at, "cards": len(cards), "silent": len(silent)}
        rows = []
        if cards or silent:
            try:
                patient_hash = self._patient_hash(patient_id)
            except ConfigError as e:
                _unrecorded(service_id, len(cards) + len(silent), type(e).__name__)
                return
            rows = [{"card_uuid": c["uuid"], "service_id": service_id, "hook": hook,
                     "rule_id": c["source"]["topic"]["code"], "indicator": c["indicator"],
                     "patient_hash": patient_hash, "issued_at": issued_at, "silent": quiet}
                    for shown, quiet in ((cards, False), (silent, True)) for c in shown]
        self._issued.add((service_id, call, rows))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the cards queued so far are written (or given up on); False if `timeout` ran out."""
        return self._issued.flush(timeout)

    def _write_issued(self, calls: list[Call]) -> None:
        cards = [row for _, _, rows in calls for row in rows]
        try:
            with self.transaction() as connection:
                _insert_new(connection, HookCall.__table__, [call for _, call, _ in calls])
                if cards:
                    _insert_new(connection, IssuedCard.__table__, cards)
        except Exception as e:  # noqa: BLE001 - whatever went wrong, the writer must go on with the next calls
            for service_id, _, rows in calls:
                _unrecorded(service_id, len(rows), type(e).__name__)

    def save_feedback(self, service_id: str, items: Sequence[FeedbackItem]) -> int:
        """Store a POST's feedback about cards this service issued, in one transaction; returns how many
        items that was. Items already stored (a retry) are skipped. Items about cards it has no record of
        issuing (never issued, pruned, or not recorded) are not stored: anyone who can post feedback could
        otherwise fill the database and the report with cards that never existed, and CDS Hooks lets a
        service ignore feedback."""
        received = self.clock()
        cards = {item.card for item in items}
        with self.transaction() as connection:
            known = _save_known(connection, service_id, items, received)
        if known != cards:  # a card issued a moment ago may still be queued for writing (writer.py)
            self.flush(ISSUED_WAIT_S)
            with self.transaction() as connection:
                known = _save_known(connection, service_id, items, received)
        return sum(item.card in known for item in items)

    def prune(self) -> tuple[datetime, int, int, int]:
        """Delete cards, feedback and hook calls older than the retention period: (cutoff, cards, feedback,
        calls) deleted."""
        cutoff = self.clock() - timedelta(days=self.settings.retention_days)
        with self.transaction() as connection:
            cards = connection.execute(delete(IssuedCard).where(IssuedCard.issued_at < cutoff)).rowcount
            feedback = connection.execute(delete(Feedback).where(Feedback.received_at < cutoff)).rowcount
            calls = connection.execute(delete(HookCall).where(HookCall.called_at < cutoff)).rowcount
        return cutoff, cards, feedback, calls

    def _patient_hash(self, patient_id: str) -> str:
        if self.settings.patient_hash_key is None:
            raise ConfigError("no patient hash key")
        return patient_hash(self.settings.patient_hash_key, patient_id)


def _call_key(service_id: str, hook_instance: str) -> str:
    return hashlib.sha256(f"{service_id}\n{hook_instance}".encode(errors="replace")).hexdigest()


def _unrecorded(service_id: str, cards: int, error: str) -> None:
    UNRECORDED.labels(service_id).inc()
    log.error("issued cards not recorded", extra={"fields": {"error": error, "cards": cards}})


def open_for_serving(dev: bool) -> Store:
    """The web app's store, its schema brought up to date now; if the database is down, on first use."""
    store = Store(StoreSettings.from_env(dev))
    try:
        store.upgrade()
    except StoreUnavailable as e:
        log.error("feedback database unreachable at start-up; feedback answers 503 until it is back",
                  extra={"fields": {"error": str(e)}})
    return store


def _revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _feedback_row(service_id: str, item: FeedbackItem, received: datetime) -> dict[str, Any]:
    reason = item.reason
    return {"service_id": service_id, "card_uuid": item.card, "outcome": item.outcome,
            "outcome_at": item.outcome_at, "accepted_suggestions": list(item.accepted_suggestions),
            "reason_system": reason.system if reason else None, "reason_code": reason.code if reason else None,
            "reason_display": reason.display if reason else None, "user_comment": item.comment,
            "received_at": received}


def _save_known(connection: Connection, service_id: str, items: Sequence[FeedbackItem], received: datetime
                ) -> set[str]:
    """Insert the items about cards on record as issued by this service; returns those cards."""
    cards = {item.card for item in items}
    known = set(connection.execute(select(IssuedCard.card_uuid).where(
        IssuedCard.service_id == service_id, IssuedCard.card_uuid.in_(cards))).scalars()) if cards else set()
    rows = list({(i.card, i.outcome, i.outcome_at): _feedback_row(service_id, i, received)
                 for i in items if i.card in known}.values())
    if rows:
        _insert_new(connection, Feedback.__table__, rows)
    return known


def _insert_new(connection: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    connection.execute(dialect.insert(table).on_conflict_do_nothing(), rows)


def database_url(url: str) -> URL:
    """postgres:// and postgresql:// mean psycopg 3 here, the one PostgreSQL driver this package installs."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("CDS_DATABASE_URL is not a database URL (sqlite:///PATH or postgresql://...)") from None
    return parsed.set(drivername="postgresql+psycopg") if parsed.drivername == "postgresql" else parsed


def _engine(url: str) -> Engine:
    parsed = database_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed)
    if backend == "postgresql":
        options = " ".join(o for o in (PG_OPTIONS, parsed.query.get("options")) if isinstance(o, str))
        connect_args: dict[str, Any] = {"options": options}
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = 3
        return create_engine(parsed, pool_pre_ping=True, pool_timeout=5, connect_args=connect_args)
    raise ConfigError(f"CDS_DATABASE_URL: {backend!r} is not supported; use sqlite:///PATH or postgresql://...")


def _sqlite_engine(url: URL) -> Engine:
    if not url.database or url.database == ":memory:":
        raise ConfigError("CDS_DATABASE_URL: SQLite needs a file (e.g. sqlite:///var/cds.db); memory loses feedback")
    try:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"CDS_DATABASE_URL: cannot create the folder of {url.database}: {e.strerror}") from None
    engine = create_engine(url, connect_args={} if "timeout" in url.query else {"timeout": SQLITE_BUSY_TIMEOUT_S})
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN"))
    return engine


def _sqlite_connect(connection: Any, _record: Any) -> None:
    """WAL lets reports read while feedback is written; synchronous=FULL makes a commit survive power loss.
    The driver's own transaction handling is switched off for SQLAlchemy's BEGIN, so that migrations,
    DDL included, are atomic."""
    connection.isolation_level = None
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()
