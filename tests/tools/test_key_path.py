"""`produce --key-path`: the path reads what it names, or nothing; keys and headers as bytes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.tools.produce import KeyPath, ProduceError, key_bytes, parse_header, record_of

names = st.text(
    st.characters(blacklist_characters=".[]", blacklist_categories=["Cs"]), min_size=1, max_size=8
)
scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=12,
)


def _paths(document: Any, steps: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], Any]]:
    """Every (path, value) inside a document."""
    found = [(steps, document)] if steps else []
    if isinstance(document, dict):
        for name, value in document.items():
            found += _paths(value, (*steps, name))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += _paths(value, (*steps, index))
    return found


def _text(steps: tuple[str | int, ...]) -> str:
    return "$" + "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in steps)


@given(documents, st.data())
def test_a_path_finds_the_value_it_names(document: Any, data: st.DataObject) -> None:
    paths = _paths(document)
    if not paths:
        return
    steps, value = data.draw(st.sampled_from(paths))
    path = KeyPath.parse(_text(steps))
    assert path.steps == steps
    assert path.find(document) == value


@given(documents)
def test_a_missing_step_finds_nothing(document: Any) -> None:
    assert (
        KeyPath.parse("$.no_such_member.x").find(document if not isinstance(document, dict) else {}) is None
    )
    assert KeyPath.parse("[99]").find(document if not isinstance(document, list) else []) is None


def test_paths_with_and_without_the_root() -> None:
    event = {"device": {"device_id": "dev-1"}, "items": [{"id": 7}], "0": "zero"}
    assert KeyPath.parse("device.device_id").find(event) == "dev-1"
    assert KeyPath.parse("$.device.device_id").find(event) == "dev-1"
    assert KeyPath.parse("items[0].id").find(event) == 7
    assert KeyPath.parse("0").find(event) == "zero"  # a name, not an index
    assert KeyPath.parse("items.0").find(event) is None  # a list has no member named "0"
    for bad in ("", "$", "a..b", "a[x]", "a[0"):
        with pytest.raises(ProduceError, match="--key-path"):
            KeyPath.parse(bad)


def test_keys_are_strings_as_utf8_and_anything_else_as_json() -> None:
    assert key_bytes("acct-1") == b"acct-1"
    assert key_bytes("é") == "é".encode()
    assert key_bytes(7) == b"7" and key_bytes(True) == b"true"
    assert key_bytes({"a": [1]}) == orjson.dumps({"a": [1]})
    assert key_bytes(None) is None


def test_headers_are_name_equals_value() -> None:
    assert parse_header("a=b=c") == ("a", b"b=c")
    assert parse_header("empty=") == ("empty", b"")
    for bad in ("novalue", "=x"):
        with pytest.raises(ProduceError, match="--header"):
            parse_header(bad)


def test_a_line_is_sent_as_it_is() -> None:
    line = b'{"b": 1,  "a": 2, "a": 3}'  # duplicate keys and spacing: the guard sees these bytes
    assert record_of(line, "f:1", None, None) == (None, line, False)
    assert record_of(line, "f:1", KeyPath.parse("a"), None) == (b"3", line, False)
    assert record_of(line, "f:1", KeyPath.parse("c"), None) == (None, line, True)
