"""cdb files for the tests: written by eximhook's writer, with the keys that are hard on
a reader (any bytes, duplicates, collisions, two keys that hash to 0)."""

from __future__ import annotations

from hypothesis import strategies as st

from eximhook.storage import cdb

# Two keys whose hash is 0, in the same table (0) and the same first slot. A hash of 0
# is a valid slot's hash: a writer that takes it for an empty slot (pure-cdb 4.0 did)
# puts the second key over the first, and neither Exim nor tinycdb finds the first.
HASH_ZERO = [b"auth:670\xd0\x10\x1b\xfd", b"auth:670\xd0\x11:\xfd"]

# keys from a small pool as often as not, so that duplicates and collisions are common
keys = st.one_of(st.sampled_from([b"", b"a", b"auth:bob", b"\0", b"\xff\n:"]), st.binary(max_size=40))
items = st.lists(st.tuples(keys, st.binary(max_size=40)), max_size=30)


def write(records: list[tuple[bytes, bytes]]) -> bytes:
    """A cdb file of ``records`` (key, value), in order, duplicates kept."""
    writer = cdb.Writer()
    for key, value in records:
        writer.put(key, value)
    return writer.finish()
