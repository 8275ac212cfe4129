"""Files Exim and people read, rebuilt from the store on every block and unblock.

- ``blocked_authenticated_users`` / ``blocked_relay_users``: one quoted key a line in
  Exim's lsearch syntax, so the seeds' ``${lookup{$acl_m_user}lsearch{...}}`` and
  support staff keep working.
- ``blocked_subjects.cdb``: keys ``NS:KEY`` for the snippets' check (and the spool
  guard's threshold, ``spool.LOW_KEY``; for a blocked login, ``known:NET:USER`` for
  each network its account is known from when the file is written: ``storage.known``;
  for every account, while all logins are blocked),
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
import struct

from ..errors import FileError, UnsafePath
from ..model import spool
from ..model.subjects import LSEARCH_FILES, lsearch_line
from ..perms import TMP, Dir, Locked, read_file, replace_files
from .known import everyone_in, networks_in
from .store import Store

CDB_FILE = "blocked_subjects.cdb"
LOCK_FILE = "mirror.lock"
STAMP_FILE = "mirror.generation"
# The cdb key that holds the generation: no subject key has this namespace.
GENERATION_KEY = b"eximhook:generation"
# A network a blocked login may still log in from: no namespace is called "known"; the
# network (Exim's ${mask:} form, no colon) ends at the second colon, whatever the user
KNOWN_PREFIX = "known:"
# A customer's member, NS:KEY, and whether an authenticated user's domain is its customer
# (``engine.customers``): no namespace is called "member"
MEMBER_PREFIX, BY_DOMAIN_KEY = b"member:", b"eximhook:by-domain"
_MEMBER = struct.Struct(">HB")  # the lengths of NS:KEY (at most 16 KiB and a bit) and of the customer id

TYPE_CHECKING = False  # typing costs ~10 ms to import; hooks come here on a blocked answer
if TYPE_CHECKING:
    from typing import Any

    from ..log import Logger


def mirror_paths(mirror_dir: str) -> list[str]:
    return [os.path.join(mirror_dir, name) for name in (*LSEARCH_FILES.values(), CDB_FILE)]


def mirrored_generation(store: Store) -> int:
    """The generation the mirror files were last completely written from (-1: never)."""
    try:
        return int(read_file(os.path.join(store.path, STAMP_FILE), 32))
    except (OSError, ValueError, UnsafePath):
        return -1


def current(store: Store, generation: int | None = None) -> bool:
    """Do the mirror files show the store's blocks? Costs a small file read."""
    return mirrored_generation(store) >= (store.generation() if generation is None else generation)


def rewrite(store: Store, mirror_dir: str, timeout: float = 10.0, if_behind: bool = False) -> dict[str, int]:
    """Rewrite every mirror file; returns the number of keys written per file name
    (nothing, with ``if_behind``, when another process brought it up to date first)."""
    import time

    from . import cdb

    now = time.time()
    lock_path = os.path.join(store.path, LOCK_FILE)
    try:
        with Locked(lock_path, timeout, store.owner):
            # only a lock holder writes temp files: any found now were left by a killed rewrite
            remove_stale_temp_files(mirror_dir, store.path)
            generation, blocks, floor, known, members = store.read(lambda txn: (
                store.generation_in(txn), store.blocks_in(txn), store.spool_floor_in(txn),
                everyone_in(store, txn, now) if store.blocks_in(txn, "all") else
                [(b["key"], networks_in(store, txn, b["key"], now)) for b in store.blocks_in(txn, "login")],
                store.mirrored_in(txn, b"customers")))
            if if_behind and current(store, generation):
                return {}
            files: list[tuple[str, bytes]] = []
            written: dict[str, int] = {}
            for ns, name in LSEARCH_FILES.items():
                keys = sorted(b["key"] for b in blocks if b["ns"] == ns)
                lines = [line for line in map(lsearch_line, keys) if line is not None]
                skipped = len(keys) - len(lines)
                header = (b"# Written by eximhook from its store; edits are lost. Use: eximhook block/unblock.\n"
                          b"# generation %d\n" % generation)
                if skipped:
                    header += b"# %d key(s) too long for lsearch are in %s only.\n" % (skipped, CDB_FILE.encode())
                files.append((os.path.join(mirror_dir, name), header + b"".join(lines)))
                written[name] = len(lines)
            writer = cdb.Writer()
            writer.put(GENERATION_KEY, b"%d" % generation)
            writer.put(spool.LOW_KEY, b"%d" % spool.threshold(blocks, floor))
            for b in blocks:
                writer.put(f"{b['ns']}:{b['key']}".encode("utf-8", "surrogateescape"), b"1")
            for user, networks in known:  # where a blocked login may still log in (EXIMHOOK_ALLOWED_*)
                for net in networks:
                    writer.put(f"{KNOWN_PREFIX}{net}:{user}".encode("utf-8", "surrogateescape"), b"1")
            by_domain, listed = unpack_members(members)  # whose customer is blocked (EXIMHOOK_CUSTOMER_*)
            writer.put(BY_DOMAIN_KEY, b"%d" % by_domain)
            for subject, customer in listed:
                writer.put(MEMBER_PREFIX + subject, customer)
            files.append((os.path.join(mirror_dir, CDB_FILE), writer.finish()))
            written[CDB_FILE] = len(blocks)
            replace_files(files, store.owner)
            # last: a rewrite killed before this line is seen as behind, and done again
            replace_files([(os.path.join(store.path, STAMP_FILE), b"%d\n" % generation)], store.owner)
    except cdb.TooLarge as exc:
        raise cdb.TooLarge(f"cannot write {os.path.join(mirror_dir, CDB_FILE)}: {exc}") from exc
    except TimeoutError as exc:
        raise LockBusy(f"could not lock {lock_path} within {timeout:g}s: another rewrite holds it") from exc
    except OSError as exc:
        where = exc.filename or f"the mirror files in {mirror_dir}"
        raise FileError(f"cannot write {where} ([store] mirror_dir): {exc.strerror}") from exc
    return written



def pack_members(by_domain: bool, entries: dict[tuple[str, str], str]) -> bytes:
    """Customers' members as the store keeps them for the mirror (``unpack_members``)."""
    out = [b"%d" % by_domain]
    for (ns, key), customer in sorted(entries.items()):
        subject, cid = f"{ns}:{key}".encode("utf-8", "surrogateescape"), customer.encode()
        out.append(_MEMBER.pack(len(subject), len(cid)) + subject + cid)
    return b"".join(out)


def unpack_members(data: bytes | None) -> tuple[bool, list[tuple[bytes, bytes]]]:
    """(by_domain, [(NS:KEY, customer)]) from ``pack_members``; nothing handed over yet:
    domains are customers (the default), none listed."""
    if not data:
        return True, []
    out, pos = [], 1
    while pos + _MEMBER.size <= len(data):
        n, m = _MEMBER.unpack_from(data, pos)
        pos += _MEMBER.size
        out.append((data[pos : pos + n], data[pos + n : pos + n + m]))
        pos += n + m
    return data[:1] == b"1", out

class LockBusy(FileError):
    """Another process holds the mirror lock: it is rewriting the mirror right now."""


def state(store: Store, mirror_dir: str) -> dict[str, Any]:
    """What the mirror files say about themselves, for ``eximhook status``: the stamp,
    each file's generation (None: missing or unreadable) and leftover temp files."""
    from . import cdb

    files: dict[str, int | None] = {}
    for path in mirror_paths(mirror_dir):
        name = os.path.basename(path)
        try:
            data = read_file(path)
            if name == CDB_FILE:
                files[name] = int(cdb.get(data, GENERATION_KEY) or b"")  # missing: ValueError
            else:
                files[name] = int(data.split(b"\n", 2)[1].removeprefix(b"# generation "))
        except (OSError, ValueError, IndexError, UnsafePath, cdb.Corrupt):
            files[name] = None
    return {"stamp": mirrored_generation(store), "files": files,
            "temp_files": temp_files(mirror_dir, store.path)}


def temp_files(*directories: str) -> list[str]:
    """Temp files of mirror rewrites (``NAME.tmp.PID``) in ``directories``."""
    found = []
    for directory in directories:
        names = {os.path.basename(p) for p in mirror_paths(directory)} | {STAMP_FILE}
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        for entry in entries:
            base, sep, pid = entry.rpartition(TMP)
            if sep and base in names and pid.isdigit():
                found.append(os.path.join(directory, entry))
    return found


def remove_stale_temp_files(*directories: str) -> None:
    for directory in directories:
        found = temp_files(directory)
        if found:
            with Dir(directory) as d:
                for path in found:
                    d.unlink(os.path.basename(path))


def refresh(store: Store, mirror_dir: str, log: Logger, *, force: bool = False, wait: float = 0.0) -> bool:
    """Bring the mirror files up to the store's generation (always, with ``force``);
    whether they are there now (False: the failure is logged).

    For hooks, the daemon and maintenance, after a trip or on finding the mirror behind:
    the block is stored already and the answer stays 1, so a mirror that cannot be
    written is logged for the admin (and retried by the next writer that looks), never
    raised. Without ``force`` a lock held past ``wait`` means another process is
    rewriting right now (typically the one that tripped, while the bot's other
    connections find the stamp behind): this one answers instead of queueing behind it.
    """
    try:
        if force:
            rewrite(store, mirror_dir, timeout=max(wait, 1.0))
        elif not current(store):
            # done means: up to the generation found under the lock (or another process got
            # there first); a change committed since is for its maker to mirror, no failure
            rewrite(store, mirror_dir, timeout=wait, if_behind=True)
        return True
    except LockBusy:
        if force:
            log.log("err", f"could not rewrite the mirror files in {mirror_dir}: another process holds the lock; "
                           "the next event, eximhook maintain or 'eximhook export' will rewrite them")
    except Exception as exc:
        log.log("err", f"could not rewrite the mirror files in {mirror_dir}: {exc}; "
                       "the next event, eximhook maintain or 'eximhook export' will rewrite them")
    return False
