"""Who may use the admin endpoints (/admin/report, /admin/reload): whoever holds CDS_ADMIN_TOKEN.

The token comes as a Bearer token (scripts), or as the password of HTTP Basic auth with any user name, so
that a person can open the report in a browser, which can send no Bearer header by itself.
"""
from __future__ import annotations

import base64
import binascii
import hmac

CHALLENGES = ('Bearer realm="cd20-cds admin"', 'Basic realm="cd20-cds admin", charset="UTF-8"')


def refusal(authorization: str, token: str | None, dev: bool) -> int | None:
    """None when the caller may proceed; else the status to answer: 404 while no token is configured
    (outside development mode the admin endpoints do not exist), 401 for a missing or wrong token."""
    if token is None:
        return None if dev else 404
    return None if admitted(authorization, token) else 401


def admitted(authorization: str, token: str) -> bool:
    scheme, _, credential = authorization.partition(" ")
    credential = credential.strip()
    if scheme.lower() == "basic":
        try:
            credential = base64.b64decode(credential, validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credential.encode(), token.encode())
