"""Public keys of trusted EHRs (JWK Sets), from files or URLs, cached.

A key set fetched from a URL is kept for a TTL. A token naming a key id we do not hold may mean the
EHR rotated its keys, so the set is fetched again, but at most once per refresh interval per URL:
otherwise anyone could make the service hammer an EHR's key server by sending made-up key ids.
The URLs come only from configuration (an issuer's `jwks_url`, or a `jku` on its allow-list).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import requests
from jwt import PyJWK, PyJWTError

log = logging.getLogger(__name__)
MAX_JWKS_BYTES = 256 * 1024
Jwk = dict[str, Any]


class JwksError(ValueError):
    """A key set could not be read or holds no usable signing key."""


def parse(data: Any) -> dict[str, Jwk]:
    """The signing keys of a JWK Set by kid; keys without kid, for encryption, or unreadable are left out."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise JwksError("not a JWK Set (an object with a 'keys' list)")
    keys: dict[str, Jwk] = {}
    for jwk in data["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or jwk.get("use", "sig") != "sig":
            continue
        if "d" in jwk or jwk.get("kty") == "oct":
            continue  # a private or symmetric key has no place in a public key set
        try:
            PyJWK(jwk)
        except (PyJWTError, KeyError, TypeError, ValueError):
            continue
        keys[jwk["kid"]] = jwk
    if not keys:
        raise JwksError("no usable public signing key (each needs a kid)")
    return keys


def read_file(path: Path) -> dict[str, Jwk]:
    try:
        return parse(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as e:
        raise JwksError(f"cannot use JWK Set file {path}: {e}") from None


def fetch(url: str, timeout: float) -> dict[str, Jwk]:
    """GET a JWK Set: no redirects (the URL was vetted, where it redirects to was not), bounded size."""
    try:
        with requests.get(url, timeout=timeout, allow_redirects=False, stream=True,
                          headers={"Accept": "application/json"}) as response:
            if response.status_code != 200:
                raise JwksError(f"HTTP {response.status_code}")
            body = response.raw.read(MAX_JWKS_BYTES + 1, decode_content=True)
    except requests.RequestException as e:
        raise JwksError(type(e).__name__) from None
    if len(body) > MAX_JWKS_BYTES:
        raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes")
    try:
        return parse(json.loads(body))
    except ValueError as e:
        raise JwksError(str(e)) from None


@dataclass
class _Remote:
    keys: dict[str, Jwk]
    fetched_at: float | None  # when the keys were last fetched successfully
    tried_at: float | None  # when a fetch was last attempted
    lock: threading.Lock


class KeyStore:
    """Keys by (source, kid); a source is a file read at start-up or a URL fetched when needed."""

    def __init__(self, ttl: float = 3600.0, refresh_interval: float = 60.0, timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.refresh_interval, self.timeout, self.clock = ttl, refresh_interval, timeout, clock
        self._files: dict[Path, dict[str, Jwk]] = {}
        self._remotes: dict[str, _Remote] = {}
        self._lock = threading.Lock()

    def add_file(self, path: Path) -> None:
        self._files[path] = read_file(path)

    def find(self, kid: str, files: list[Path], urls: list[str]) -> Jwk | None:
        """The key with this kid: from the files, else the URLs' cached sets, else a (rate-limited) refetch."""
        for path in files:
            if kid in self._files.get(path, {}):
                return self._files[path][kid]
        for url in urls:
            keys = self._remote_keys(url, unknown_kid=None)
            if kid in keys:
                return keys[kid]
        for url in urls:
            keys = self._remote_keys(url, unknown_kid=kid)
            if kid in keys:
                return keys[kid]
        return None

    def _remote_keys(self, url: str, unknown_kid: str | None) -> dict[str, Jwk]:
        remote = self._remote(url)
        with remote.lock:
            now = self.clock()
            stale = remote.fetched_at is None or now - remote.fetched_at >= self.ttl
            wanted = stale or (unknown_kid is not None and unknown_kid not in remote.keys)
            may_try = remote.tried_at is None or now - remote.tried_at >= self.refresh_interval
            if wanted and may_try:
                remote.tried_at = now
                try:
                    remote.keys, remote.fetched_at = fetch(url, self.timeout), now
                except JwksError as e:
                    log.warning("JWK Set fetch failed; keeping the keys held before",
                                extra={"fields": {"jwks_url": url, "reason": str(e)}})
            return remote.keys

    def _remote(self, url: str) -> _Remote:
        with self._lock:
            return self._remotes.setdefault(url, _Remote({}, None, None, threading.Lock()))
