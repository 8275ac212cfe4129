"""The cdb files eximhook writes: the format itself, its 4 GiB limit, and reading
garbage or a truncated file. (Read back by tinycdb: tests/integration/test_cdb.py;
by the real Exim: tests/e2e/test_cdb.py.)"""

from __future__ import annotations

import mmap
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eximhook.storage import cdb

from ..support import cdb as cdbs


def test_an_empty_file_is_the_header_alone() -> None:
    data = cdbs.write([])
    assert data == struct.pack("<II", cdb.HEADER, 0) * 256, "256 empty tables, all where the file ends"
    assert cdb.get(data, b"") is None


def test_a_file_past_4_gib_is_refused() -> None:
    writer = cdb.Writer()
    writer.put(b"auth:bob", b"1")
    # a 4 GiB value that takes no memory: the writer must refuse it by its length alone
    with mmap.mmap(-1, cdb.MAX_SIZE) as huge, pytest.raises(cdb.TooLarge, match="cannot pass 4 GiB"):
        writer.put(b"auth:eve", huge)  # type: ignore[arg-type]
    assert cdb.get(writer.finish(), b"auth:bob") == b"1", "the records before it make a good file"


def test_the_limit_is_the_whole_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records, header and tables count: a file exactly at the limit is written, one
    byte more is refused (the limit made small, as the 4 GiB one cannot be written here)."""
    record = 8 + len(b"key") + len(b"value") + 16  # its bytes, and its two slots in a table
    monkeypatch.setattr(cdb, "MAX_SIZE", cdb.HEADER + 3 * record)
    writer = cdb.Writer()
    for _ in range(3):
        writer.put(b"key", b"value")
    with pytest.raises(cdb.TooLarge):
        writer.put(b"", b"")
    assert len(writer.finish()) == cdb.MAX_SIZE
    writer = cdb.Writer()
    writer.put(b"key", b"value" + b"!" * (2 * record))
    with pytest.raises(cdb.TooLarge):
        writer.put(b"key", b"value")


def test_a_value_running_past_the_end_is_corrupt() -> None:
    data = bytearray(cdbs.write([(b"key", b"value")]))
    struct.pack_into("<I", data, cdb.HEADER + 4, 1 << 20)  # the record's value length
    with pytest.raises(cdb.Corrupt, match="ends past the file's end"):
        cdb.get(bytes(data), b"key")


@settings(max_examples=300)
@given(data=st.binary(max_size=3000), key=st.binary(max_size=20))
def test_reading_garbage_answers_or_raises_corrupt(data: bytes, key: bytes) -> None:
    try:
        value = cdb.get(data, key)
    except cdb.Corrupt:
        return
    assert value is None or isinstance(value, bytes)


@given(items=cdbs.items)
def test_reading_a_truncated_file_raises_corrupt_or_answers_right(items: list[tuple[bytes, bytes]]) -> None:
    data = cdbs.write(items)
    for key, _ in items[:3]:
        for cut in (len(data) - 1, len(data) // 2, cdb.HEADER + 1, cdb.HEADER - 1):
            try:
                found = cdb.get(data[:cut], key)
            except cdb.Corrupt:
                continue
            assert found in (None, dict(reversed(items))[key])
