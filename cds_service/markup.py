"""Text from the record or the request, made inert before it goes into a card.

A Condition's text, a medication's display or a unit is written by whoever wrote the record, and EHRs
render a card's `detail` as Markdown, often with raw HTML allowed (the CDS Hooks sandbox does): copied
as it is, `<img src=x onerror=...>` runs script, `![](https://…)` loads a tracking image, `[x](javascript:…)`
is a link, `# …` a heading. So every such string is made one line of bounded length, and then:

- for `detail` (Markdown): every character with a meaning in Markdown or HTML is written as a numeric
  character reference (`&#60;` for `<`). CommonMark shows a reference as its character and never reads
  it as structure, and HTML shows it as its character: the reader sees exactly the text the record holds.
- for `summary` and suggestion labels (plain text in CDS Hooks 2.0, and shown as such by the sandbox, so a
  reference would show as `&#60;`): the text stays as it is but for the few sequences that would start
  markup if a client rendered the field as Markdown or HTML anyway, broken by a space (`< img`, `] (`)
  or a backslash (a heading's `#`).

Template text written by clinicians in rules/ is not passed through here.
"""
from __future__ import annotations

import re
from functools import lru_cache, wraps
from typing import Callable

MAX_CHARS = 300  # a record's display, unit or name: a longer one is cut, so one value cannot flood a card
REMEMBERED = 8192  # escaped texts kept (each at most MAX_CHARS long: a few MB at most)
_REFERENCES = {ord(c): f"&#{ord(c)};" for c in "&<>\\`*_[]#|~!"}
_MARKDOWN_LINE_START = re.compile(r"^(\d{1,9}(?=[.)](?:\s|$))|(?=[-+=](?:[-+=\s]|$)))")  # list items, rules
_PLAIN_MARKUP = re.compile(r"<(?=[A-Za-z/!?])|\](?=\()|!(?=\[)")
_PLAIN_LINE_START = re.compile(r"^(?:\d{1,9}(?=[.)](?:\s|$))|(?=(?:#{1,6}|[-+*])(?:\s|$)|>|`{3}|~{3}))")


def _remembered(escape: Callable[[str], str]) -> Callable[[str], str]:
    """`escape`, remembering its answers for short texts: a card's few dozen values (labels, dates,
    units, names) come back call after call, and escaping each again was a tenth of a typical call."""
    cached = lru_cache(maxsize=REMEMBERED)(escape)

    @wraps(escape)
    def remembering(text: str) -> str:
        return cached(text) if len(text) <= MAX_CHARS else escape(text)

    return remembering


@_remembered
def markdown(text: str) -> str:
    """`text` for a Markdown field (detail): shown as exactly these characters, never as markup."""
    line = one_line(text).translate(_REFERENCES)
    found = _MARKDOWN_LINE_START.match(line)
    if found:
        end = found.end()
        line = line[:end] + f"&#{ord(line[end])};" + line[end + 1:]
    return line


@_remembered
def plain(text: str) -> str:
    """`text` for a plain-text field (summary, label): as written, with nothing a renderer would read as markup."""
    line = _PLAIN_MARKUP.sub(r"\g<0> ", one_line(text))
    return _PLAIN_LINE_START.sub(r"\g<0>\\", line, count=1)


def one_line(text: str) -> str:
    """Line breaks, tabs and other control or format characters (bidi overrides among them) as single
    spaces, trimmed, and at most MAX_CHARS long."""
    if not text.isprintable():  # rare: only then look at each character
        text = "".join(c if c.isprintable() else " " for c in text)
    line = " ".join(text.split())
    return line if len(line) <= MAX_CHARS else line[: MAX_CHARS - 1].rstrip() + "…"
