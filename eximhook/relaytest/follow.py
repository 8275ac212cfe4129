"""Follow a log file by name across rotation, and resume where the last run stopped.

Debian's logrotate (``/etc/logrotate.d/exim4-base``) renames ``mainlog`` to
``mainlog.1`` with ``nocreate`` and ``delaycompress``: the old file stays readable,
uncompressed, until the next rotation, and the new ``mainlog`` appears when Exim
next writes. Exim stats the name before each write and reopens it once its inode
changed (log.c), so a process that stat'ed just before the rename still writes one
line to the old file: after the switch the old file is read for ``grace`` seconds
more. ``copytruncate`` keeps the inode and shrinks the file: read it again from 0.

The position saved (device, inode, offset of the first byte not yet handed out as a
whole line) is written atomically. After a restart the same file is read on from
that offset; if it was rotated meanwhile, ``NAME.1`` is read to its end first. A first
start, with no state, begins at the end of the log: the backlog has been sent already.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from ..errors import UnsafePath
from ..log import Logger
from ..perms import read_file, replace_files

_CHUNK = 65536
_BATCH = 16 * _CHUNK
MAX_LINE = 65536  # Exim's log lines stay far below (LOG_BUFFER_SIZE is 8 KiB)

FileId = tuple[int, int]  # (st_dev, st_ino)


class _Open:
    """One open log file: what has been read, and the partial line at its end."""

    def __init__(self, path: str, fd: int, offset: int) -> None:
        self.path, self.fd, self.id = path, fd, _id(fd)
        self.offset = offset  # start of the first line not handed out yet
        self.buf = b""  # bytes from offset on, read but not ending in a newline yet
        self.skipping = False  # inside an over-long line: drop bytes up to its newline
        self.at_end = False  # the last read() reached the end of the file

    def read(self, max_line: int) -> list[bytes]:
        """The whole lines written since the last call, without their newlines: at most
        about ``_BATCH`` bytes of them, so that a backlog is saved as it goes."""
        lines: list[bytes] = []
        for _ in range(_BATCH // _CHUNK):
            chunk = os.pread(self.fd, _CHUNK, self.offset + len(self.buf))
            self.at_end = not chunk
            if not chunk:
                break
            data = self.buf + chunk
            start = 0
            while (nl := data.find(b"\n", start)) >= 0:
                if not self.skipping:
                    lines.append(data[start:nl])
                self.skipping = False
                start = nl + 1
            self.offset += start
            self.buf = data[start:]
            if len(self.buf) > max_line:  # a line this long is no Exim line: skip it, not the rest
                self.skipping = True
                self.offset += len(self.buf)
                self.buf = b""
        return lines

    def truncated(self) -> bool:
        return os.fstat(self.fd).st_size < self.offset + len(self.buf)

    def rewind(self) -> None:
        self.offset, self.buf, self.skipping = 0, b"", False

    def close(self) -> None:
        os.close(self.fd)


def _open(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def _id(fd: int) -> FileId:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _stat_id(path: str) -> FileId | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class Follower:
    """``read()`` returns the new whole lines of ``path``, across rotations; ``save()``
    records how far they go. Not thread-safe: one thread reads."""

    def __init__(self, path: str, state_path: str, log: Logger, *, grace: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, max_line: int = MAX_LINE) -> None:
        self.path, self.state_path, self.log = path, state_path, log
        self.grace, self.clock, self.max_line = grace, clock, max_line
        self.current: _Open | None = None
        self.old: list[tuple[_Open, float]] = []  # rotated files still read, until their deadline
        self.saved: tuple[FileId, int] | None = None
        self._start()

    def _start(self) -> None:
        state = self._load()
        named = _stat_id(self.path)
        if state is not None and named != state[0]:
            self._resume_rotated(*state)
        fd = _open(self.path)
        if fd is None:  # rotated with nocreate, nothing logged since: it will come, read it whole
            self.log.log("notice", f"relaytest watch: {self.path} is not there yet; waiting for it")
            return
        current = self.current = _Open(self.path, fd, 0)
        size = os.fstat(fd).st_size
        if state is None:
            current.offset = size
            self.log.log("notice", f"relaytest watch: no state in {self.state_path}; starting at the end of "
                                   f"{self.path}")
        elif state[0] == current.id:
            current.offset = state[1] if state[1] <= size else 0  # shrank while we were away: copytruncate

    def _resume_rotated(self, file_id: FileId, offset: int) -> None:
        """The file read last was rotated while we were away: read the rest of it."""
        rotated = f"{self.path}.1"
        fd = _open(rotated)
        if fd is not None and _id(fd) != file_id:
            os.close(fd)
            fd = None
        if fd is None:
            self.log.log("warning", f"relaytest watch: the file read last is neither {self.path} nor {rotated} "
                                    f"any more; reading {self.path} from its start")
            return
        old = _Open(rotated, fd, offset if offset <= os.fstat(fd).st_size else 0)
        self.old.append((old, self.clock() + self.grace))

    def read(self) -> list[bytes]:
        """Every whole line available now: rotated files first, then the current one."""
        lines: list[bytes] = []
        now = self.clock()
        for old, deadline in list(self.old):
            lines += old.read(self.max_line)
            if now >= deadline and old.at_end:
                old.close()
                self.old.remove((old, deadline))
        if not all(old.at_end for old, _ in self.old):
            return lines  # a backlog in a rotated file: its lines come first
        # the name is looked at before the open file is read to its end: whatever was
        # written to that file before a new one took its name is read before the switch
        named = _stat_id(self.path)
        current = self.current
        if current is not None:
            if current.truncated():
                self.log.log("notice", f"relaytest watch: {self.path} shrank (copytruncate); reading it from 0")
                current.rewind()
            lines += current.read(self.max_line)
            if named is None or named == current.id or not current.at_end:
                return lines
            self.old.append((current, now + self.grace))
            self.current = None
        fd = _open(self.path)
        if fd is None:
            return lines
        self.current = _Open(self.path, fd, 0)
        if current is not None:
            self.log.log("info", f"relaytest watch: {self.path} was rotated; following the new file")
        return lines + self.current.read(self.max_line)

    def position(self) -> tuple[FileId, int] | None:
        """Where a restart goes on: in a rotated file while its backlog lasts (a restart
        finds it as NAME.1), else in the current file."""
        pending = [old for old, _ in self.old if not old.at_end]
        where = pending[0] if pending else self.current
        return None if where is None else (where.id, where.offset)

    def save(self) -> None:
        """Write the position atomically, if it moved since the last save."""
        position = self.position()
        if position is None or position == self.saved:
            return
        (dev, ino), offset = position
        data = json.dumps({"path": self.path, "dev": dev, "ino": ino, "offset": offset}).encode() + b"\n"
        replace_files([(self.state_path, data)], mode=0o640)
        self.saved = position

    def _load(self) -> tuple[FileId, int] | None:
        try:
            state = json.loads(read_file(self.state_path))  # beside the store: the Exim user's directory
            position = (int(state["dev"]), int(state["ino"])), int(state["offset"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, UnsafePath) as exc:
            self.log.log("warning", f"relaytest watch: ignoring unreadable state {self.state_path}: {exc}")
            return None
        self.saved = position
        return position

    def close(self) -> None:
        for f in [o for o, _ in self.old] + ([self.current] if self.current else []):
            f.close()
        self.old, self.current = [], None
