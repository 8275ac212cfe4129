"""An LMDB environment as eximhook uses it, twice: the synced store of records
(``store.Store``) and the unsynced counters (``counters.Counters``).

What both need: a directory the Exim user can write when root created it, a lock file
allocated before LMDB maps it, a retry loop for a full map, and errors that say what
failed without repeating the path. A full map doubles (the store: records are never
dropped), or, for an environment with a ``budget`` (the counters), never grows past it:
the environment makes room (``make_room``) and the transaction is tried again.
Work is a *body*, a function of one transaction, run by ``update`` (one),
``update_many`` (a batch in one transaction, each body in a nested one) or ``read``.
"""

from __future__ import annotations

import _thread
import fcntl
import os

import lmdb

from ..errors import StoreUnavailable, UnsafePath
from ..perms import Dir, resolve_owner

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
PAGE = os.sysconf("SC_PAGE_SIZE")  # LMDB's page size: the OS's


def reason(exc: BaseException, path: str, d: Dir | None = None) -> str:
    """The error without the path the caller names already (or LMDB was given: ``d``)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    for given in (path, *((d.proc,) if d is not None else ())):
        text = text.removeprefix(f"{given}: ").removeprefix(f"{given}/")
    return text


def _allocate_lock_file(fd: int) -> None:
    st = os.fstat(fd)
    size = max(st.st_size, _LOCK_BYTES)
    if st.st_blocks * 512 < size:  # new, or sparse: once per environment
        os.posix_fallocate(fd, 0, size)


def _open_lmdb(d: Dir, owner: tuple[int, int], **options: Any) -> tuple[Any, list[int], int | None]:
    """lmdb.open() of the directory ``d``, never through a symlink another user planted
    (issue 21); the environment, descriptors to close once it is closed, and among them
    the one of ``lock.mdb`` that its open and close hold (``_one_at_a_time``).

    LMDB opens ``data.mdb`` and ``lock.mdb`` by name, following symlinks and creating
    what is missing, and py-lmdb takes no descriptors. So it gets a path that leaves it
    nothing to follow: in a directory only root or we can change (the hooks, as the
    Exim user, in the spool), the directory's own descriptor (``Dir.proc``). In one
    another user can change (root in the Exim user's spool), where that user could swap a
    file for a symlink between any check and LMDB's open, the two files are opened here
    first (``Dir.open``: no symlink, a regular file with one link, owned as it should
    be) and LMDB is given a private directory of root's whose two entries are
    ``/proc/self/fd/N`` of those descriptors: the kernel resolves them to exactly the
    files checked, whatever has been renamed since. Those descriptors stay open as long
    as the environment: closing a descriptor of ``lock.mdb`` would drop every POSIX lock
    this process holds on it, LMDB's own included.
    """
    readonly = bool(options.get("readonly"))
    files = []
    lock: int | None = None
    try:
        if not d.trusted or (not readonly and os.geteuid() == 0):  # checked, or to be handed to owner
            # readonly (eximhook status) makes no data file, as LMDB would not
            files.append(d.open("data.mdb", os.O_RDONLY if readonly else os.O_RDWR | os.O_CREAT, 0o640,
                                None if readonly else owner))
        if not d.trusted or not readonly:
            lock = d.open("lock.mdb", os.O_RDWR | os.O_CREAT, 0o640, None if readonly else owner)
        else:  # to look: no lock file means nobody has the environment open, nothing to wait for
            try:
                lock = d.open("lock.mdb", os.O_RDONLY)
            except FileNotFoundError:
                pass
        if lock is not None:
            files.append(lock)
        if not readonly:
            _allocate_lock_file(files[-1])
        if d.trusted:
            for fd in files:  # data.mdb's is done with (before LMDB opens it: see above)
                if fd != lock:
                    os.close(fd)
            path = d.proc
            files = [] if lock is None else [lock]
            return _one_at_a_time(lock, lambda: lmdb.open(path, **options)), files, lock
        import tempfile

        # root's own 0700 directory, held by descriptor too: nobody else can change its entries
        private = tempfile.mkdtemp(prefix="eximhook-lmdb.")
        with Dir(private) as p:
            try:
                for name, fd in zip(("data.mdb", "lock.mdb"), files, strict=True):
                    os.symlink(f"/proc/self/fd/{fd}", name, dir_fd=p.fd)
                return _one_at_a_time(lock, lambda: lmdb.open(p.proc, **options)), files, lock
            finally:
                for name in ("data.mdb", "lock.mdb"):
                    p.unlink(name)
                os.rmdir(private)
    except BaseException:
        for fd in files:
            try:
                os.close(fd)
            except OSError:
                pass
        raise


def _one_at_a_time(lock: int | None, step: Callable[[], T]) -> T:
    """Run ``step`` (LMDB's open or close of an environment) while no other process of
    ours opens or closes it: ``flock`` on ``lock.mdb``, apart from LMDB's own fcntl locks.

    LMDB 0.9.26 to 0.9.31 (Debian 13's liblmdb0 is 0.9.31; PyPI's lmdb bundles them up to
    1.6) destroy the lock file's mutexes when the last process closes the environment,
    holding the file's exclusive lock; a process opening it meanwhile waits for a shared
    lock, then takes the destroyed mutexes for live ones, and its every transaction fails
    with EINVAL ("mdb_txn_begin: Invalid argument"). With a hook a process, that is the
    lost counts of a burst of them. 0.9.32 dropped the destroy (ITS#10095)."""
    if lock is None:
        return step()
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        return step()
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)


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
                 sync: bool, config_key: str, readonly: bool = False, budget: int | None = None) -> None:
        self.path, self.dbs, self.config_key = path, dbs, config_key
        # LMDB maps whole pages: a budget is a number of them, and the map starts there
        self.budget = None if budget is None else max(budget - budget % PAGE, PAGE)
        map_size = map_size if self.budget is None else self.budget
        self._guard = _ResizeGuard()
        self._handles: dict[bytes, Any] = {}
        self._files: list[int] = []  # descriptors _open_lmdb keeps for the environment
        self._mdb_lock: int | None = None  # among them, lock.mdb's (_one_at_a_time)
        d: Dir | None = None
        verb = "read" if readonly else "open"
        try:
            # before the directory is made: root must not own it
            self.owner = resolve_owner(owner, path)
            d = Dir(path, create=not readonly)
            options: dict[str, Any] = {"map_size": map_size, "max_dbs": len(dbs), "max_readers": MAX_READERS,
                                       "subdir": True}
            if readonly:  # to look, changing nothing (eximhook status): no directory, file or database made
                self.env, self._files, self._mdb_lock = _open_lmdb(d, self.owner, readonly=True, create=False,
                                                               **options)
                self.read(lambda txn: [self.env.open_db(name, txn=txn, create=False) for name in dbs])
                return
            d.hand_over(self.owner)
            self.prepare(d)
            # mode: the files get 0640 (LMDB takes away the x bits): keys and evidence are
            # user names and addresses, not for every local user to read
            self.env, self._files, self._mdb_lock = _open_lmdb(d, self.owner, mode=0o750, readahead=False,
                                                           meminit=False, metasync=False, sync=sync, **options)
            self._create_dbs()
        except UnsafePath as exc:
            self._close_env()
            raise UnsafePath(f"cannot {verb} {self.what} {path} ({config_key}): {exc}") from None
        except (lmdb.Error, OSError, KeyError) as exc:
            self._close_env()
            raise StoreUnavailable(f"cannot {verb} {self.what} {path} ({config_key}): "
                                   f"{reason(exc, path, d)}") from exc
        except BaseException:
            self._close_env()
            raise
        finally:
            if d is not None:
                d.close()

    def prepare(self, directory: Dir) -> None:
        """Before LMDB opens the directory (the counters check their boot here); work in
        it through ``directory`` (``perms``: no link followed that another user made)."""

    def make_room(self) -> bool:
        """The map is full at its ``budget``: drop what may go, in transactions of its
        own (the caller's locks are held); True if anything went. Nothing may go here."""
        return False

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
            self._close_env()
        finally:
            self._guard.idle.release()

    def _close_env(self) -> None:
        env = getattr(self, "env", None)
        if env is not None:
            _one_at_a_time(self._mdb_lock, env.close)
        for fd in self._files:  # after LMDB's: see _open_lmdb
            os.close(fd)
        self._files, self._mdb_lock = [], None

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
            at_budget = False
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
                    size = self.env.info()["map_size"]
                    at_budget = self.budget is not None and size >= self.budget
                    if not at_budget:
                        self.env.set_mapsize(size * 2 if self.budget is None else min(size * 2, self.budget))
                elif isinstance(problem, lmdb.MapResizedError):
                    self.env.set_mapsize(0)  # another process grew the map: adopt its size
                else:
                    self.env.reader_check()  # slots of processes that died (watchdog, kill -9)
            finally:
                self._guard.idle.release()
            if at_budget and not self.make_room():
                raise StoreUnavailable(f"{self.what} {self.path}: full at its budget of {self.budget} bytes, and "
                                       "no room could be made")
        raise StoreUnavailable(f"{self.what} {self.path}: gave up after {_TRIES} tries: the map "
                               f"([store] map_size) could not grow enough, or the reader table stayed full")
