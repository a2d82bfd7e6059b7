"""Production WSGI serving with gunicorn.

The master loads and validates the rules (plain data) once, and again on SIGHUP; each worker builds its own
app and rules engine from the master's copy after fork, because the engine's C state must not be shared
across processes. So a worker that (re)starts never reads rules/ from disk: a bad file there can neither
stop it booting (which would halt the whole server) nor slip past validation."""
from __future__ import annotations

import atexit
import gc
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from ..config import Settings
from ..engine import rulebook
from ..metrics import MULTIPROCESS_DIR
from .app import build_service, create_app

REQUESTS_PER_CONNECTION = 25  # like nginx's keepalive_requests; see _spread_connections
_TEMPORARY_METRICS_DIR = "CDS_METRICS_DIR_IS_TEMPORARY"
_MASTER_PID = "CDS_GUNICORN_MASTER_PID"


class _Gunicorn(BaseApplication):
    def __init__(self, options: dict, book: rulebook.Rulebook) -> None:
        self.options = options
        self.book = book  # the validated rules every new worker starts from
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        app = create_app(build_service(Settings.from_env(), book=self.book), reload_others=reload_other_workers)
        gc.freeze()  # what start-up built lives as long as the worker: keep the collector from rescanning it
        return app

    def run(self) -> None:
        _CheckedReload(self).run()


class _CheckedReload(Arbiter):
    """SIGHUP reloads the rules by restarting the workers gracefully, but only after the new rules and
    overrides have loaded cleanly here: a bad set is logged and the running workers keep serving."""

    def handle_hup(self) -> None:
        try:
            book = rulebook.load()
        except rulebook.RulebookError as e:
            self.log.error("rules not reloaded, the running set stays: %s", e)
            return
        self.log.info("rules valid (%d rules); restarting workers to load them", len(book.rules))
        self.app.book = book
        super().handle_hup()


def share_metrics_between_workers() -> None:
    """Give the workers one directory for their metrics, emptied of any earlier run's samples.

    Each gunicorn worker is its own process; prometheus_client's multiprocess mode has every worker
    write its samples there and /metrics add them up. That mode is chosen when prometheus_client is
    first imported, which the command-line module's own imports have already done: so when no
    directory is configured, one is made and the command starts afresh (same process id) with it set.
    """
    configured = os.environ.get(MULTIPROCESS_DIR)
    if not configured:
        os.environ[MULTIPROCESS_DIR] = tempfile.mkdtemp(prefix="cds-service-metrics-")
        os.environ[_TEMPORARY_METRICS_DIR] = "1"
        os.execv(sys.executable, sys.orig_argv)
    path = Path(configured)
    if os.environ.pop(_TEMPORARY_METRICS_DIR, None):
        atexit.register(_remove_made_dir, path, os.getpid())
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


def _remove_made_dir(path: Path, maker: int) -> None:
    """Only the process that made the directory removes it; forked workers leave it alone."""
    if os.getpid() == maker:
        shutil.rmtree(path, ignore_errors=True)


def _worker_exited(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _spread_connections(worker, req) -> None:
    """Close each kept-alive connection after REQUESTS_PER_CONNECTION requests ("Connection: close").

    A connection's requests all go to the worker that accepted it, and a gthread worker accepts whatever
    is pending when it wakes (gunicorn issue #3433): a client's connections often all land on one worker,
    one core, while the other idles, and stay there. Reconnecting now and then lets them spread out: the
    worker with time to spare is the one that wins the race to accept."""
    if req.req_number % REQUESTS_PER_CONNECTION == 0:
        req.force_close()


def reload_other_workers() -> None:
    """After one worker reloaded its rules (POST /admin/reload), have gunicorn's master reload them all:
    SIGHUP, which it answers by checking the rules itself and restarting the workers gracefully."""
    master = os.environ.get(_MASTER_PID)
    if master and int(master) == os.getppid():
        os.kill(int(master), signal.SIGHUP)


def run(host: str, port: int, workers: int, threads: int, book: rulebook.Rulebook) -> None:
    os.environ[_MASTER_PID] = str(os.getpid())
    _Gunicorn({
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "preload_app": False,
        "accesslog": None,
        "timeout": 30,
        "graceful_timeout": 10,
        "control_socket_disable": True,  # gunicorn >= 25.1 would open a management socket in $HOME
        "child_exit": _worker_exited,
        "pre_request": _spread_connections,
    }, book).run()
