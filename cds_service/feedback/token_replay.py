"""The JWT replay cache in the feedback database: a token id (jti) accepted by one worker or instance is
refused by every other one that shares the database, until its token expires.

Accepting a token is one INSERT on the (iss, jti) primary key, so of several workers presenting the same
token at once exactly one wins, on SQLite (one writer at a time) as on PostgreSQL (the key's unique
index). The same statement takes over a row whose token has expired: a token id used again after that
belongs to a new token, as in the in-memory cache.

Expired rows go in small batches, at most once a minute per worker, after the call's own insert has
committed, so sweeping neither fails nor noticeably slows a call; `cds-service db prune` deletes them all.

If the database does not answer, the token cannot be checked: ReplayCacheUnavailable, which the app
answers with 503 and Retry-After (fail closed; the token was not recorded, so the retry is accepted).
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone

from sqlalchemy import Connection, delete, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from .models import UsedToken
from .store import Store, StoreUnavailable

log = logging.getLogger(__name__)
SWEEP_EVERY_S = 60.0
SWEEP_BATCH = 500  # rows per sweep: a minute's calls of a busy site, deleted in milliseconds
TOKENS = UsedToken.__table__


class ReplayCacheUnavailable(Exception):
    """A valid token whose id could not be checked against the replay cache: the call is refused, since
    accepting it could accept a replay, but with 503 and Retry-After rather than 401, because the token
    is fine and the same token sent again is accepted once the cache answers (it was not recorded)."""


class DatabaseReplayCache:
    """One per app, so per worker: the table is shared, the sweep's schedule is the worker's own."""

    def __init__(self, store: Store, sweep_every: float = SWEEP_EVERY_S, sweep_batch: int = SWEEP_BATCH) -> None:
        self.store = store
        self.sweep_every = sweep_every
        self.sweep_batch = sweep_batch
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def first_use(self, iss: str, jti: str, expires_at: float, now: float) -> bool:
        """auth.ReplayCache: True for exactly one of any number of concurrent callers with this token id."""
        try:
            with self.store.transaction() as connection:
                first = _claim(connection, iss, jti, _moment(expires_at), _moment(now))
        except StoreUnavailable as e:
            raise ReplayCacheUnavailable(str(e)) from e
        if self._sweep_due(now):
            self._sweep(_moment(now))
        return first

    def _sweep_due(self, now: float) -> bool:
        with self._lock:
            if now < self._next_sweep:
                return False
            self._next_sweep = now + self.sweep_every
            return True

    def _sweep(self, now: datetime) -> None:
        """Delete up to a batch of expired rows. On PostgreSQL rows another worker is deleting are skipped,
        not waited for; any failure is only logged, since the call it follows is already decided."""
        doomed = (select(TOKENS.c.iss, TOKENS.c.jti).where(TOKENS.c.expires_at <= now)
                  .order_by(TOKENS.c.expires_at).limit(self.sweep_batch).with_for_update(skip_locked=True))
        try:
            with self.store.transaction() as connection:
                connection.execute(delete(TOKENS).where(tuple_(TOKENS.c.iss, TOKENS.c.jti).in_(doomed)))
        except Exception as e:  # noqa: BLE001 - housekeeping must not turn an accepted call into an error
            log.warning("expired token ids not swept", extra={"fields": {"error": type(e).__name__}})


def prune(store: Store) -> int:
    """Delete every expired token id (`cds-service db prune`): how many."""
    with store.transaction() as connection:
        return connection.execute(delete(TOKENS).where(TOKENS.c.expires_at <= store.clock())).rowcount


def _claim(connection: Connection, iss: str, jti: str, expires_at: datetime, now: datetime) -> bool:
    """Insert the token id, or take over its row if that has expired; True if either happened."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    insert = dialect.insert(TOKENS).values(iss=iss, jti=jti, expires_at=expires_at)
    claim = insert.on_conflict_do_update(index_elements=[TOKENS.c.iss, TOKENS.c.jti],
                                         set_={"expires_at": insert.excluded.expires_at},
                                         where=TOKENS.c.expires_at <= now)
    return connection.execute(claim.returning(TOKENS.c.jti)).first() is not None  # rowcount: -1 on psycopg


def _moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)
