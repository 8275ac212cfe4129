"""The daemon's Unix socket: made here, or inherited from systemd; pinged; removed.

Exim 4.96's ``${readsocket}`` mishandles a Unix socket it cannot connect to: it closes
the new socket but keeps the descriptor number, and closes that number again when it
tidies its lookups up, by then another file's (``src/lookups/readsock.c``). The
snippets therefore ask only while the socket exists, a stopped daemon removes it, and
with socket activation (``debian/eximhook.eximhook-serve.socket``) systemd keeps it listening
while a crashed daemon restarts, so Exim's connect never fails.
"""

from __future__ import annotations

import os
import socket
import stat
import time

from ..errors import ServeError
from . import protocol

_BACKLOG = 1024  # connections that wait while the loop is busy (or the daemon restarts)


def listening(path: str) -> tuple[socket.socket, int]:
    """The socket to serve on, and the inode to remove at exit (-1: systemd's, kept)."""
    inherited = _activated(path)
    if inherited is not None:
        return inherited, -1
    try:
        os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)  # systemd's RuntimeDirectory= makes it
    except OSError as exc:
        where = os.path.dirname(path)
        raise ServeError(f"cannot make {where}: {exc.strerror}. systemd's unit makes it (RuntimeDirectory=); "
                         f"without systemd, as root: install -d -o Debian-exim -g Debian-exim -m 0750 {where}") from exc
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ServeError(f"{path} exists and is not a socket ([serve] socket)")
        try:
            ping(path, 1.0)
        except ServeError:
            os.unlink(path)  # left by a daemon that died
        else:
            raise ServeError(f"another eximhook serve answers on {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is born 0600: only the Exim user (and root) may connect
    try:
        sock.bind(path)
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {path}: {exc.strerror}") from exc
    finally:
        os.umask(old)
    return sock, os.stat(path).st_ino


def _activated(path: str) -> socket.socket | None:
    """The listening socket systemd passed (LISTEN_PID is us, LISTEN_FDS counts from
    fd 3), or None. It must be ``[serve] socket``: that is the path Exim asks."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS") or 0) < 1:
        return None
    sock = socket.socket(fileno=3)
    os.set_inheritable(3, False)  # not to exim, which the outbox runs
    name = sock.getsockname() if sock.family == socket.AF_UNIX else None
    if sock.type != socket.SOCK_STREAM or name != path:
        sock.detach()
        raise ServeError(f"systemd passed a socket on {name!r}, but [serve] socket is {path}: make them the same")
    return sock


def unlink(path: str, inode: int) -> None:
    try:
        if os.stat(path).st_ino == inode:  # not the socket of a daemon started since, nor systemd's
            os.unlink(path)
    except OSError:
        pass


def sd_notify(state: bytes) -> None:
    """Tell systemd (Type=notify) that the socket is ready, or that we are stopping."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(address)
            s.send(state)
    except OSError:
        pass


def ping(path: str, timeout: float) -> float:
    """Ask the daemon on ``path`` for ``pong``; the round trip in seconds, or ServeError."""
    start = time.monotonic()
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(protocol.encode("ping"))
            s.shutdown(socket.SHUT_WR)
            answer = s.recv(16)
    except OSError as exc:
        raise ServeError(f"eximhook serve does not answer on {path}: {exc.strerror or exc}") from exc
    if answer != protocol.PONG:
        raise ServeError(f"eximhook serve on {path} answered {answer!r} to ping")
    return time.monotonic() - start
