"""Public keys of trusted EHRs (JWK Sets), from files or URLs, cached.

A key set fetched from a URL is kept for a TTL. A token naming a key id we do not hold may mean the
EHR rotated its keys, so the set is fetched again, but at most once per refresh interval per URL:
otherwise anyone could make the service hammer an EHR's key server by sending made-up key ids.
The URLs come only from configuration (an issuer's `jwks_url`, or a `jku` on its allow-list).

A key host that is slow must not hold the service: each URL has at most one fetch under way, in a
thread of its own, with an overall deadline (each read is bounded too); callers that need it wait for
that one fetch, at most the deadline, and then go on with the keys held (a token whose key is not held
is refused, 401). So a slow key host costs a caller at most the deadline, and only while a fetch is due.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests
from jwt import PyJWK, PyJWTError
from urllib3.exceptions import HTTPError

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


def fetch(url: str, timeout: float, deadline: float) -> dict[str, Jwk]:
    """GET a JWK Set: no redirects (the URL was vetted, where it redirects to was not), bounded size, and
    bounded time: the body is read only until `deadline` seconds have passed, each read waits at most
    `timeout` (so the whole fetch ends within the deadline plus one read)."""
    ends = time.monotonic() + deadline
    read = min(timeout, deadline)
    try:
        with requests.get(url, timeout=(read, read), allow_redirects=False, stream=True,
                          headers={"Accept": "application/json"}) as response:
            if response.status_code != 200:
                raise JwksError(f"HTTP {response.status_code}")
            body = _body(response.raw, ends)
    except (requests.RequestException, HTTPError, OSError) as e:  # urllib3 raises its own while reading
        raise JwksError(type(e).__name__) from None
    try:
        return parse(json.loads(body))
    except ValueError as e:
        raise JwksError(str(e)) from None


def _body(raw: Any, ends: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := raw.read1(64 * 1024, decode_content=True):
        size += len(chunk)
        if size > MAX_JWKS_BYTES:
            raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes")
        if time.monotonic() > ends:
            raise JwksError("not received within the deadline")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class _Remote:
    keys: dict[str, Jwk] = field(default_factory=dict)
    fetched_at: float | None = None  # when the keys were last fetched successfully
    tried_at: float | None = None  # when a fetch was last started
    fetching: threading.Event | None = None  # the fetch under way, set when it ends
    waited_until: float = 0.0  # callers wait for the fetch under way until then (its deadline), no longer


class KeyStore:
    """Keys by (source, kid); a source is a file read at start-up or a URL fetched when needed."""

    def __init__(self, ttl: float = 3600.0, refresh_interval: float = 60.0, timeout: float = 2.0,
                 deadline: float = 3.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.refresh_interval, self.clock = ttl, refresh_interval, clock
        self.timeout, self.deadline = timeout, deadline
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
        """The URL's keys, after the fetch they are due for (stale, or a kid they lack) if one may run:
        waited for until that fetch's deadline, never longer, however many callers wait and whenever
        they came."""
        with self._lock:
            remote = self._remotes.setdefault(url, _Remote())
            now = self.clock()
            stale = remote.fetched_at is None or now - remote.fetched_at >= self.ttl
            wanted = stale or (unknown_kid is not None and unknown_kid not in remote.keys)
            may_try = remote.tried_at is None or now - remote.tried_at >= self.refresh_interval
            if wanted and may_try and remote.fetching is None:
                remote.tried_at, remote.fetching = now, threading.Event()
                remote.waited_until = time.monotonic() + self.deadline
                threading.Thread(target=self._fetch, args=(url, remote, remote.fetching), daemon=True,
                                 name="jwks-fetch").start()
            under_way = remote.fetching if wanted else None
        if under_way is not None and not under_way.wait(max(0.0, remote.waited_until - time.monotonic())):
            log.warning("JWK Set fetch not done within the deadline; going on with the keys held",
                        extra={"fields": {"jwks_url": url, "deadline_s": self.deadline}})
        return remote.keys

    def _fetch(self, url: str, remote: _Remote, done: threading.Event) -> None:
        try:
            keys = fetch(url, self.timeout, self.deadline)
            with self._lock:
                remote.keys, remote.fetched_at = keys, self.clock()
        except JwksError as e:
            log.warning("JWK Set fetch failed; keeping the keys held before",
                        extra={"fields": {"jwks_url": url, "reason": str(e)}})
        finally:
            with self._lock:
                remote.fetching = None
            done.set()
