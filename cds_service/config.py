"""Core settings, read from the environment once at start-up."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    dev: bool = False  # development mode (make run): relaxed defaults, said loudly at start-up
    max_body_bytes: int = 10 * 1024 * 1024
    max_json_depth: int = 64
    frozen_now: datetime | None = None  # a fixed clock for demos and tests, never for production
    auth: str = "required"  # "required" or "off": secure unless someone says otherwise
    trusted_issuers: Path | None = None  # JSON/YAML file of the EHRs whose JWTs are accepted
    trusted_fhir_servers: tuple[str, ...] = ()  # added to every trusted issuer's fhir_servers
    public_url: str | None = None  # base URL callers use; a token's aud must be this + the path called
    jwt_algorithms: tuple[str, ...] = ("ES384", "RS384")
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call; "*" only in development mode
    max_resources: int = 5000  # FHIR resources one call may read (draft orders + prefetch + fetched)
    max_draft_orders: int = 50  # draft orders one call may bring
    call_budget_seconds: float = 5.0  # a hook call still running after this stops and answers 503

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        now = env.get("CDS_NOW")
        dev = env.get("CDS_DEV", "") in ("1", "true", "yes")
        return cls(
            dev=dev,
            max_body_bytes=int(env.get("CDS_MAX_BODY_BYTES", cls.max_body_bytes)),
            max_json_depth=int(env.get("CDS_MAX_JSON_DEPTH", cls.max_json_depth)),
            frozen_now=datetime.fromisoformat(now.replace("Z", "+00:00")) if now else None,
            auth=env.get("CDS_AUTH", cls.auth).strip().lower(),
            trusted_issuers=Path(env["CDS_TRUSTED_ISSUERS"]) if env.get("CDS_TRUSTED_ISSUERS") else None,
            trusted_fhir_servers=_words(env.get("CDS_TRUSTED_FHIR_SERVERS")),
            public_url=env.get("CDS_PUBLIC_URL") or None,
            jwt_algorithms=_words(env.get("CDS_JWT_ALGORITHMS")) or cls.jwt_algorithms,
            cors_origins=_words(env.get("CDS_CORS_ORIGINS", "*" if dev else "")),
            max_resources=int(env.get("CDS_MAX_RESOURCES", cls.max_resources)),
            max_draft_orders=int(env.get("CDS_MAX_DRAFT_ORDERS", cls.max_draft_orders)),
            call_budget_seconds=_seconds(env, "CDS_CALL_BUDGET_SECONDS", cls.call_budget_seconds),
        )


def _words(text: str | None) -> tuple[str, ...]:
    """A list setting written with commas and/or spaces."""
    return tuple(w for w in (text or "").replace(",", " ").split() if w)


def _seconds(env: dict[str, str], name: str, default: float) -> float:
    """A positive, finite number of seconds; anything else stops start-up with the variable named."""
    text = env.get(name)
    try:
        value = float(text) if text is not None else default
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive number of seconds, not {text!r}")
    return value
