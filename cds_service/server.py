"""Production WSGI serving with gunicorn: each worker builds its own app (and rules engine) after fork,
because the engine's C state must not be shared across processes."""
from __future__ import annotations

from gunicorn.app.base import BaseApplication


class _Gunicorn(BaseApplication):
    def __init__(self, options: dict) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from .app import create_app

        return create_app()


def run(host: str, port: int, workers: int, threads: int) -> None:
    _Gunicorn({
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "preload_app": False,
        "accesslog": None,
        "timeout": 30,
        "graceful_timeout": 10,
    }).run()
