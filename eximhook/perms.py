"""Keep files usable by the Exim user when root creates them, and keep root from
following what that user planted.

Admin commands run as root, hooks as the Exim user. A store, lock or mirror file that
root creates would lock Exim out, so every file eximhook creates as root is handed to
the owner of the directory it lives in (the Exim spool belongs to the Exim user), or to
the ``store.owner`` setting. ``replace_files`` writes files other processes read (the
mirror, the counters' boot stamp, the health state) so that they are never seen half
written, and hands them over on the way.

Root works in directories the Exim user owns (the spool, /var/log/exim4, /run/eximhook),
where that user can put a symlink or a hard link at any name at any moment, and
``fs.protected_symlinks`` does not help (it covers sticky directories only). A root that
opened such a name by path would append to, create or chown whatever it points at
(issue 21). So every file here is reached by ``_walk``: one component at a time from
``/``, on descriptors, following a symlink only where the directory that holds it is
*trusted* (only root, or the user we run as, can change it: then the link is root's or
ours); in any other directory a symlink is refused (``UnsafePath``). The last name is
then opened with ``O_NOFOLLOW`` relative to the descriptor of its directory, so a swap
made after a check is never followed either: the kernel resolves nothing by name that
another user could have changed in between. A file opened in an untrusted directory must
also be a regular file (not a FIFO to hang on) with one link (no hard link to somebody
else's file), owned by root, the directory's owner, us or the owner it is meant for.
"""

from __future__ import annotations

import os
import stat

from .errors import UnsafePath

TMP = ".tmp."  # PATH.tmp.PID: replace_files' temp files, which mirror.temp_files recognises
_LINKS = 40  # symlinks followed in one path at most (the kernel's own limit)
_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC  # a handle on a directory entry: nothing is read or followed


def resolve_owner(spec: str | None, directory: str) -> tuple[int, int]:
    """(uid, gid) from ``user[:group]``, else from ``directory`` or its parent."""
    if spec:
        import grp
        import pwd

        user, _, group = spec.partition(":")
        pw = pwd.getpwnam(user)
        return pw.pw_uid, grp.getgrnam(group).gr_gid if group else pw.pw_gid
    path = directory
    while not os.path.isdir(path):
        path = os.path.dirname(path) or "."
    st = os.stat(path)
    return st.st_uid, st.st_gid


def trusted(st: os.stat_result) -> bool:
    """Can only root, or the user we run as, change what is in this directory?"""
    return st.st_uid in (0, os.geteuid()) and not st.st_mode & 0o022


def _who(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _symlink_refused(path: str, directory: os.stat_result) -> UnsafePath:
    return UnsafePath(f"{path} is a symlink in a directory that {_who(directory.st_uid)} can write: not followed "
                      "(one you made: name the real path in the config; one you did not: remove it, "
                      "and find out who did)")


def _walk(path: str, create: bool, start: Dir | None = None) -> tuple[int, str | None]:
    """(an O_PATH descriptor of the directory that holds ``path``'s last entry, that
    entry's name; None for ``/``), every symlink on the way resolved as the module says,
    the last entry's too when its directory is trusted. A relative ``path`` starts at
    ``start`` (else the working directory). ``create``: directories missing on the way
    are made (0750), as os.makedirs. The caller closes the descriptor."""
    if start is None and not path.startswith("/"):
        path = os.path.join(os.getcwd(), path)
    names = [n for n in path.split("/") if n and n != "."]
    if start is None or path.startswith("/"):
        fd, where = os.open("/", _PATH | os.O_DIRECTORY), ""  # where: for messages
    else:
        fd, where = os.dup(start.fd), start.path
    links = 0
    try:
        while names:
            name = names.pop(0)
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not names:
                    return fd, name  # the caller makes it, or not
                if not create:
                    raise FileNotFoundError(2, os.strerror(2), f"{where}/{name}") from None
                try:
                    os.mkdir(name, 0o750, dir_fd=fd)
                except FileExistsError:
                    pass
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                here = os.fstat(fd)
                if not trusted(here):
                    raise _symlink_refused(f"{where}/{name}", here)
                links += 1
                if links > _LINKS:
                    raise OSError(40, os.strerror(40), path)  # ELOOP
                # trusted: only root or we could have made the link, or could change it now
                target = os.readlink(name, dir_fd=fd)
                names[:0] = [n for n in target.split("/") if n and n != "."]
                if target.startswith("/"):
                    os.close(fd)
                    fd, where = os.open("/", _PATH | os.O_DIRECTORY), ""
                continue
            if not names:
                return fd, name
            # O_NOFOLLOW: an entry swapped for a symlink since the stat fails here (ENOTDIR)
            nxt = os.open(name, _PATH | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, where = nxt, f"{where}/{name}"
        return fd, None
    except BaseException:
        os.close(fd)
        raise


class Dir:
    """A directory reached as the module says, held by an O_PATH descriptor: the names
    in it are opened, replaced and removed relative to that, never by path again."""

    __slots__ = ("fd", "path", "st")

    def __init__(self, path: str, create: bool = False) -> None:
        """``create``: made (0750) with the directories missing above it."""
        self.path = path
        parent, name = _walk(path, create)
        if name is None:
            self.fd = parent
        else:
            try:
                if create:
                    try:
                        os.mkdir(name, 0o750, dir_fd=parent)
                    except FileExistsError:
                        pass
                self.fd = os.open(name, _PATH | os.O_DIRECTORY, dir_fd=parent)
            except OSError as exc:
                if exc.errno in (20, 40) and _is_link(parent, name):  # ENOTDIR, ELOOP: swapped since _walk
                    raise _symlink_refused(path, os.fstat(parent)) from None
                raise OSError(exc.errno, exc.strerror, path) from None
            finally:
                os.close(parent)
        self.st = os.fstat(self.fd)

    @property
    def trusted(self) -> bool:
        return trusted(self.st)

    @property
    def proc(self) -> str:
        """A path to exactly this directory, for APIs that take paths (LMDB): the kernel
        resolves it through the descriptor, whatever has been renamed since."""
        return f"/proc/self/fd/{self.fd}"

    def open(self, name: str, flags: int, mode: int = 0o640, owner: tuple[int, int] | None = None) -> int:
        """``os.open`` of ``name`` here, never through a symlink another user could have
        planted (``UnsafePath``). With ``O_CREAT`` a new file gets ``mode`` whatever the
        umask; root hands the file to ``owner``. No ``O_TRUNC``: it would cut a file
        before it is checked."""
        assert not flags & os.O_TRUNC
        path = os.path.join(self.path, name)
        try:
            return Dir._open_in(self.fd, name, path, flags, mode, owner)
        except UnsafePath:  # in a trusted directory only for a symlink
            if not self.trusted:
                raise
        # a link in a directory that only root or we can change: root's or ours, followed as _walk does
        fd, leaf = _walk(name, False, start=self)
        try:
            return Dir._open_in(fd, leaf or ".", path, flags, mode, owner)
        finally:
            os.close(fd)

    @staticmethod
    def _open_in(dir_fd: int, name: str, path: str, flags: int, mode: int, owner: tuple[int, int] | None) -> int:
        base = flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: a FIFO must not hang us
        created, fd = False, -1
        for _ in range(3):  # removed between the two opens (logrotate): try again
            try:
                if flags & os.O_CREAT:
                    try:
                        fd = os.open(name, base | os.O_EXCL, mode, dir_fd=dir_fd)
                        created = True
                        break
                    except FileExistsError:
                        pass
                fd = os.open(name, base & ~os.O_CREAT, dir_fd=dir_fd)
                break
            except FileNotFoundError:
                if not flags & os.O_CREAT:
                    raise FileNotFoundError(2, os.strerror(2), path) from None
            except OSError as exc:
                if exc.errno == 40:  # ELOOP: O_NOFOLLOW met a symlink
                    raise _symlink_refused(path, os.fstat(dir_fd)) from None
                raise OSError(exc.errno, exc.strerror, path) from None
        if fd < 0:
            raise FileNotFoundError(2, os.strerror(2), path)
        try:
            st, where = os.fstat(fd), os.fstat(dir_fd)
            if not trusted(where):
                allowed = {0, where.st_uid, os.geteuid(), *(owner[:1] if owner else ())}
                what = ("is not a regular file" if not stat.S_ISREG(st.st_mode) else
                        f"has {st.st_nlink} hard links" if st.st_nlink > 1 else
                        f"belongs to {_who(st.st_uid)}" if st.st_uid not in allowed else None)
                if what:
                    raise UnsafePath(f"{path} {what}, in a directory that {_who(where.st_uid)} can write: "
                                     "not opened")
            if created:
                os.fchmod(fd, mode)  # whatever the umask (hooks and the daemon run with 077)
            if owner is not None and os.geteuid() == 0 and (st.st_uid, st.st_gid) != owner:
                os.fchown(fd, *owner)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read(self, name: str, limit: int = -1) -> bytes:
        """The file's bytes (the first ``limit`` of them)."""
        fd = self.open(name, os.O_RDONLY)
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read(limit)
        finally:
            os.close(fd)

    def unlink(self, name: str) -> None:
        """Remove the entry ``name`` (a symlink itself, never what it points at), if there."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def hand_over(self, owner: tuple[int, int]) -> None:
        """chown this directory to ``owner`` when running as root and it is not theirs."""
        if os.geteuid() == 0 and (self.st.st_uid, self.st.st_gid) != owner:
            os.chown(self.proc, *owner)  # through the descriptor: exactly the directory checked
            self.st = os.fstat(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Dir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_file(path: str, flags: int, mode: int = 0o640, owner: tuple[int, int] | None = None) -> int:
    """``Dir.open`` of ``path``'s last name in its directory."""
    with Dir(os.path.dirname(path) or ".") as d:
        return d.open(os.path.basename(path), flags, mode, owner)


def read_file(path: str, limit: int = -1) -> bytes:
    """``Dir.read`` of ``path``'s last name in its directory."""
    with Dir(os.path.dirname(path) or ".") as d:
        return d.read(os.path.basename(path), limit)


def remove(path: str) -> None:
    """Remove ``path`` (a symlink itself, never what it points at), if it is there."""
    try:
        d = Dir(os.path.dirname(path) or ".")
    except FileNotFoundError:
        return
    with d:
        d.unlink(os.path.basename(path))


class Locked:
    """``with Locked(path, timeout, owner):`` holds an exclusive flock on ``path``
    (made 0660, handed to ``owner`` by root), opened as ``Dir.open`` does; TimeoutError
    when another process holds it for ``timeout`` seconds. flock, as filelock takes it:
    a holder of either kind excludes the other."""

    def __init__(self, path: str, timeout: float, owner: tuple[int, int] | None = None) -> None:
        self.path, self.timeout, self.owner, self.fd = path, timeout, owner, -1

    def __enter__(self) -> Locked:
        import fcntl
        import time

        fd = open_file(self.path, os.O_RDWR | os.O_CREAT, 0o660, self.owner)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise TimeoutError(f"{self.path}: held by another process for {self.timeout:g}s") from None
                time.sleep(0.05)
            except BaseException:
                os.close(fd)
                raise
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing the only descriptor releases the flock
        self.fd = -1


def replace_files(files: list[tuple[str, bytes]], owner: tuple[int, int] | None = None,
                  mode: int | None = None) -> None:
    """Write every file to a temp file (``PATH.tmp.PID``) and fsync it, then rename them
    all, one right after the other: a reader sees the files change as close to together
    as renames allow, and never half a file. Root hands each to ``owner`` first; ``mode``,
    if given, is set whatever the umask; on a failure no temp file is left.

    Each temp file is new (``O_EXCL``: whatever is found at its name, a symlink or a hard
    link someone put there, is removed, never written through) and renamed in the
    directory the descriptor holds: a symlink at the final name is replaced, not followed."""
    temps: list[tuple[Dir, str, str]] = []  # (directory, temp name, name)
    try:
        for path, data in files:
            d = Dir(os.path.dirname(path) or ".")
            name = os.path.basename(path)
            tmp = f"{name}{TMP}{os.getpid()}"
            temps.append((d, tmp, name))
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(tmp, flags, 0o640, dir_fd=d.fd)
            except FileExistsError:  # left by a killed process that had our pid, or planted
                d.unlink(tmp)
                fd = os.open(tmp, flags, 0o640, dir_fd=d.fd)
            try:
                if mode is not None:
                    os.fchmod(fd, mode)
                if owner is not None and os.geteuid() == 0:
                    os.fchown(fd, *owner)
                with os.fdopen(fd, "wb", closefd=False) as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:  # a write error names no file: name the one it was
                raise OSError(exc.errno, exc.strerror, path) from exc
            finally:
                os.close(fd)
        for d, tmp, name in temps:
            os.replace(tmp, name, src_dir_fd=d.fd, dst_dir_fd=d.fd)
    except BaseException:
        for d, tmp, _ in temps:
            try:
                d.unlink(tmp)
            except OSError:
                pass
        raise
    finally:
        for d, _, _ in temps:
            d.close()
