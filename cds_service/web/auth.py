"""Who may call: the EHR's signed JWT on every call (CDS Hooks 2.0 §trusting-cds-clients).

A caller is let in only when its token is signed (ES384 or RS384 by default, never `none` or HMAC) by
a key of a configured issuer, is meant for the exact URL called (`aud`, built from the configured
public base URL, never from the Host header, which the caller controls), is current, and has not
been used before, at any worker or instance sharing the feedback database. Key sets come from the issuer's configuration; a token's `jku` is followed only if
that URL is on the issuer's allow-list. Why a token failed goes to the log, never to the caller.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol
from urllib.parse import urlsplit

import jwt
import yaml

from ..config import Settings
from ..record import urls
from . import jwks

log = logging.getLogger(__name__)
ASYMMETRIC_ALGORITHMS = {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "jti"]
LEEWAY_SECONDS = 60
MAX_LIFETIME_SECONDS = 3600  # tokens valid longer are refused: clients mint one per call (the sandbox: 5 min),
# and a token id must be remembered until its token expires
MAX_TOKEN_CHARS = 16 * 1024
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


class AuthConfigError(ValueError):
    """The authentication settings are unusable: the service refuses to start."""


class Unauthorized(Exception):
    """The call is refused (401); the message is for the log and never holds the token."""


@dataclass(frozen=True)
class Issuer:
    iss: str
    jwks_files: tuple[Path, ...] = ()
    jwks_urls: tuple[str, ...] = ()
    jku_allowed: tuple[str, ...] = ()
    fhir_servers: tuple[str, ...] = ()

    def allows_fhir_server(self, url: str) -> bool:
        """Only the issuer's own FHIR servers may receive the access token its caller sent."""
        base = _base_url(url)
        return base is not None and base in {_base_url(s) for s in self.fhir_servers}


@dataclass(frozen=True)
class Caller:
    """A verified caller: the issuer that vouched for it."""

    issuer: Issuer
    tenant: str | None = None


class ReplayCache(Protocol):
    """Token ids seen and not yet expired; the service's is the feedback database's
    (feedback/token_replay.py), which every worker and instance shares."""

    def first_use(self, iss: str, jti: str, expires_at: float, now: float) -> bool:
        """Record the issuer's token id until expires_at, atomically; False if it was already recorded and
        has not expired. Raises ReplayCacheUnavailable (feedback/token_replay.py)
        when it cannot tell."""
        ...


class MemoryReplayCache:
    """One process's memory: for verifiers without a database (tests); several workers need a shared one."""

    def __init__(self, sweep_every: float = 60.0) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._sweep_every = sweep_every
        self._next_sweep = 0.0

    def first_use(self, iss: str, jti: str, expires_at: float, now: float) -> bool:
        key = (iss, jti)
        with self._lock:
            if now >= self._next_sweep:
                self._seen = {k: t for k, t in self._seen.items() if t > now}
                self._next_sweep = now + self._sweep_every
            if self._seen.get(key, 0.0) > now:
                return False
            self._seen[key] = expires_at
            return True


class Verifier:
    def __init__(self, issuers: dict[str, Issuer], public_url: str, keys: jwks.KeyStore,
                 algorithms: tuple[str, ...] = ("ES384", "RS384"), replay: ReplayCache | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.issuers = issuers
        self.public_url = public_url.rstrip("/")
        self.keys = keys
        self.algorithms = algorithms
        self.replay = replay or MemoryReplayCache()
        self.clock = clock

    def verify(self, authorization: str | None, path: str) -> Caller:
        """The caller behind an Authorization header for a call to `path`; raises Unauthorized."""
        token = _bearer_token(authorization)
        header = _unverified(jwt.get_unverified_header, token)
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.algorithms:
            raise Unauthorized(f"algorithm {str(alg)[:20]!r} is not accepted")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("the token names no key (kid)")
        issuer = self._issuer(token)
        key = self._key(issuer, kid, alg, header.get("jku"))
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self.public_url + path, issuer=issuer.iss,
                                options={"require": REQUIRED_CLAIMS, "verify_exp": False, "verify_iat": False,
                                         "verify_nbf": False})
        except jwt.PyJWTError as e:
            raise Unauthorized(f"token rejected ({type(e).__name__})") from None
        expires_at = self._check_times(claims)
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > 256 or not jti.isprintable():  # storable: no NUL
            raise Unauthorized("jti is not a usable token id")
        if not self.replay.first_use(issuer.iss, jti, expires_at, self.clock()):
            raise Unauthorized("token replayed (jti already used)")
        tenant = claims.get("tenant")
        return Caller(issuer, tenant if isinstance(tenant, str) else None)

    def _issuer(self, token: str) -> Issuer:
        claims = _unverified(lambda t: jwt.decode(t, options={"verify_signature": False}), token)
        issuer = self.issuers.get(claims.get("iss")) if isinstance(claims.get("iss"), str) else None
        if issuer is None:
            raise Unauthorized("iss is not a trusted issuer")
        return issuer

    def _key(self, issuer: Issuer, kid: str, alg: str, jku: Any) -> jwt.PyJWK:
        if jku is not None and jku not in issuer.jku_allowed:
            raise Unauthorized(f"jku is not on the allow-list of {issuer.iss}")
        urls = list(issuer.jwks_urls) + ([jku] if jku is not None else [])
        found = self.keys.find(kid, list(issuer.jwks_files), urls)
        if found is None:
            raise Unauthorized(f"no key {kid[:80]!r} among {issuer.iss}'s keys")
        if found.get("alg", alg) != alg:
            raise Unauthorized("the key is for another algorithm than the token's")
        try:
            return jwt.PyJWK(found, algorithm=alg)
        except jwt.PyJWTError:
            raise Unauthorized("the key does not fit the token's algorithm") from None

    def _check_times(self, claims: dict[str, Any]) -> float:
        exp, iat, now = claims["exp"], claims["iat"], self.clock()
        if not all(_is_time(v) for v in (exp, iat)):
            raise Unauthorized("exp and iat must be numbers")
        if "nbf" in claims and not _is_time(claims["nbf"]):
            raise Unauthorized("nbf must be a number")  # a time the token names but we cannot read: refused
        if now > exp + LEEWAY_SECONDS:
            raise Unauthorized("token expired")
        if iat > now + LEEWAY_SECONDS:
            raise Unauthorized("token issued in the future (iat)")
        if "nbf" in claims and claims["nbf"] > now + LEEWAY_SECONDS:
            raise Unauthorized("token not yet valid (nbf)")
        if exp - now > MAX_LIFETIME_SECONDS:
            raise Unauthorized(f"token valid for more than {MAX_LIFETIME_SECONDS} s from now")
        return exp + LEEWAY_SECONDS


def _is_time(value: Any) -> bool:
    """Seconds since the epoch; NaN would compare as never expired, and JSON parsers accept it."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _bearer_token(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("no bearer token")
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthorized("token too long")
    return token.strip()


def _unverified(read: Callable[[str], dict[str, Any]], token: str) -> dict[str, Any]:
    try:
        return read(token)
    except jwt.PyJWTError as e:
        raise Unauthorized(f"not a readable JWT ({type(e).__name__})") from None


def from_settings(settings: Settings, clock: Callable[[], float] = time.time,
                  replay: ReplayCache | None = None) -> Verifier | None:
    """The verifier the settings ask for, remembering token ids in `replay` (else in this process's
    memory); None when authentication is off; AuthConfigError if unusable."""
    if settings.auth == "off":
        return None
    if settings.auth != "required":
        raise AuthConfigError(f"CDS_AUTH must be 'required' or 'off', not {settings.auth!r}")
    if settings.trusted_issuers is None:
        raise AuthConfigError(
            "authentication is required (CDS_AUTH=required) but no trusted issuers are configured: set "
            "CDS_TRUSTED_ISSUERS to a JSON/YAML issuers file (config/issuers-sandbox.yaml for the CDS Hooks "
            "sandbox), or CDS_AUTH=off for local development only")
    if not settings.public_url or not _is_http_url(settings.public_url) or urlsplit(settings.public_url).query:
        raise AuthConfigError(
            "authentication is required but CDS_PUBLIC_URL is not set to the service's public base URL "
            "(e.g. https://cds.example.org): a token's aud must equal that URL + the path called")
    bad = [a for a in settings.jwt_algorithms if a not in ASYMMETRIC_ALGORITHMS]
    if bad or not settings.jwt_algorithms:
        raise AuthConfigError(f"CDS_JWT_ALGORITHMS may name only {sorted(ASYMMETRIC_ALGORITHMS)}, not {bad}")
    keys = jwks.KeyStore()
    issuers = load_issuers(settings.trusted_issuers, keys, settings.trusted_fhir_servers)
    return Verifier(issuers, settings.public_url, keys, settings.jwt_algorithms, replay=replay, clock=clock)


def load_issuers(path: Path, keys: jwks.KeyStore, fhir_servers: tuple[str, ...] = ()) -> dict[str, Issuer]:
    """Trusted issuers from a JSON/YAML file (`issuers: [...]`); JWK Set files are read now, relative
    to the file, so a missing or broken key file stops start-up instead of every call. `fhir_servers`
    (CDS_TRUSTED_FHIR_SERVERS) are added to every issuer's list, e.g. a local FHIR server for the sandbox."""
    unusable = [url for url in fhir_servers if _base_url(url) is None]
    if unusable:
        raise AuthConfigError(f"CDS_TRUSTED_FHIR_SERVERS: {unusable[0]!r} is not a FHIR base URL like "
                              "https://ehr.example.org/fhir (no query, fragment or user info)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise AuthConfigError(f"cannot read trusted issuers file {path}: {e}") from None
    entries = data.get("issuers") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise AuthConfigError(f"{path}: expected a non-empty list under 'issuers'")
    issuers: dict[str, Issuer] = {}
    for n, entry in enumerate(entries, 1):
        issuer = _issuer_entry(entry, path, f"{path}: issuer #{n}")
        issuer = replace(issuer, fhir_servers=issuer.fhir_servers + fhir_servers)
        for jwks_file in issuer.jwks_files:
            try:
                keys.add_file(jwks_file)
            except jwks.JwksError as e:
                raise AuthConfigError(f"{path}: issuer {issuer.iss}: {e}") from None
        issuers[issuer.iss] = issuer
    return issuers


def _issuer_entry(entry: Any, path: Path, where: str) -> Issuer:
    if not isinstance(entry, dict) or not isinstance(entry.get("iss"), str) or not entry["iss"]:
        raise AuthConfigError(f"{where}: needs 'iss' (a string)")
    lists = {}
    for name in ("jwks_url", "jwks_file", "jku_allowed", "fhir_servers"):
        value = entry.get(name) or []
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise AuthConfigError(f"{where}: '{name}' must be a string or a list of strings")
        lists[name] = tuple(value)
    for url in lists["jwks_url"] + lists["jku_allowed"]:
        if not _is_key_url(url):
            raise AuthConfigError(f"{where}: key set URL {url!r} must be https (http only on loopback)")
    if not (lists["jwks_url"] or lists["jwks_file"] or lists["jku_allowed"]):
        raise AuthConfigError(f"{where}: needs 'jwks_url', 'jwks_file' or 'jku_allowed' to find its keys")
    files = tuple(p if p.is_absolute() else path.parent / p for p in map(Path, lists["jwks_file"]))
    return Issuer(entry["iss"], files, lists["jwks_url"], lists["jku_allowed"], lists["fhir_servers"])


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _is_key_url(url: str) -> bool:
    return _is_http_url(url) and (urlsplit(url).scheme == "https" or urlsplit(url).hostname in LOOPBACK_HOSTS)


def _base_url(url: str) -> str | None:
    """A FHIR base URL in its one spelling (record/urls.py: case, escapes, dot segments and default ports
    normalised, no trailing slash); None for URLs no configured base URL should match (with user info,
    a query or a fragment, or read differently by different servers)."""
    parts = urls.normalise(url.strip())
    return parts.base if parts is not None and not parts.query else None
