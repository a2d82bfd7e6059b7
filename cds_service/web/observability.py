"""What operators and orchestrators watch: liveness, readiness, and Prometheus metrics.

`/healthz` says only that the process answers, so a busy worker is not restarted for being slow.
`/readyz` says whether this instance should get traffic: rules loaded, the engine answering a tiny
evaluation, and the feedback database answering (503 otherwise).
`/metrics` is the Prometheus text format. Under gunicorn every worker is its own process, so the
server runs prometheus_client in multiprocess mode (see server.py) and /metrics adds all workers up.
Labels hold rule ids, indicators, service ids, routes and statuses: never anything about a patient.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess

from ..metrics import MULTIPROCESS_DIR, SECONDS

log = logging.getLogger(__name__)
UNPROBED_PATHS = ("/healthz", "/readyz", "/metrics")  # not timed: probes would drown the traffic figures

REQUEST_SECONDS = Histogram(
    "cds_http_request_duration_seconds", "HTTP requests by route, CDS service id and status",
    ["route", "service", "status"], buckets=SECONDS)
CARDS = Counter("cds_cards_total", "Cards returned, by rule id and indicator", ["rule", "indicator"])

ReadinessCheck = Callable[[], None]  # raises when the instance should not take traffic


def install(app: Flask, database: ReadinessCheck | None = None) -> None:
    """Add the probe and metrics routes, and time every other request.

    Timing starts at `g.started`, which the app's first before-request hook sets, so calls that an
    earlier hook answers (401, CORS preflight) are timed too. The CDS service is looked up in
    app.extensions at each probe, so a reloaded rulebook is what readiness reports on.
    """

    @app.after_request
    def _observe(response: Response) -> Response:
        if request.path not in UNPROBED_PATHS and "started" in g:
            REQUEST_SECONDS.labels(_route(), _service_id(), str(response.status_code)).observe(
                time.perf_counter() - g.started)
        return response

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "alive"})

    @app.get("/readyz")
    def readyz() -> Response:
        checks = {"rules": _rules_loaded, "engine": _engine_answers}
        if database is not None:
            checks["database"] = database
        results = {name: _run(name, check) for name, check in checks.items()}
        ready = all(result == "ok" for result in results.values())
        response = jsonify({"status": "ready" if ready else "not ready", "checks": results})
        response.status_code = 200 if ready else 503
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)


def count_cards(cards: Iterable[dict[str, Any]]) -> None:
    for card in cards:
        rule = ((card.get("source") or {}).get("topic") or {}).get("code", "unknown")
        CARDS.labels(rule, card.get("indicator", "unknown")).inc()


def _rules_loaded() -> None:
    if not current_app.extensions["cds"].rulebook.rules:
        raise RuntimeError("the rulebook has no rules")


def _engine_answers() -> None:
    """A fact no rule matches goes through the whole engine path: assert, match, retract, check."""
    current_app.extensions["cds"].engine.evaluate({"kind": "readiness-probe"}, [])


def _run(name: str, check: ReadinessCheck) -> str:
    try:
        check()
    except Exception as e:  # any failure means "not ready"; its kind is logged, never its text (may hold URLs)
        log.warning("readiness check failed", extra={"fields": {"check": name, "error": type(e).__name__}})
        return f"failed ({type(e).__name__})"
    return "ok"


def _route() -> str:
    return request.url_rule.rule if request.url_rule else "(unrouted)"


def _service_id() -> str:
    """The CDS service id when it names a real service: callers choose the path, labels must stay few."""
    service_id = (request.view_args or {}).get("service_id", "")
    return service_id if service_id in current_app.extensions["cds"].services else ""


def _registry() -> CollectorRegistry:
    if os.environ.get(MULTIPROCESS_DIR):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY
