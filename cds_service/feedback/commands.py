"""`cds-service db upgrade | db prune` and `cds-service report`: the store's maintenance and its figures."""
from __future__ import annotations

import argparse
import sys

from ..config import Settings
from . import analytics, token_replay
from .settings import DEFAULT_RETENTION_DAYS, ConfigError, StoreSettings
from .store import Store, StoreUnavailable, utc_now

COMMANDS = ("db", "report")


def add_commands(commands: argparse._SubParsersAction) -> None:
    db = commands.add_parser("db", help="the feedback database (CDS_DATABASE_URL; default sqlite:///var/cds.db)")
    actions = db.add_subparsers(dest="db_command", required=True)
    actions.add_parser("upgrade", help="apply the schema migrations (serve also does this at start-up)")
    actions.add_parser("prune", help="delete issued cards, feedback and hook calls older than CDS_RETENTION_DAYS "
                                     f"(default {DEFAULT_RETENTION_DAYS}), and expired token ids")
    report = commands.add_parser("report", help="cards issued, accepted and overridden, and live and silent cards "
                                                "per 1,000 calls, per rule and indicator")
    report.add_argument("--since", help="first day (2026-01-01) or ISO 8601 time; default: 90 days before --until")
    report.add_argument("--until", help="last day, included, or ISO 8601 time (excluded); default: now")


def run(args: argparse.Namespace) -> int:
    try:
        store = Store(StoreSettings.from_env(Settings.from_env().dev, serving=False))
    except ConfigError as e:
        print(f"cds-service: {e}", file=sys.stderr)
        return 2
    try:
        if args.command == "report":
            return _report(store, args)
        if args.db_command == "upgrade":
            print(f"feedback database at schema revision {store.upgrade()}")
            return 0
        cutoff, cards, feedback, calls = store.prune()
        print(f"pruned {cards} issued card(s) and {feedback} feedback record(s) "
              f"from before {cutoff:%Y-%m-%d %H:%M} UTC")
        print(f"pruned {calls} hook call record(s) from before {cutoff:%Y-%m-%d %H:%M} UTC")
        print(f"pruned {token_replay.prune(store)} expired token id(s) from the JWT replay cache")
        return 0
    except StoreUnavailable as e:
        print(f"cds-service: the feedback database is unavailable ({e})", file=sys.stderr)
        return 1
    finally:
        store.close()


def _report(store: Store, args: argparse.Namespace) -> int:
    try:
        period = analytics.Period.parse(args.since, args.until, utc_now())
    except analytics.BadPeriod as e:
        print(f"cds-service report: {e}", file=sys.stderr)
        return 2
    print(analytics.as_text(analytics.build(store, period)))
    return 0
