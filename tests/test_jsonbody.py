"""The nesting check that runs before a body is parsed counts what the parser will build, whatever the
strings hold (quotes, backslashes, brackets)."""
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from cds_service.web import jsonbody

TRICKY = st.text(alphabet='ab"\\[]{}\n', max_size=8)
JSON = st.recursive(st.none() | st.integers() | TRICKY,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY, inner, max_size=3),
                    max_leaves=30)


def nesting(value) -> int:
    if isinstance(value, dict):
        return 1 + max((nesting(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((nesting(v) for v in value), default=0)
    return 0


@settings(max_examples=400, derandomize=True)
@given(JSON)
def test_depth_matches_the_parsed_structure(value):
    raw = json.dumps(value).encode()
    assert jsonbody.depth(raw, 100) == nesting(value)


def test_brackets_hidden_in_strings_do_not_hide_real_depth():
    body = "".join('{"k": "]]}}\\\\\\"", "v": ' for _ in range(70)) + "1" + "}" * 70
    assert jsonbody.depth(body.encode(), 64) == 65
