"""The cdb files eximhook writes, read back by readers that are not ours: Debian's
tinycdb (its ``cdb`` tool, which also writes the same records itself for a byte-by-byte
comparison) and the real Exim's ``cdb`` lookup, on any bytes, duplicate and empty keys,
keys that collide, and past the format's 4 GiB limit."""

from __future__ import annotations

import base64
import mmap
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eximhook.storage import cdb

from .conftest import EXIM, needs_exim

_CI = os.environ.get("CI") == "true"
TINYCDB = shutil.which("cdb") or "/usr/bin/cdb"
needs_tinycdb = pytest.mark.skipif(not _CI and not os.path.exists(TINYCDB), reason="needs tinycdb")

# Two keys whose hash is 0, in the same table (0) and the same first slot. A hash of 0
# is a valid slot's hash: a writer that takes it for an empty slot (pure-cdb 4.0 did)
# puts the second key over the first, and neither Exim nor tinycdb finds the first.
HASH_ZERO = [b"auth:670\xd0\x10\x1b\xfd", b"auth:670\xd0\x11:\xfd"]


def write(items: list[tuple[bytes, bytes]]) -> bytes:
    writer = cdb.Writer()
    for key, value in items:
        writer.put(key, value)
    return writer.finish()


def dump(items: list[tuple[bytes, bytes]]) -> bytes:
    """The records in cdbmake's format, which ``cdb -d`` prints and ``cdb -c`` reads."""
    return b"".join(b"+%d,%d:%s->%s\n" % (len(k), len(v), k, v) for k, v in items) + b"\n"


def tinycdb_query(path: Path, key: bytes) -> bytes | None:
    """Every value tinycdb finds under ``key``, in its order, run together (None: none)."""
    proc = subprocess.run([TINYCDB, "-q", "--", path, key], capture_output=True, check=False)  # a key may start with -
    assert proc.returncode in (0, 100), proc.stderr
    return proc.stdout if proc.returncode == 0 else None


# keys from a small pool as often as not, so that duplicates and collisions are common
_keys = st.one_of(st.sampled_from([b"", b"a", b"auth:bob", b"\0", b"\xff\n:"]), st.binary(max_size=40))
_items = st.lists(st.tuples(_keys, st.binary(max_size=40)), max_size=30)


@needs_tinycdb
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=_items, absent=st.binary(min_size=1, max_size=40))
def test_tinycdb_reads_what_we_write(tmp_path: Path, items: list[tuple[bytes, bytes]], absent: bytes) -> None:
    data = write(items)
    ours = tmp_path / "ours.cdb"
    ours.write_bytes(data)
    # the records, in order, every byte
    assert subprocess.run([TINYCDB, "-d", ours], capture_output=True, check=True).stdout == dump(items)
    # the hash tables: tinycdb's own writer lays out the same records byte for byte
    theirs = tmp_path / "theirs.cdb"
    subprocess.run([TINYCDB, "-c", "-t", "-", theirs], input=dump(items), check=True)
    assert theirs.read_bytes() == data
    values: dict[bytes, list[bytes]] = {}
    for key, value in items:
        values.setdefault(key, []).append(value)
    absent = absent.replace(b"\0", b"") or b"x"
    while absent in values:
        absent += b"x"
    for key, found in values.items():
        assert cdb.get(data, key) == found[0], "the first value put, as Exim finds it"
        if b"\0" not in key:  # a command-line argument cannot hold it; the tables above cover it
            assert tinycdb_query(ours, key) == b"".join(found)
    assert tinycdb_query(ours, absent) is None
    assert cdb.get(data, absent) is None


def test_an_empty_file_is_the_header_alone() -> None:
    data = write([])
    assert data == struct.pack("<II", cdb.HEADER, 0) * 256, "256 empty tables, all where the file ends"
    assert cdb.get(data, b"") is None


@needs_tinycdb
def test_keys_that_hash_to_zero_are_all_found(tmp_path: Path) -> None:
    assert [cdb.djb_hash(k) for k in HASH_ZERO] == [0, 0]
    path = tmp_path / "zero.cdb"
    path.write_bytes(write([(k, b"%d" % i) for i, k in enumerate(HASH_ZERO)]))
    assert [tinycdb_query(path, k) for k in HASH_ZERO] == [b"0", b"1"]


def exim_lookups(path: Path, keys: list[bytes]) -> list[bytes | None]:
    """What the real Exim's cdb lookup finds for each key (None: not found), in one
    ``exim -be``: each key read from a file of its own (-be takes lines of at most
    about a kilobyte), each value printed in base64, so no byte is interpreted."""
    lines = []
    for i, key in enumerate(keys):
        (path.parent / f"key{i}").write_bytes(key)
        lines.append(f"${{lookup{{${{readfile{{{path.parent}/key{i}}}}}}}cdb{{{path}}}{{=${{base64:$value}}}}{{-}}}}")
    proc = subprocess.run([EXIM, "-be"], input="\n".join(lines).encode() + b"\n", capture_output=True, check=True)
    # -be prints "> " before each result and once more at the end of its input
    out = proc.stdout.decode().split("\n")[:len(keys)]
    assert all(line[:3] in ("> =", "> -") for line in out), proc.stdout
    return [base64.b64decode(line[3:]) if line[2] == "=" else None for line in out]


@needs_exim
def test_exim_reads_what_we_write(tmp_path: Path) -> None:
    """Hostile keys (every byte Exim can take in a key: all but NUL), long keys, two
    values for one key, keys that hash to 0, and enough keys to fill the tables."""
    hostile = [bytes([c]) for c in range(1, 256)] + [
        b"auth:${run{/bin/true}}", b'auth:"bob"\n', b"auth:\\N$x\\N}", b"auth:\xff\xfe:", b"k" * 4000,
        *HASH_ZERO, *(b"relay:192.0.2.%d" % i for i in range(600))]
    items = [(k, b"v%d\n%s" % (i, k)) for i, k in enumerate(hostile)] + [(b"auth:\xff\xfe:", b"second")]
    path = tmp_path / "hostile.cdb"
    path.write_bytes(write(items))
    missing = [b"auth:", b"relay:192.0.2.600", b"\x01\x01"]
    found = exim_lookups(path, hostile + missing)
    assert found == [b"v%d\n%s" % (i, k) for i, k in enumerate(hostile)] + [None] * len(missing)


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
    data = bytearray(write([(b"key", b"value")]))
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


@given(items=_items)
def test_reading_a_truncated_file_raises_corrupt_or_answers_right(items: list[tuple[bytes, bytes]]) -> None:
    data = write(items)
    for key, _ in items[:3]:
        for cut in (len(data) - 1, len(data) // 2, cdb.HEADER + 1, cdb.HEADER - 1):
            try:
                found = cdb.get(data[:cut], key)
            except cdb.Corrupt:
                continue
            assert found in (None, dict(reversed(items))[key])
