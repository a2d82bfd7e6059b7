"""CORS for browser-based CDS clients such as the CDS Hooks sandbox.

Every call from a browser client is preflighted (it sends Authorization and JSON), and the preflight
carries no token, so it is answered before authentication. The allowed origin is echoed on every
answer, errors included: a browser hides an error response without it, and the clinician then sees
"network error" instead of the reason.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Request, Response

ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type"
EXPOSED_HEADERS = "X-Request-ID"
PREFLIGHT_MAX_AGE = "600"


class CorsConfigError(ValueError):
    """The allowed origins are unusable: the service refuses to start."""


class Cors:
    def __init__(self, origins: tuple[str, ...], dev: bool) -> None:
        if "*" in origins and not dev:
            raise CorsConfigError("CDS_CORS_ORIGINS='*' (any web page may call) is allowed only in "
                                  "development mode (CDS_DEV=1); list the EHR origins instead")
        for origin in origins:
            if origin != "*" and not _is_origin(origin):
                raise CorsConfigError(f"CDS_CORS_ORIGINS: {origin!r} is not an origin like https://ehr.example.org")
        self.any_origin = "*" in origins
        self.origins = {o.lower() for o in origins}

    def allows(self, origin: str | None) -> bool:
        return bool(origin) and (self.any_origin or origin.lower() in self.origins)

    @staticmethod
    def is_preflight(request: Request) -> bool:
        return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers

    def preflight(self, request: Request) -> Response:
        response = Response(status=204)
        if self.allows(request.headers.get("Origin")):
            response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
            if request.headers.get("Access-Control-Request-Private-Network") == "true":
                response.headers["Access-Control-Allow-Private-Network"] = "true"
        return response

    def decorate(self, request: Request, response: Response) -> Response:
        """Name the caller's origin on the response if it is allowed (any status)."""
        origin = request.headers.get("Origin")
        response.vary.add("Origin")
        if self.allows(origin):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        return response


def _is_origin(origin: str) -> bool:
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname)
            and not parts.path and not parts.query and not parts.fragment)
