"""Feedback store settings, read from the environment once at start-up."""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite:///var/cds.db"
DEFAULT_RETENTION_DAYS = 365
MIN_KEY_LENGTH = 32
# Only ever used in development mode, where no real patient data may be sent: a fixed key keeps
# `make run` free of set-up, and hashes made with it are worthless as protection.
DEV_PATIENT_HASH_KEY = b"cd20-cds development key: not for patient data"


class ConfigError(ValueError):
    """The configuration cannot be served safely; the message says what to set."""


@dataclass(frozen=True)
class StoreSettings:
    database_url: str = DEFAULT_DATABASE_URL
    patient_hash_key: bytes | None = None
    retention_days: int = DEFAULT_RETENTION_DAYS
    admin_token: str | None = None
    dev: bool = False

    @classmethod
    def from_env(cls, dev: bool, env: dict[str, str] | None = None, serving: bool = True) -> "StoreSettings":
        """Settings for serving, or for maintenance commands (db, report), which never hash a patient id."""
        env = dict(os.environ if env is None else env)
        admin_token = env.get("CDS_ADMIN_TOKEN") or None
        if serving and dev and admin_token is None:
            log.warning("DEVELOPMENT MODE: CDS_ADMIN_TOKEN is not set; the admin endpoints (/admin/report, /admin/reload) are open to anyone")
        return cls(
            database_url=env.get("CDS_DATABASE_URL") or DEFAULT_DATABASE_URL,
            patient_hash_key=_patient_hash_key(env.get("CDS_PATIENT_HASH_KEY", ""), dev, serving),
            retention_days=_retention_days(env.get("CDS_RETENTION_DAYS", "")),
            admin_token=admin_token,
            dev=dev,
        )


def patient_hash(key: bytes, patient_id: str) -> str:
    """HMAC-SHA256 of the patient id, hex: what is stored (or written by a replay) instead of the id."""
    return hmac.new(key, patient_id.encode(), hashlib.sha256).hexdigest()


def _patient_hash_key(value: str, dev: bool, serving: bool) -> bytes | None:
    if value:
        if len(value) < MIN_KEY_LENGTH:
            raise ConfigError(f"CDS_PATIENT_HASH_KEY must be at least {MIN_KEY_LENGTH} characters "
                              "(e.g. the output of: python3 -c 'import secrets; print(secrets.token_hex(32))')")
        return value.encode()
    if not serving:
        return None
    if dev:
        log.warning("DEVELOPMENT MODE: CDS_PATIENT_HASH_KEY is not set; patient ids of issued cards are hashed "
                    "with a fixed, public development key")
        return DEV_PATIENT_HASH_KEY
    raise ConfigError("CDS_PATIENT_HASH_KEY is not set: issued cards are stored with a keyed hash of the patient "
                      "id, and the key must be the site's secret (python3 -c 'import secrets; "
                      "print(secrets.token_hex(32))')")


def _retention_days(value: str) -> int:
    if not value:
        return DEFAULT_RETENTION_DAYS
    try:
        days = int(value)
    except ValueError:
        days = 0
    if days < 1:
        raise ConfigError(f"CDS_RETENTION_DAYS must be a whole number of days, at least 1 (got {value!r})")
    return days
