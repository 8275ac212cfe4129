"""An LMDB environment as eximhook uses it, twice: the synced store of records
(``store.Store``) and the unsynced counters (``counters.Counters``).

What both need: a directory the Exim user can write when root created it, a lock file
allocated before LMDB maps it, a retry loop that grows a full map, and errors that say
what failed without repeating the path. Work is a *body*, a function of one
transaction, run by ``update`` (one), ``update_many`` (a batch in one transaction,
each body in a nested one) or ``read``.
"""

from __future__ import annotations

import _thread
import os

import lmdb

from ._perms import hand_over, resolve_owner
from .errors import StoreUnavailable

TYPE_CHECKING = False  # typing costs ~10 ms to import on the hooks' path
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, TypeVar

    T = TypeVar("T")

_TRIES = 8  # each retry doubles a full map, or frees reader slots of dead processes
# One reader slot per process that has the environment open: every Exim process running
# a hook at the same moment, plus the admin. LMDB's default is 126.
MAX_READERS = 1024
# LMDB writes its lock file through a shared mmap, one 64-byte slot per reader after a
# header (65,664 bytes for 1024 readers). A page of it first touched when the disk is
# full is a SIGBUS, not an error: a hook would die without its token, the daemon would
# crash. So the file is allocated in full before LMDB maps it.
_LOCK_BYTES = 80 * 1024


def reason(exc: BaseException, path: str) -> str:
    """The error without the path the caller names already."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).removeprefix(f"{path}: ").removeprefix(f"{path}/")


def _allocate_lock_file(path: str) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o640)
    try:
        st = os.fstat(fd)
        size = max(st.st_size, _LOCK_BYTES)
        if st.st_blocks * 512 < size:  # new, or sparse: once per environment
            os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


class _ResizeGuard:
    """Transactions of this process share it; a map resize takes it alone.

    LMDB forbids set_mapsize() while any transaction of the process is open, and the
    daemon runs transactions in several threads. A plain lock would serialise them all:
    the event loop's reads would wait behind a write stuck on another process's writer
    lock. Here the first transaction in takes ``idle`` and the last one out frees it.
    """

    def __init__(self) -> None:
        self.count_lock = _thread.allocate_lock()
        self.idle = _thread.allocate_lock()  # held while transactions run, or a resize
        self.count = 0

    def enter(self) -> None:
        with self.count_lock:
            if self.count == 0:
                self.idle.acquire()  # waits only for a resize in progress
            self.count += 1

    def leave(self) -> None:
        with self.count_lock:
            self.count -= 1
            if self.count == 0:
                self.idle.release()


class Env:
    """An open LMDB environment with the named databases ``dbs``."""

    what = "store"  # for messages: which of the two environments failed

    def __init__(self, path: str, dbs: tuple[bytes, ...], *, map_size: int, owner: str | None,
                 sync: bool, config_key: str, readonly: bool = False) -> None:
        self.path, self.dbs, self.config_key = path, dbs, config_key
        self._guard = _ResizeGuard()
        self._handles: dict[bytes, Any] = {}
        if readonly:  # to look, changing nothing (eximhook status): no directory, file or database made
            try:
                self.owner = resolve_owner(owner, path)
                self.env = lmdb.open(path, map_size=map_size, max_dbs=len(dbs), max_readers=MAX_READERS,
                                     subdir=True, readonly=True, create=False)
                self.read(lambda txn: [self.env.open_db(name, txn=txn, create=False) for name in dbs])
            except (lmdb.Error, OSError, KeyError) as exc:
                raise StoreUnavailable(f"cannot read {self.what} {path} ({config_key}): {reason(exc, path)}") from exc
            return
        try:
            self.owner = resolve_owner(owner, path)  # before makedirs: root must not own the new dir
            os.makedirs(path, mode=0o750, exist_ok=True)
            self.prepare()
            _allocate_lock_file(os.path.join(path, "lock.mdb"))
            # mode: the files get 0640 (LMDB takes away the x bits): keys and evidence are
            # user names and addresses, not for every local user to read
            self.env = lmdb.open(path, map_size=map_size, max_dbs=len(dbs), max_readers=MAX_READERS, mode=0o750,
                                 subdir=True, readahead=False, meminit=False, metasync=False, sync=sync)
        except (lmdb.Error, OSError, KeyError) as exc:
            raise StoreUnavailable(f"cannot open {self.what} {path} ({config_key}): {reason(exc, path)}") from exc
        try:
            self._create_dbs()
            hand_over([path, *(os.path.join(path, f) for f in ("data.mdb", "lock.mdb"))], self.owner)
        except OSError as exc:
            self.env.close()
            raise StoreUnavailable(f"cannot open {self.what} {path} ({config_key}): {reason(exc, path)}") from exc
        except StoreUnavailable:
            self.env.close()
            raise

    def prepare(self) -> None:
        """Before LMDB opens the directory (the counters check their boot here)."""

    def _create_dbs(self) -> None:
        def missing(txn: lmdb.Transaction) -> bool:
            try:
                for name in self.dbs:
                    self.env.open_db(name, txn=txn, create=False)
            except lmdb.NotFoundError:
                return True
            return False

        if self.read(missing):
            # a new environment, or one from an older eximhook without every database:
            # the only write an open needs, inside the retry loop so a small map grows
            self.update(lambda txn: [self.env.open_db(name, txn=txn) for name in self.dbs])

    def db(self, txn: lmdb.Transaction, name: bytes) -> Any:
        # A hook opens the handles each transaction uses (a B-tree lookup, microseconds):
        # py-lmdb aborts read transactions, which closes handles opened in them, and
        # open_db() without a transaction takes the *writer* lock, holding the GIL,
        # which would queue every hook behind any writer and stall the watchdog.
        handle = self._handles.get(name)
        return handle if handle is not None else self.env.open_db(name, txn=txn, create=False)

    def keep_handles(self) -> None:
        """For a long-lived process (the daemon): open every database once, in a write
        transaction that commits, so the handles last as long as the environment."""
        self._handles = self.update(lambda txn: {name: self.env.open_db(name, txn=txn) for name in self.dbs})

    def close(self) -> None:
        self._guard.idle.acquire()
        try:
            self.env.close()
        finally:
            self._guard.idle.release()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions -----------------------------------------------------------

    def update(self, body: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``body`` in one write transaction, growing the map when it is full.

        ``body`` may run more than once (after MapFullError), so it must not have side
        effects outside the transaction.
        """
        return self._transact(body, write=True)

    def update_many(self, bodies: Sequence[Callable[[lmdb.Transaction], Any]]) -> list[Any]:
        """Run ``bodies`` in one write transaction: one commit for all.

        Each body runs in a nested transaction, so one that raises leaves nothing
        behind, and its exception stands in its place in the returned list while the
        others commit. LMDB errors (a full map) retry the whole batch.
        """
        def batch(txn: lmdb.Transaction) -> list[Any]:
            out: list[Any] = []
            for body in bodies:
                child = self.env.begin(write=True, parent=txn)
                try:
                    out.append(body(child))
                except lmdb.Error:
                    child.abort()
                    raise
                except Exception as exc:
                    child.abort()
                    out.append(exc)
                else:
                    child.commit()
            return out
        return self._transact(batch, write=True)

    def read(self, body: Callable[[lmdb.Transaction], T], wait: bool = True) -> T:
        """``wait=False``: never wait for another thread's transaction (the daemon's event
        loop); if the map must be resized first, fail instead (``StoreUnavailable``)."""
        return self._transact(body, write=False, wait=wait)

    def sync(self) -> None:
        """Flush everything to disk, the meta page included (``metasync=False`` leaves the
        last commit undoable by a power cut until the next one)."""
        self._guard.enter()
        try:
            self.env.sync(True)
        except lmdb.Error as exc:
            raise StoreUnavailable(f"{self.what} {self.path}: {reason(exc, self.path)}") from exc
        finally:
            self._guard.leave()

    def _transact(self, body: Callable[[lmdb.Transaction], T], write: bool, wait: bool = True) -> T:
        for _ in range(_TRIES):
            self._guard.enter()
            try:
                with self.env.begin(write=write) as txn:
                    return body(txn)
            except (lmdb.MapFullError, lmdb.MapResizedError, lmdb.ReadersFullError) as exc:
                problem = exc
            except lmdb.Error as exc:
                raise StoreUnavailable(f"{self.what} {self.path}: {reason(exc, self.path)}") from exc
            finally:
                self._guard.leave()
            # a resize must wait until no transaction of this process is open
            if not self._guard.idle.acquire(wait):
                raise StoreUnavailable(f"{self.what} {self.path}: another thread's transaction holds up "
                                       f"a map resize ({type(problem).__name__}); try again")
            try:
                if isinstance(problem, lmdb.MapFullError):
                    self.env.set_mapsize(self.env.info()["map_size"] * 2)
                elif isinstance(problem, lmdb.MapResizedError):
                    self.env.set_mapsize(0)  # another process grew the map: adopt its size
                else:
                    self.env.reader_check()  # slots of processes that died (watchdog, kill -9)
            finally:
                self._guard.idle.release()
        raise StoreUnavailable(f"{self.what} {self.path}: gave up after {_TRIES} tries: the map "
                               f"([store] map_size) could not grow enough, or the reader table stayed full")
