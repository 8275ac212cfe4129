from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eximhook.errors import BadSubject
from eximhook.model.subjects import escape, lsearch_line, normalize, quote, unquote


@pytest.mark.parametrize(
    ("ns", "key", "prefix", "expected"),
    [
        pytest.param("auth", "Bob", 64, "bob", id="ascii-case-folded"),
        pytest.param("auth", "ÄLICE", 64, "Älice", id="non-ascii-kept"),
        pytest.param("auth", "a b\"c", 64, "a b\"c", id="spaces-quotes"),
        pytest.param("relay", "192.0.2.7", 64, "192.0.2.7", id="ipv4"),
        pytest.param("relay", "2001:DB8:1:2:3:4:5:6", 64, "2001.0db8.0001.0002.0000.0000.0000.0000/64", id="ipv6-64"),
        pytest.param("relay", "2001:db8::1", 128, "2001:db8::1", id="ipv6-ungrouped"),
        pytest.param("relay", "::ffff:192.0.2.9", 64, "192.0.2.9", id="v4-mapped"),
        pytest.param("relay", "radius:Cust42", 64, "radius:cust42", id="radius-id"),
    ],
)
def test_normalize(ns: str, key: str, prefix: int, expected: str) -> None:
    assert normalize(ns, key, prefix) == expected


@pytest.mark.parametrize(
    ("ns", "key", "message"),
    [
        pytest.param("smtp", "bob", "unknown namespace", id="namespace"),
        pytest.param("auth", "", "empty key", id="empty"),
        pytest.param("auth", "a\0b", "NUL", id="nul"),
        pytest.param("auth", "x" * 16385, "limit is 16384", id="too-long"),
        pytest.param("auth", "\ud800", "not bytes", id="lone-surrogate"),
    ],
)
def test_normalize_rejects(ns: str, key: str, message: str) -> None:
    with pytest.raises(BadSubject, match=message):
        normalize(ns, key)


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("bob", "bob"),
        ("a\nb", "a\\nb"),
        ("a\\nb", "a\\\\nb"),
        ("tab\there", "tab\\there"),
        ("bell\x07", "bell\\x07"),
        (b"\xff\xfe".decode("utf-8", "surrogateescape"), "\\xff\\xfe"),
        ("Ünïcode", "Ünïcode"),
    ],
    ids=repr,
)
def test_escape(key: str, shown: str) -> None:
    assert escape(key) == shown


@given(st.text())
def test_escape_is_one_printable_line(key: str) -> None:
    shown = escape(key)
    assert shown.isprintable()


@given(st.lists(st.text(min_size=1), min_size=2, max_size=2, unique=True))
def test_escape_keeps_keys_apart(keys: list[str]) -> None:
    assert escape(keys[0]) != escape(keys[1])


@given(st.binary(min_size=1, max_size=300).filter(lambda b: b"\0" not in b))
def test_lsearch_line_is_one_line(raw: bytes) -> None:
    line = lsearch_line(raw.decode("utf-8", "surrogateescape"))
    assert line is not None and line.count(b"\n") == 1 and line.endswith(b'"\n')


@given(st.binary(min_size=1, max_size=300).filter(lambda b: b"\0" not in b), st.binary(max_size=20))
def test_unquote_reads_back_what_quote_wrote(raw: bytes, rest: bytes) -> None:
    key = raw.decode("utf-8", "surrogateescape")
    assert unquote(quote(key) + rest) == (key, rest)


@pytest.mark.parametrize("data", [b'"open', b'"bad \\q"', b'"short \\x4"', b"no quote"])
def test_unquote_refuses_what_quote_never_writes(data: bytes) -> None:
    with pytest.raises(ValueError):
        unquote(data)


def test_lsearch_line_too_long() -> None:
    assert lsearch_line("x" * 3997) is not None  # 3997 + two quotes + newline = 4000
    assert lsearch_line("x" * 3998) is None
