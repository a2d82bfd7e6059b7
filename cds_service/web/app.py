"""The Flask app: routes and HTTP mapping only; the work is done by service.CdsService."""
from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import yaml
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from .. import logs
from ..config import Settings
from ..deadline import DeadlineExceeded
from ..engine import rulebook
from ..engine.durable_rules import EngineFailure
from ..feedback import analytics, body as feedback_body, page
from ..feedback.store import Store, StoreUnavailable, open_for_serving
from ..feedback.token_replay import DatabaseReplayCache, ReplayCacheUnavailable
from ..hooks import InvalidRequest
from ..record.fhir_client import FetchSettings, FhirFetcher
from ..service import CdsService, PreconditionFailed, UnknownService, utc_now
from . import admin, auth, jsonbody, observability
from .cors import Cors

log = logging.getLogger(__name__)
OPENAPI = Path(__file__).with_name("openapi.yaml")


def build_service(settings: Settings, now: datetime | None = None, book: rulebook.Rulebook | None = None) -> CdsService:
    """The service as configured: rules from rules/ (+ overrides) unless given, fetching from fhirServer."""
    fixed = now or settings.frozen_now
    return CdsService(book or rulebook.load(), fetcher=FhirFetcher(FetchSettings.from_env()),
                      clock=(lambda: fixed) if fixed else utc_now, max_resources=settings.max_resources,
                      max_draft_orders=settings.max_draft_orders, budget_seconds=settings.call_budget_seconds)


def create_app(service: CdsService | None = None, settings: Settings | None = None,
               verifier: auth.Verifier | None = None, store: Store | None = None,
               reload_others: Callable[[], None] = lambda: None) -> Flask:
    """The WSGI app; raises AuthConfigError, CorsConfigError or feedback ConfigError when settings are unusable.

    `reload_others` is called after POST /admin/reload has reloaded this process's rules: the server that
    runs several workers (server.py) passes what makes the others reload theirs."""
    settings = settings or Settings.from_env()
    store = store or open_for_serving(settings.dev)
    verifier = verifier or auth.from_settings(settings, replay=DatabaseReplayCache(store))  # shared by all workers
    cors = Cors(settings.cors_origins, settings.dev)
    description = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))
    service = service or build_service(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["cds"] = service
    observability.install(app, database=store.check)

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        rid = request.headers.get("X-Request-ID", "")
        logs.request_id.set(rid if 0 < len(rid) <= 64 and rid.isprintable() else uuid.uuid4().hex)

    @app.before_request
    def _gate() -> Response | None:
        """Preflights first (they carry no token), then every CDS Hooks path needs a valid JWT."""
        if cors.is_preflight(request):
            return cors.preflight(request)
        if verifier is None or not (request.path + "/").startswith("/cds-services/"):
            return None
        try:
            g.caller = verifier.verify(request.headers.get("Authorization"), request.path)
        except auth.Unauthorized as e:
            log.warning("authentication failed", extra={"fields": {"reason": str(e)}})
            response = _error(401, "authentication required")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        except ReplayCacheUnavailable as e:
            log.error("token not checked: the replay cache is unavailable", extra={"fields": {"error": str(e)}})
            return _unavailable("the token could not be checked just now; send the call again")
        return None

    @app.after_request
    def _cors(response: Response) -> Response:
        return cors.decorate(request, response)

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers["X-Request-ID"] = logs.request_id.get()
        fields = {"method": request.method, "path": request.url_rule.rule if request.url_rule else "(unrouted)",
                  "status": response.status_code,
                  "ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 1)}
        fields.update(g.get("log_fields", {}))
        log.info("request", extra={"fields": fields})
        return response

    @app.get("/cds-services")
    def discovery() -> Response:
        return jsonify(service.discovery())

    @app.post("/cds-services/<service_id>")
    def hook(service_id: str) -> Response:
        if service_id not in service.services:
            return _error(404, f"no CDS service with id {service_id!r}")
        try:
            body = jsonbody.loads(_body(settings.max_body_bytes), settings.max_json_depth)
            caller = g.get("caller")
            silent: list[dict[str, Any]] = []  # cards of rules in shadow mode: recorded, never sent
            result = service.call(service_id, body, caller.issuer.allows_fhir_server if caller else None, silent)
        except (jsonbody.BadJson, InvalidRequest) as e:
            return _error(400, str(e))
        except UnknownService:
            return _error(404, f"no CDS service with id {service_id!r}")
        except PreconditionFailed as e:
            return _operation_outcome(412, str(e))
        except DeadlineExceeded:
            log.warning("hook call stopped at its deadline", extra={"fields": {"service": service_id}})
            return _unavailable(f"the checks did not finish within {settings.call_budget_seconds:g} s, so no "
                                "cards are given (a partial set could hide a warning); send the call again")
        except EngineFailure as e:
            log.error("hook call stopped: the rules engine failed", extra={"fields": {"service": service_id}})
            return _unavailable(f"{e}, so no cards are given (a partial set could hide a warning)")
        g.log_fields = {"service": service_id, "cards": [c["source"]["topic"]["code"] for c in result["cards"]],
                        "silent": [c["source"]["topic"]["code"] for c in silent]}
        observability.count_cards(result["cards"])
        store.record_cards(service_id, service.services[service_id].hook, body["context"]["patientId"], result["cards"],
                           silent=silent, hook_instance=body["hookInstance"])
        return jsonify(result)

    @app.post("/cds-services/<service_id>/feedback")
    def feedback(service_id: str) -> Response:
        if service_id not in service.services:
            return _error(404, f"no CDS service with id {service_id!r}")
        limit = min(settings.max_body_bytes, feedback_body.MAX_BYTES)
        request.max_content_length = limit  # 413 beyond it, as for hook calls
        try:
            items = feedback_body.parse(jsonbody.loads(_body(limit), settings.max_json_depth))
            stored = store.save_feedback(service_id, items)
        except (jsonbody.BadJson, feedback_body.InvalidFeedback) as e:
            return _error(400, str(e))
        except StoreUnavailable:
            return _unavailable("the feedback could not be stored; send it again")
        g.log_fields = {"service": service_id, "feedback": len(items), "ignored": len(items) - stored}
        return jsonify({})

    def admin_refusal() -> Response | None:
        status = admin.refusal(request.headers.get("Authorization", ""), store.settings.admin_token, settings.dev)
        if status == 404:
            return _error(404, "the admin endpoints are off: set CDS_ADMIN_TOKEN to turn them on")
        if status == 401:
            response = _error(401, "the admin token is required")
            for challenge in admin.CHALLENGES:
                response.headers.add("WWW-Authenticate", challenge)
            return response
        return None

    @app.post("/admin/reload")
    def admin_reload() -> Response:
        """Load rules/ and the overrides again; a bad set is refused (422) and the running one stays."""
        refused = admin_refusal()
        if refused:
            return refused
        try:
            book = service.reload()
        except rulebook.RulebookError as e:
            return _error(422, f"rules not reloaded, the running set stays: {e}")
        reload_others()
        return jsonify({"reloaded": True, "rules": len(book.rules)})

    @app.get("/admin/report")
    def admin_report() -> Response:
        refused = admin_refusal()
        if refused:
            return refused
        try:
            period = analytics.Period.parse(request.args.get("since"), request.args.get("until"), utc_now())
            html = page.render(analytics.build(store, period))
        except analytics.BadPeriod as e:
            return _error(400, str(e))
        except StoreUnavailable:
            return _unavailable("the feedback database is unavailable; try again later")
        return Response(html, mimetype="text/html", headers=page.HEADERS)

    @app.get("/openapi.json")
    def openapi_description() -> Response:
        return jsonify(description)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        response = _error(e.code or 500, e.description or e.name)
        response.headers.extend((k, v) for k, v in e.get_headers() if k.lower() != "content-type")  # e.g. 405's Allow
        return response

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> Response:
        log.error("unhandled error", extra={"fields": {"error": type(e).__name__}})
        return _error(500, "internal error; the request id identifies it in the service's log")

    return app


def _body(limit: int) -> bytes:
    """The request body, 413 if over the limit. A body sent without Content-Length (chunked) is cut at
    the limit rather than refused, so look one byte past it: werkzeug raises 413 if there is more."""
    data = request.get_data(cache=False)
    if len(data) >= limit:
        request.stream.read(1)
    return data


def _error(status: int, message: str) -> Response:
    response = jsonify({"error": message, "status": status, "requestId": logs.request_id.get()})
    response.status_code = status
    return response


def _unavailable(message: str) -> Response:
    response = _error(503, message)
    response.headers["Retry-After"] = "5"
    return response


def _operation_outcome(status: int, message: str) -> Response:
    response = jsonify({"resourceType": "OperationOutcome",
                        "issue": [{"severity": "error", "code": "not-found", "diagnostics": message}]})
    response.status_code = status
    return response
