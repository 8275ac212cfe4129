"""D. J. Bernstein's constant database, the file Exim's ``cdb`` lookup reads: written
(``Writer``) and read (``get``) here.

Written here rather than by a library: pure-cdb, which eximhook used, has no wheels past
Python 3.11 (pip then needs a compiler), and Debian packages no Python cdb writer, so
the Debian package could not depend on one. The format is small and fixed
(https://cr.yp.to/cdb/cdb.txt), every number a little-endian uint32:

- a 2048-byte header: for each of 256 hash tables, its position and its number of slots;
- the records, in the order put: key length, value length, key, value;
- the 256 tables, each with twice as many (hash, record position) slots as it has
  records; a key goes to table ``hash % 256``, probing from slot ``hash // 256 % slots``
  to the next empty one (position 0: no record starts inside the header).

Positions are uint32, so a file cannot pass 4 GiB: ``put`` refuses the record that would
take it past (``TooLarge``) instead of writing a file Exim would misread.
"""

from __future__ import annotations

import struct

from ..errors import FileError

HEADER = 2048
MAX_SIZE = 0xFFFFFFFF  # the last position a uint32 can hold: the end of the last table
_PAIR = struct.Struct("<II")


class TooLarge(FileError):
    """The cdb file would pass the format's 4 GiB limit."""


class Corrupt(FileError):
    """The data is not a well-formed cdb file (truncated, or a position outside it)."""


def djb_hash(key: bytes) -> int:
    """The cdb hash: h = 5381, then h = (h * 33) ^ byte, modulo 2**32."""
    h = 5381
    for c in key:
        h = (h * 33 ^ c) & 0xFFFFFFFF
    return h


class Writer:
    """Records in, the whole file out (``finish``): the mirror writes it to a temp file
    and renames that over the old one, so it is built in memory."""

    def __init__(self) -> None:
        self._data = bytearray(HEADER)  # the header is filled in by finish()
        self._slots: list[list[tuple[int, int]]] = [[] for _ in range(256)]
        self._count = 0

    def put(self, key: bytes, value: bytes) -> None:
        """Add a record. A key put twice keeps both; a lookup finds the first."""
        pos = len(self._data)
        # the file as it would be with this record: records so far, this one, and two
        # 8-byte slots per record in the tables
        size = pos + 8 + len(key) + len(value) + 16 * (self._count + 1)
        if size > MAX_SIZE:
            raise TooLarge(f"a cdb file cannot pass 4 GiB: record {self._count + 1} "
                           f"({len(key)}-byte key, {len(value)}-byte value) would make it {size} bytes")
        h = djb_hash(key)
        self._slots[h & 255].append((h, pos))
        self._data += _PAIR.pack(len(key), len(value))
        self._data += key
        self._data += value
        self._count += 1

    def finish(self) -> bytes:
        """The file: header, records and tables."""
        data = self._data
        for table, entries in enumerate(self._slots):
            n = 2 * len(entries)
            slots = [0] * (2 * n)  # hash, position, hash, position, ...
            for h, pos in entries:
                i = (h >> 8) % n
                while slots[2 * i + 1]:  # taken (a record's position is never 0)
                    i = (i + 1) % n
                slots[2 * i] = h
                slots[2 * i + 1] = pos
            _PAIR.pack_into(data, 8 * table, len(data), n)
            data += struct.pack(f"<{2 * n}I", *slots)
        return bytes(data)


def get(data: bytes, key: bytes) -> bytes | None:
    """The first value put under ``key`` in the cdb file ``data`` (None: not there)."""
    h = djb_hash(key)
    try:
        table, n = _PAIR.unpack_from(data, 8 * (h & 255))
        start = (h >> 8) % n if n else 0
        for i in range(n):  # a full table without an empty slot ends here too
            slot_hash, pos = _PAIR.unpack_from(data, table + 8 * ((start + i) % n))
            if not pos:
                return None
            if slot_hash == h:
                klen, dlen = _PAIR.unpack_from(data, pos)
                if data[pos + 8:pos + 8 + klen] == key:
                    value = data[pos + 8 + klen:pos + 8 + klen + dlen]
                    if len(value) != dlen:
                        raise Corrupt(f"the record at {pos} ends past the file's end ({len(data)} bytes)")
                    return value
    except struct.error as exc:
        raise Corrupt(f"not a cdb file ({len(data)} bytes): {exc}") from exc
    return None
