"""Files Exim and people read, rebuilt from the store on every block and unblock.

- ``blocked_authenticated_users`` / ``blocked_relay_users``: one quoted key a line in
  Exim's lsearch syntax, so the seeds' ``${lookup{$acl_m_user}lsearch{...}}`` and
  support staff keep working.
- ``blocked_subjects.cdb``: keys ``NS:KEY`` for the snippets' check,
  ``${lookup{auth:$acl_m_user}cdb{...}}``: a cdb lookup costs ~4 µs in Exim, against
  ~12 ms for a Python ``${run}``.

Each file is written to a temp file and renamed over the old one, so Exim never reads
half a file. The rewrite holds a file lock and reads the store *inside* it, so when two
processes race the last one to write also read the newest state.

The store counts every change to its set of blocks (its *generation*). Each file says
which generation it was written from, and ``mirror.generation`` in the store directory,
renamed into place after all of them, says which generation the whole set has reached.
A rewrite killed halfway leaves that stamp behind the store, so the next writer that
looks (``current``) sees the lag and rewrites.
"""

from __future__ import annotations

import os

from ._perms import hand_over
from .store import Store
from .subjects import LSEARCH_FILES, lsearch_line

CDB_FILE = "blocked_subjects.cdb"
LOCK_FILE = "mirror.lock"
STAMP_FILE = "mirror.generation"
# The cdb key that holds the generation: no subject key has this namespace.
GENERATION_KEY = b"eximhook:generation"
_TMP = ".tmp."

TYPE_CHECKING = False  # typing costs ~10 ms to import; hooks come here on a blocked answer
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO


def mirror_paths(mirror_dir: str) -> list[str]:
    return [os.path.join(mirror_dir, name) for name in (*LSEARCH_FILES.values(), CDB_FILE)]


def mirrored_generation(store: Store) -> int:
    """The generation the mirror files were last completely written from (-1: never)."""
    try:
        with open(os.path.join(store.path, STAMP_FILE), "rb") as f:
            return int(f.read(32))
    except (OSError, ValueError):
        return -1


def current(store: Store, generation: int | None = None) -> bool:
    """Do the mirror files show the store's blocks? Costs a small file read."""
    return mirrored_generation(store) >= (store.generation() if generation is None else generation)


def rewrite(store: Store, mirror_dir: str, timeout: float = 10.0) -> dict[str, int]:
    """Rewrite every mirror file; returns the number of keys written per file name."""
    import cdblib
    from filelock import FileLock  # ~40 ms to import: only the rare paths get here

    lock_path = os.path.join(store.path, LOCK_FILE)
    with FileLock(lock_path, timeout=timeout, mode=0o660):
        hand_over([lock_path], store.owner)
        # only a lock holder writes temp files: any found now were left by a killed rewrite
        remove_stale_temp_files(mirror_dir, store.path)
        generation, blocks = store.read(lambda txn: (store.generation_in(txn), store.blocks_in(txn)))
        written: dict[str, int] = {}
        for ns, name in LSEARCH_FILES.items():
            keys = sorted(b["key"] for b in blocks if b["ns"] == ns)
            lines = [line for line in map(lsearch_line, keys) if line is not None]
            skipped = len(keys) - len(lines)
            header = (b"# Written by eximhook from its store; edits are lost. Use: eximhook block/unblock.\n"
                      b"# generation %d\n" % generation)
            if skipped:
                header += b"# %d key(s) too long for lsearch are in %s only.\n" % (skipped, CDB_FILE.encode())
            _replace(os.path.join(mirror_dir, name), _writer(header + b"".join(lines)), store.owner)
            written[name] = len(lines)

        def cdb_bytes(out: BinaryIO) -> None:
            writer = cdblib.Writer(out)
            writer.put(GENERATION_KEY, b"%d" % generation)
            for b in blocks:
                writer.put(f"{b['ns']}:{b['key']}".encode("utf-8", "surrogateescape"), b"1")
            writer.finalize()

        _replace(os.path.join(mirror_dir, CDB_FILE), cdb_bytes, store.owner)
        written[CDB_FILE] = len(blocks)
        _replace(os.path.join(store.path, STAMP_FILE), _writer(b"%d\n" % generation), store.owner)
    return written


def remove_stale_temp_files(*directories: str) -> list[str]:
    removed = []
    for directory in directories:
        names = {os.path.basename(p) for p in mirror_paths(directory)} | {STAMP_FILE}
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        for entry in entries:
            base, sep, pid = entry.rpartition(_TMP)
            if sep and base in names and pid.isdigit():
                try:
                    os.unlink(os.path.join(directory, entry))
                    removed.append(entry)
                except FileNotFoundError:
                    pass
    return removed


def _writer(data: bytes) -> Callable[[BinaryIO], object]:
    return lambda f: f.write(data)


def _replace(path: str, write: Callable[[BinaryIO], object], owner: tuple[int, int]) -> None:
    tmp = f"{path}{_TMP}{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        hand_over([tmp], owner)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
