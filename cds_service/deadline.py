"""One hook call's time budget, kept cooperatively.

Python cannot stop a thread from outside, and gunicorn's worker timeout does not stop a gthread worker's
busy thread either: a call that runs long keeps its thread (and, through the engine's lock, the worker's
other calls) until it ends by itself. So the call's deadline is held in a context variable, and the loops
whose length the caller decides (reading the record, asking the engine about each order, building each
card) check it and stop with DeadlineExceeded once it has passed. Everything between two checks is
bounded by the request limits (resources, draft orders), so a call ends soon after its deadline.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

_deadline: ContextVar[float | None] = ContextVar("call_deadline", default=None)


class DeadlineExceeded(Exception):
    """The call ran past its budget and was stopped (HTTP 503 with Retry-After)."""


@contextmanager
def budget(seconds: float | None) -> Iterator[None]:
    """Give the code inside `seconds` to finish (None: no deadline)."""
    token = _deadline.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def check() -> None:
    """Raise DeadlineExceeded if the current call's deadline has passed."""
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded("the checks did not finish within the time allowed for one call")


def remaining() -> float | None:
    """Seconds left before the current call's deadline (never negative), None without a deadline."""
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())
