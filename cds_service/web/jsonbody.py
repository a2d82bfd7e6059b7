"""Reading an untrusted JSON body: nesting is bounded before the parser recurses into it."""
from __future__ import annotations

import json
import re
from typing import Any

_NOT_STRUCTURE = bytes(i for i in range(256) if i not in b'"[]{}')
_STRING = re.compile(rb'"[^"]*"')
_INNERMOST = re.compile(rb"\[\]|\{\}")


class BadJson(ValueError):
    pass


def loads(raw: bytes, max_depth: int) -> Any:
    """Parse JSON, refusing bodies nested more than max_depth levels deep."""
    if depth(raw, max_depth) > max_depth:
        raise BadJson(f"JSON is nested more than {max_depth} levels deep")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise BadJson(f"body is not valid JSON: {str(e)[:200]}") from None


def depth(raw: bytes, limit: int) -> int:
    """Bracket nesting of a JSON text, counted up to limit + 1, at C speed (no per-byte Python loop).

    Escaped backslashes and quotes go first, so every remaining quote delimits a string; then all but
    quotes and brackets. Two adjacent quotes there are an empty string or the end of one string and the
    start of the next with nothing between, so dropping them loses no structure and leaves few strings
    for the slower pass that drops strings with brackets inside; then innermost pairs are peeled one
    level at a time.
    """
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = raw.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    structure = _STRING.sub(b"", structure)
    level = 0
    while structure and level <= limit:
        peeled = _INNERMOST.sub(b"", structure)
        if len(peeled) == len(structure):
            break
        structure, level = peeled, level + 1
    return level
