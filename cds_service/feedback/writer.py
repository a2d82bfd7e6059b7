"""Issued cards, written by a thread of their own a moment after the hook call is answered.

A hook call never waits for the database (a SQLite commit waits for the disk), and one transaction
carries every call queued since the last: the thread wakes every WRITE_EVERY_S, not once per call, so a
busy worker pays for neither a transaction nor a thread switch per call. A normal exit (SIGTERM, Ctrl-C)
writes what is queued first; what is queued when a process is killed outright is lost, as recording
issued cards has always been best effort.
"""
from __future__ import annotations

import atexit
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

WRITE_EVERY_S = 0.05
QUEUED_CALLS_MAX = 10_000  # beyond it (a database that hangs), calls' cards are dropped and counted
EXIT_WAIT_S = 5.0

Call = tuple[str, dict[str, Any], list[dict[str, Any]]]  # the service id, the call's row, its cards' rows
Write = Callable[[list[Call]], None]  # writes the calls' rows in one transaction; must not raise
Drop = Callable[[Call], None]


class IssuedCardWriter:
    def __init__(self, write: Write, drop: Drop) -> None:
        self._write = write
        self._drop = drop
        self._queue: deque[Call | threading.Event | None] = deque()  # calls, flush marks, None to stop
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def add(self, call: Call) -> None:
        if len(self._queue) >= QUEUED_CALLS_MAX:
            self._drop(call)
            return
        self._start()
        self._queue.append(call)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the calls queued so far are written (or given up on); False if `timeout` ran out."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.append(done)
        self._wake.set()
        return done.wait(timeout)

    def stop(self) -> None:
        """Write what is queued (waiting EXIT_WAIT_S at most) and end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            atexit.unregister(self._stop_thread)
            self._stop_thread(thread)

    def _start(self) -> None:
        """Started on first use, in the process that uses it: a thread does not survive gunicorn's fork."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="issued-cards", daemon=True)
                self._thread.start()
                atexit.register(self._stop_thread, self._thread)

    def _stop_thread(self, thread: threading.Thread) -> None:
        self._queue.append(None)
        self._wake.set()
        thread.join(EXIT_WAIT_S)

    def _run(self) -> None:
        while True:
            self._wake.wait(WRITE_EVERY_S)
            self._wake.clear()
            items = [self._queue.popleft() for _ in range(len(self._queue))]
            calls = [item for item in items if isinstance(item, tuple)]
            if calls:
                self._write(calls)
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()
            if None in items:
                return
