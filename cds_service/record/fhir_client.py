"""Fetching what the EHR did not prefetch from its FHIR server (CDS Hooks 2.0 §FHIR resource access).

The clinician is waiting for the cards (the spec asks for answers "on the order of 500 ms"), so the
queries run in parallel under one deadline for the whole fetch phase, and a query that cannot be answered
in time becomes a named gap (a data-unavailable card) rather than a slow or failed response.

The access token is the EHR's, lent for this one call: it is sent only to `fhirServer` (never to a host a
`next` link names, never through a redirect, never replaced by ~/.netrc credentials), never logged and
never kept. Cookies are refused, so nothing one user's token obtained is replayed for another user.
"""
from __future__ import annotations

import http.client
import json
import logging
import math
import os
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import Any, Mapping
from urllib.parse import urljoin

import requests
from prometheus_client import Counter
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from .. import deadline
from ..hooks import HookRequest
from . import urls
from .prefetch import AccessRefused, FetchFailed, NoFhirAccess

log = logging.getLogger(__name__)

FETCHED = Counter("cds_prefetch_fetched_total",
                  "Prefetch keys that arrived missing (or as an error) and had to be fetched from fhirServer", ["key"])
ERRORS = Counter("cds_fhir_fetch_errors_total", "fhirServer queries that gave no usable answer, by kind", ["kind"])
RETRYABLE_STATUS = {502, 503, 504}
ON = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class FetchSettings:
    """How patient the fetch phase is, and what it may do; read from the environment at start-up."""

    deadline_seconds: float = 2.0  # the whole fetch phase, every query and page included
    connect_timeout_seconds: float = 1.0  # per call, and never beyond the deadline
    read_timeout_seconds: float = 2.0  # per call (between bytes), and never beyond the deadline
    max_pages: int = 5  # pages of one search (Bundle.link next) before it counts as incomplete
    max_page_bytes: int = 16 * 1024 * 1024
    parallel: int = 8  # queries in flight at once for one hook call (the service declares 7 keys)
    allow_unauthenticated: bool = False  # fetch when the EHR sends fhirServer but no fhirAuthorization

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "FetchSettings":
        env = os.environ if env is None else env
        dev = env.get("CDS_DEV", "").lower() in ON
        return cls(
            deadline_seconds=_positive(env, "CDS_FETCH_DEADLINE_SECONDS", cls.deadline_seconds, float),
            connect_timeout_seconds=_positive(env, "CDS_FETCH_CONNECT_TIMEOUT_SECONDS",
                                              cls.connect_timeout_seconds, float),
            read_timeout_seconds=_positive(env, "CDS_FETCH_READ_TIMEOUT_SECONDS", cls.read_timeout_seconds, float),
            max_pages=_positive(env, "CDS_FETCH_MAX_PAGES", cls.max_pages, int),
            max_page_bytes=_positive(env, "CDS_FETCH_MAX_PAGE_BYTES", cls.max_page_bytes, int),
            parallel=_positive(env, "CDS_FETCH_PARALLEL", cls.parallel, int),
            allow_unauthenticated=env.get("CDS_ALLOW_UNAUTHENTICATED_FETCH", "1" if dev else "0").lower() in ON,
        )


def _positive(env: Mapping[str, str], name: str, default: Any, kind: type) -> Any:
    """A positive number from the environment; a bad value stops start-up with the variable named."""
    text = env.get(name)
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a valid {kind.__name__}") from None
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive finite number, not {text!r}")
    return value


class FhirFetcher:
    """The prefetch.Fetcher that asks the EHR's FHIR server over HTTP, with one pooled session."""

    def __init__(self, settings: FetchSettings | None = None) -> None:
        self.settings = settings or FetchSettings()
        self.session = _session(self.settings)
        if self.settings.allow_unauthenticated:
            log.warning("FHIR fetch without an access token is allowed (CDS_ALLOW_UNAUTHENTICATED_FETCH)")

    def fetch(self, request: HookRequest, queries: Mapping[str, str]) -> dict[str, dict[str, Any] | FetchFailed]:
        for key in queries:
            FETCHED.labels(key=key).inc()
        if not queries:
            return {}
        started = time.monotonic()
        left = deadline.remaining()  # the hook call's own deadline, when it comes first
        call = _Call(self.session, self.settings, _base(request.fhirServer), _auth(request, self.settings),
                     started + min(self.settings.deadline_seconds, math.inf if left is None else left))
        pool = ThreadPoolExecutor(min(len(queries), self.settings.parallel), thread_name_prefix="fhir-fetch")
        try:
            futures = {key: pool.submit(call.run, query) for key, query in queries.items()}
            wait(futures.values(), timeout=call.remaining(), return_when=FIRST_EXCEPTION)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # a hung query must not hold the response
        for future in futures.values():
            if _finished(future) and isinstance(future.exception(), AccessRefused):
                raise future.exception()  # type: ignore[misc]
        results = {key: _outcome(future, call) for key, future in futures.items()}
        log.info("fhir fetch", extra={"fields": {
            "keys": sorted(queries), "failed": sorted(k for k, r in results.items() if isinstance(r, FetchFailed)),
            "ms": round((time.monotonic() - started) * 1000, 1)}})
        return results


def _base(server: str | None) -> str:
    """fhirServer in the one spelling its `next` links are compared with (urls.py)."""
    parts = urls.normalise(server or "")
    if parts is None or parts.query:
        raise NoFhirAccess("the EHR's fhirServer is not an http(s) base address")
    return parts.base


def _auth(request: HookRequest, settings: FetchSettings) -> AuthBase | None:
    if request.fhirAuthorization is not None:
        return _Bearer(request.fhirAuthorization.access_token)
    if settings.allow_unauthenticated:
        return None
    raise NoFhirAccess("the EHR sent no access token for its FHIR server")


def _finished(future: Future) -> bool:
    return future.done() and not future.cancelled()


def _outcome(future: Future, call: "_Call") -> dict[str, Any] | FetchFailed:
    """What one query came to by the deadline."""
    if not _finished(future):
        ERRORS.labels(kind="timeout").inc()
        return FetchFailed(call.too_slow())
    return future.result()


class _Bearer(AuthBase):
    """The EHR's token as requests auth, so that requests never swaps in ~/.netrc credentials."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        prepared.headers["Authorization"] = f"Bearer {self._token}"
        return prepared

    def __repr__(self) -> str:
        return "_Bearer(***)"


def _session(settings: FetchSettings) -> requests.Session:
    session = requests.Session()
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    adapter = HTTPAdapter(pool_connections=8, pool_maxsize=settings.parallel * 8, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["Accept"] = "application/fhir+json"
    return session


class _Failure(Exception):
    """One query's failure: `kind` for the metric, the message for the clinician's card."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


class _Call:
    """The queries of one hook call: one base, one token, one deadline."""

    def __init__(self, session: requests.Session, settings: FetchSettings, base: str,
                 auth: AuthBase | None, deadline: float) -> None:
        self.session, self.settings, self.base, self.auth, self.deadline = session, settings, base, auth, deadline

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def too_slow(self) -> str:
        return f"could not be retrieved: the FHIR server did not answer within {self.settings.deadline_seconds:g} s"

    def run(self, query: str) -> dict[str, Any] | FetchFailed:
        """The query's answer: a resource for a read, one Bundle of every page's entries for a search."""
        found: list[dict[str, Any]] = []
        try:
            page = self._get(f"{self.base}/{query}")
            path = query.split("?", 1)[0]
            if "/" in path:  # a read, e.g. Patient/123
                return _expect(page, path.split("/", 1)[0])
            return self._pages(_expect(page, "Bundle"), found)
        except _Failure as failure:
            ERRORS.labels(kind=failure.kind).inc()
            partial = {"resourceType": "Bundle", "type": "searchset", "entry": found} if found else None
            return FetchFailed(str(failure), partial)
        except AccessRefused:
            raise
        except Exception as error:  # an answer shaped in a way not foreseen: a gap too, never a 500
            ERRORS.labels(kind="unreadable").inc()
            log.error("fhir fetch: unexpected error", extra={"fields": {"error": type(error).__name__}})
            return FetchFailed("could not be retrieved: the FHIR server's answer could not be read")

    def _pages(self, page: dict[str, Any], found: list[dict[str, Any]]) -> dict[str, Any]:
        pages = 1
        while True:
            entries = page.get("entry") or []
            if not isinstance(entries, list):
                raise _Failure("malformed", "could not be retrieved: the FHIR server's answer was not valid FHIR")
            found += [e for e in entries if isinstance(e, dict)]
            next_url = _next_link(page)
            if next_url is None:
                return {"resourceType": "Bundle", "type": "searchset", "entry": found}
            next_url = _under_base(urljoin(self.base + "/", next_url), self.base)
            if next_url is None:
                raise _Failure("off-base-next", "was only partly retrieved: the FHIR server pointed to further "
                                                "results on another server, which the service does not contact")
            if pages >= self.settings.max_pages:
                raise _Failure("page-cap", f"was only partly retrieved: more than {self.settings.max_pages} "
                                           "pages of results")
            page = _expect(self._get(next_url), "Bundle")
            pages += 1

    def _get(self, url: str) -> Any:
        """One GET, retried once on 502/503/504 or a reset connection while the deadline allows."""
        try:
            return self._attempt(url)
        except _Retryable:
            if self.remaining() <= 0:
                raise
            return self._attempt(url)

    def _attempt(self, url: str) -> Any:
        remaining = self.remaining()
        if remaining <= 0:
            raise _Failure("timeout", self.too_slow())
        timeout = (min(self.settings.connect_timeout_seconds, remaining),
                   min(self.settings.read_timeout_seconds, remaining))
        try:
            with self.session.get(url, auth=self.auth, timeout=timeout, allow_redirects=False,
                                  stream=True) as response:
                _check_status(response.status_code)
                body = self._body(response)
        except requests.RequestException as e:
            raise _classify(e, self.too_slow()) from None
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise _Failure("malformed", "could not be retrieved: the FHIR server's answer was not valid JSON") from None

    def _body(self, response: requests.Response) -> bytes:
        chunks, size = [], 0
        for chunk in response.iter_content(64 * 1024):
            size += len(chunk)
            if size > self.settings.max_page_bytes:
                raise _Failure("too-large", "could not be retrieved: the FHIR server's answer was too large")
            if self.remaining() <= 0:
                raise _Failure("timeout", self.too_slow())
            chunks.append(chunk)
        return b"".join(chunks)


class _Retryable(_Failure):
    """A failure worth one more try: a gateway error or a connection reset."""


def _check_status(status: int) -> None:
    if status in (401, 403):
        ERRORS.labels(kind="access-refused").inc()
        raise AccessRefused(f"the FHIR server refused the access token (HTTP {status})")
    if status in RETRYABLE_STATUS:
        raise _Retryable("server-error", f"could not be retrieved: the FHIR server answered with an error (HTTP {status})")
    if 300 <= status < 400:
        raise _Failure("redirect", f"could not be retrieved: the FHIR server redirected the query (HTTP {status}), "
                                   "which the service does not follow")
    if status >= 500:
        raise _Failure("server-error", f"could not be retrieved: the FHIR server answered with an error (HTTP {status})")
    if status >= 400:
        raise _Failure("rejected", f"could not be retrieved: the FHIR server rejected the query (HTTP {status})")


def _expect(resource: Any, resource_type: str) -> dict[str, Any]:
    """The answer if it is the resource type asked for; an OperationOutcome or anything else is a gap."""
    kind = resource.get("resourceType") if isinstance(resource, dict) else None
    if kind == resource_type:
        return resource
    if kind == "OperationOutcome":
        raise _Failure("operation-outcome", "could not be retrieved: the FHIR server answered with an error")
    wanted = "a search result (Bundle)" if resource_type == "Bundle" else f"a {resource_type} resource"
    raise _Failure("wrong-type", f"could not be retrieved: the FHIR server's answer was not {wanted}")


def _next_link(bundle: dict[str, Any]) -> str | None:
    links = bundle.get("link")
    for link in links if isinstance(links, list) else ():
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


def _under_base(url: str, base: str) -> str | None:
    """The URL as it will be fetched (urls.py's one spelling) if it lies under `base`, else None."""
    parts, root = urls.normalise(url), urls.normalise(base)
    return str(parts) if parts is not None and root is not None and parts.under(root) else None


def _classify(error: requests.RequestException, too_slow: str) -> _Failure:
    """A requests error as the card will word it; only a dropped connection is worth a retry."""
    if isinstance(error, requests.Timeout) or _caused_by(error, ReadTimeoutError):
        return _Failure("timeout", too_slow)
    if _caused_by(error, (ConnectionResetError, http.client.RemoteDisconnected, ProtocolError)):
        return _Retryable("reset", "could not be retrieved: the FHIR server closed the connection")
    return _Failure("unreachable", "could not be retrieved: the FHIR server could not be reached")


def _caused_by(error: BaseException, kinds: type | tuple[type, ...]) -> bool:
    """Whether `error` wraps one of `kinds` (requests and urllib3 nest the socket's error several deep)."""
    pending, seen = [error], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kinds):
            return True
        pending += [e for e in (current.__cause__, current.__context__, *current.args) if isinstance(e, BaseException)]
    return False
