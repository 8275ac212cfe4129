"""The cdb files eximhook writes, read back by the real Exim's ``cdb`` lookup, on any
bytes, duplicate and empty keys, keys that collide."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

from ..support import cdb as cdbs
from ..support.marks import needs_exim
from ..support.paths import EXIM


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
        *cdbs.HASH_ZERO, *(b"relay:192.0.2.%d" % i for i in range(600))]
    items = [(k, b"v%d\n%s" % (i, k)) for i, k in enumerate(hostile)] + [(b"auth:\xff\xfe:", b"second")]
    path = tmp_path / "hostile.cdb"
    path.write_bytes(cdbs.write(items))
    missing = [b"auth:", b"relay:192.0.2.600", b"\x01\x01"]
    found = exim_lookups(path, hostile + missing)
    assert found == [b"v%d\n%s" % (i, k) for i, k in enumerate(hostile)] + [None] * len(missing)
