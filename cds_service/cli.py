"""`cds-service serve | evaluate | rules | db | report | replay`: the production server, one request
through the same code path, the rule catalogue, the feedback database with its report, and the replay
of a whole population's export."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path

from . import logs
from .config import Settings
from .deadline import DeadlineExceeded
from .engine import catalogue, rulebook
from .engine.durable_rules import EngineFailure
from .feedback import commands as feedback_commands
from .feedback.settings import ConfigError
from .feedback.store import open_for_serving
from .hooks import InvalidRequest
from .population import command as replay_command
from .service import CdsService, PreconditionFailed, UnknownService
from .web import auth, jsonbody
from .web.app import build_service
from .web.cors import Cors, CorsConfigError

log = logging.getLogger("cds_service")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cds-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve CDS Hooks over HTTP (gunicorn)")
    serve.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    serve.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
    serve.add_argument("--threads", type=int, default=int(os.environ.get("CDS_THREADS", "4")))
    evaluate = commands.add_parser("evaluate", help="print the response the HTTP service would give")
    evaluate.add_argument("request", type=Path, help="a CDS Hooks request body (JSON file)")
    evaluate.add_argument("--service", help="service id (default: the one for the request's hook)")
    evaluate.add_argument("--now", help="evaluate as of this time (ISO 8601), e.g. 2026-11-21T12:00:00Z")
    rules = commands.add_parser("rules", help="print the rule catalogue (with site overrides applied)")
    rules.add_argument("--markdown", action="store_true", help="as Markdown, for a P&T committee")
    feedback_commands.add_commands(commands)
    replay_command.add_command(commands)
    args = parser.parse_args(argv)
    logs.setup(os.environ.get("CDS_LOG_LEVEL", "WARNING" if args.command in ("evaluate", "replay") else "INFO"))
    if args.command == "serve":
        return _serve(args)
    if args.command == "rules":
        return _rules(args)
    if args.command in feedback_commands.COMMANDS:
        return feedback_commands.run(args)
    if args.command == "replay":
        return replay_command.run(args)
    return _evaluate(args)


def _serve(args: argparse.Namespace) -> int:
    from .web.server import run, share_metrics_between_workers

    share_metrics_between_workers()
    settings = Settings.from_env()
    try:  # checked here once, so a bad setting stops start-up instead of every worker
        auth.from_settings(settings)
        Cors(settings.cors_origins, settings.dev)
        open_for_serving(settings.dev).close()  # also migrates the feedback schema once, before any worker
        book = rulebook.load()
    except (auth.AuthConfigError, CorsConfigError, ConfigError, rulebook.RulebookError) as e:
        log.error("cannot start: %s", e)
        return 2
    if settings.dev:
        log.warning("DEVELOPMENT MODE (CDS_DEV=1): not for patient data; relaxed defaults in force")
    if settings.auth == "off":
        log.warning("AUTHENTICATION OFF (CDS_AUTH=off): ANY CALLER CAN QUERY THIS SERVICE; never use it with "
                    "patient data or on a network others can reach")
    if "*" in settings.cors_origins:
        log.warning("CORS: any web page may call this service (CDS_CORS_ORIGINS=*, development mode only)")
    if settings.frozen_now:
        log.warning("CLOCK FROZEN by CDS_NOW: every 'recent' check uses a fixed time")
    shadow = [*sorted(book.shadow_services), *(r.id for r in book.rules.values() if r.shadow)]
    if shadow:
        log.warning("SHADOW MODE: cards of %s are recorded as silent and never shown", ", ".join(shadow))
    run(args.host, args.port, args.workers, args.threads, book)
    return 0


def _rules(args: argparse.Namespace) -> int:
    try:
        book = rulebook.load()
    except rulebook.RulebookError as e:
        return _fail(400, str(e))
    sys.stdout.write(catalogue.markdown(book) if args.markdown else catalogue.text(book))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    now = _parse_time(args.now) if args.now else settings.frozen_now
    service = build_service(settings, now)  # the same service the HTTP app serves, fetcher included
    try:
        body = jsonbody.loads(args.request.read_bytes(), settings.max_json_depth)
        service_id = args.service or _service_for(service, body)
        result = service.call(service_id, body)
    except OSError as e:
        return _fail(2, f"cannot read {args.request}: {e.strerror}")
    except (jsonbody.BadJson, InvalidRequest) as e:
        return _fail(400, str(e))
    except UnknownService as e:
        return _fail(404, f"no CDS service for {e}")
    except PreconditionFailed as e:
        return _fail(412, str(e))
    except DeadlineExceeded as e:
        return _fail(503, f"{e} ({settings.call_budget_seconds:g} s, CDS_CALL_BUDGET_SECONDS)")
    except EngineFailure as e:
        return _fail(503, f"{e}, so no cards are given")
    json.dump(result, sys.stdout, indent=2, ensure_ascii=False)
    print()
    return 0


def _service_for(service: CdsService, body: object) -> str:
    hook = body.get("hook") if isinstance(body, dict) else None
    if not isinstance(hook, str):
        raise InvalidRequest("the request has no 'hook'")
    for definition in service.services.values():
        if definition.hook == hook:
            return definition.id
    raise UnknownService(f"hook {hook!r}")


def _fail(status: int, message: str) -> int:
    """Print the error body the HTTP service would send; the exit code says which kind it was."""
    json.dump({"error": message, "status": status}, sys.stdout, indent=2)
    print()
    return {400: 2, 404: 3, 412: 4, 503: 5}.get(status, 1)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


if __name__ == "__main__":
    sys.exit(main())
