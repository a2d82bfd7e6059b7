"""URLs in one spelling, so that "is this under that base?" is asked of the URL that will really be fetched.

The EHR's access token may go only to its FHIR base (fhir_client.py), and a caller may name only its
issuer's FHIR servers (web/auth.py). A check on the URL as written can be fooled by what HTTP libraries and
servers do with it afterwards: `…/fhir/../admin/x` passes a prefix check and is sent as `/admin/x`;
`%2e%2e` is a dot segment to many servers, `..;` one to Tomcat; `:443` is the https host itself. So URLs
are brought to one form first (RFC 3986 §6.2.2: case, percent-encoding, dot segments; default ports
dropped), that form is what is checked and what is fetched, and URLs whose meaning servers disagree on
(an encoded slash or backslash, a backslash, user info, a fragment, control characters) have no form.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_AMBIGUOUS_ESCAPES = {"2F", "5C", "00"}  # "/", "\" and NUL: a path segment or its end, depending on the server


@dataclass(frozen=True)
class Url:
    scheme: str
    host: str
    port: int
    path: str  # absolute, dot segments resolved, "/" at least
    query: str

    @property
    def base(self) -> str:
        """Scheme, host, port (when not the default) and path without a trailing slash: a base URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.path.rstrip('/')}"

    def __str__(self) -> str:
        return self.base + ("/" if self.path.endswith("/") else "") + (f"?{self.query}" if self.query else "")

    def under(self, base: "Url") -> bool:
        """Same scheme, host and port, and a path at or below the base's path."""
        root = base.path.rstrip("/") + "/"
        return (self.scheme, self.host, self.port) == (base.scheme, base.host, base.port) and \
            (self.path.rstrip("/") + "/").startswith(root)


def normalise(url: str) -> Url | None:
    """The URL in its one spelling; None when it is not http(s) or servers could read it in more ways than one."""
    if not isinstance(url, str) or any(c in url for c in "\\ ") or not url.isprintable():
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # an unparsable port or host
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or "%" in parts.netloc or parts.fragment \
            or parts.username is not None or "#" in url:
        return None
    path = _decoded(parts.path)
    if path is None:
        return None
    return Url(scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme], _resolved(path), parts.query)


def _decoded(path: str) -> str | None:
    """Escapes of unreserved characters decoded ("%2e" is "."), the others in upper case; None for escapes
    of a slash, backslash or NUL."""
    def one(match: re.Match[str]) -> str:
        hex_digits = match.group(1).upper()
        char = chr(int(hex_digits, 16))
        return char if char in _UNRESERVED else f"%{hex_digits}"

    if any(m.group(1).upper() in _AMBIGUOUS_ESCAPES for m in _ESCAPE.finditer(path)):
        return None
    return _ESCAPE.sub(one, path)


def _resolved(path: str) -> str:
    """The path with its dot segments removed (RFC 3986 §5.2.4); a segment that is a dot segment but for
    parameters after ";" ("..;x") counts as one, as Tomcat and others read it."""
    segments = path.split("/")[1:] if path.startswith("/") else path.split("/")
    kept: list[str] = []
    for segment in segments:
        name = segment.split(";", 1)[0]
        if name == "..":
            if kept:
                kept.pop()
        elif name != ".":
            kept.append(segment)
    ends_in_dot = bool(segments) and segments[-1].split(";", 1)[0] in (".", "..")
    return "/" + "/".join(kept) + ("/" if ends_in_dot and kept else "")
