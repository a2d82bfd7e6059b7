"""The Flask app: routes and HTTP mapping only; the work is done by service.CdsService."""
from __future__ import annotations

import logging
import time
import uuid
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from . import jsonbody, logs, rulebook
from .config import Settings
from .hooks import InvalidRequest
from .service import CdsService, PreconditionFailed, UnknownService, utc_now

log = logging.getLogger(__name__)


def create_app(service: CdsService | None = None, settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    if service is None:
        clock = (lambda: settings.frozen_now) if settings.frozen_now else utc_now
        service = CdsService(rulebook.load(), clock=clock)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["cds"] = service

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        rid = request.headers.get("X-Request-ID", "")
        logs.request_id.set(rid if 0 < len(rid) <= 64 and rid.isprintable() else uuid.uuid4().hex)

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
            body = jsonbody.loads(request.get_data(cache=False), settings.max_json_depth)
            result = service.call(service_id, body)
        except (jsonbody.BadJson, InvalidRequest) as e:
            return _error(400, str(e))
        except UnknownService:
            return _error(404, f"no CDS service with id {service_id!r}")
        except PreconditionFailed as e:
            return _operation_outcome(412, str(e))
        g.log_fields = {"service": service_id, "cards": [c["source"]["topic"]["code"] for c in result["cards"]]}
        return jsonify(result)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        return _error(e.code or 500, e.description or e.name)

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> Response:
        log.error("unhandled error", extra={"fields": {"error": type(e).__name__}})
        return _error(500, "internal error; the request id identifies it in the service's log")

    return app


def _error(status: int, message: str) -> Response:
    response = jsonify({"error": message, "status": status, "requestId": logs.request_id.get()})
    response.status_code = status
    return response


def _operation_outcome(status: int, message: str) -> Response:
    response = jsonify({"resourceType": "OperationOutcome",
                        "issue": [{"severity": "error", "code": "not-found", "diagnostics": message}]})
    response.status_code = status
    return response
