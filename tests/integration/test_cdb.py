"""The cdb files eximhook writes, read back by a reader that is not ours: Debian's
tinycdb (its ``cdb`` tool, which also writes the same records itself for a byte-by-byte
comparison), on any bytes, duplicate and empty keys and keys that collide."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eximhook.storage import cdb

from ..support import cdb as cdbs
from ..support.marks import CI

TINYCDB = shutil.which("cdb") or "/usr/bin/cdb"
needs_tinycdb = pytest.mark.skipif(not CI and not os.path.exists(TINYCDB), reason="needs tinycdb")

def dump(items: list[tuple[bytes, bytes]]) -> bytes:
    """The records in cdbmake's format, which ``cdb -d`` prints and ``cdb -c`` reads."""
    return b"".join(b"+%d,%d:%s->%s\n" % (len(k), len(v), k, v) for k, v in items) + b"\n"


def tinycdb_query(path: Path, key: bytes) -> bytes | None:
    """Every value tinycdb finds under ``key``, in its order, run together (None: none)."""
    proc = subprocess.run([TINYCDB, "-q", "--", path, key], capture_output=True, check=False)  # a key may start with -
    assert proc.returncode in (0, 100), proc.stderr
    return proc.stdout if proc.returncode == 0 else None


@needs_tinycdb
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=cdbs.items, absent=st.binary(min_size=1, max_size=40))
def test_tinycdb_reads_what_we_write(tmp_path: Path, items: list[tuple[bytes, bytes]], absent: bytes) -> None:
    data = cdbs.write(items)
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


@needs_tinycdb
def test_keys_that_hash_to_zero_are_all_found(tmp_path: Path) -> None:
    assert [cdb.djb_hash(k) for k in cdbs.HASH_ZERO] == [0, 0]
    path = tmp_path / "zero.cdb"
    path.write_bytes(cdbs.write([(k, b"%d" % i) for i, k in enumerate(cdbs.HASH_ZERO)]))
    assert [tinycdb_query(path, k) for k in cdbs.HASH_ZERO] == [b"0", b"1"]
