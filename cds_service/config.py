"""Core settings, read from the environment once at start-up."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Settings:
    dev: bool = False  # development mode (make run): relaxed defaults, said loudly at start-up
    max_body_bytes: int = 10 * 1024 * 1024
    max_json_depth: int = 64
    frozen_now: datetime | None = None  # a fixed clock for demos and tests, never for production

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        now = env.get("CDS_NOW")
        return cls(
            dev=env.get("CDS_DEV", "") in ("1", "true", "yes"),
            max_body_bytes=int(env.get("CDS_MAX_BODY_BYTES", cls.max_body_bytes)),
            max_json_depth=int(env.get("CDS_MAX_JSON_DEPTH", cls.max_json_depth)),
            frozen_now=datetime.fromisoformat(now.replace("Z", "+00:00")) if now else None,
        )
