"""A real redis-server for the tests: its own process on a Unix socket, data in a temp dir.

Never the system's service (the Debian package's unit stays stopped and disabled): each
test session starts one with ``--save "" --appendonly no`` (nothing written but what
the test asks for), and stops it by its pid. Where redis-server is missing the tests
that need it skip, except under CI=true, where CI installs it (``install.sh --dev``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from .waiting import wait_up

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# sun_path holds 108 bytes; pytest's tmp_path can be longer than that
_MAX_SOCKET_PATH = 100


class RedisServer:
    """``redis-server`` on ``DIR/redis.sock`` (no TCP port), until ``stop``; as ``user``
    if given (the e2e tests: their daemons run as the Exim user, and the socket is
    0700), who must own ``DIR``; with ``requirepass password`` if given (not in ``url``)."""

    def __init__(self, where: Path, user: str | None = None, *, persist: bool = False,
                 password: str | None = None) -> None:
        self.dir = where
        self.user = user
        self.password = password
        # persist: every write on disk at once (appendfsync always), so a restart keeps it
        self.persist = ["--appendonly", "yes", "--appendfsync", "always"] if persist else ["--appendonly", "no"]
        self._short: str | None = None
        sock = where / "redis.sock"
        if len(str(sock)) > _MAX_SOCKET_PATH:
            self._short = tempfile.mkdtemp(prefix="ehredis-")
            sock = Path(self._short) / "redis.sock"
        self.socket = str(sock)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 20.0) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [REDIS_SERVER, "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700",
                "--dir", str(self.dir), "--save", "", *self.persist, "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log")]
        if self.password:
            argv += ["--requirepass", self.password]
        if self.user:  # setpriv execs redis-server: the pid stays the one stop() signals
            argv = ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups", *argv]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(self.dir))
        wait_up(self.proc, f"redis-server to answer on {self.socket}", self.ping, self.log, self.stop, timeout)
        return self

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(self.socket)
                auth = f"AUTH {self.password}\r\n".encode() if self.password else b""
                s.sendall(auth + b"PING\r\n")
                answer = b""
                while b"PONG" not in answer and (chunk := s.recv(64)):  # +OK (to AUTH) first
                    answer += chunk
                return answer.startswith(b"+OK\r\n+PONG" if auth else b"+PONG")
        except OSError:
            return False

    def log(self) -> str:
        return tail_log(self.dir)

    def stop(self) -> None:
        """SIGTERM to our pid (SIGKILL if it hangs), and wait for it; ``start`` may follow
        (on the same socket)."""
        stop_process(self.proc)
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()

    def close(self) -> None:
        """Stop, and remove the socket's own temp dir if it needed one: nothing left behind."""
        self.stop()
        if self._short is not None:
            shutil.rmtree(self._short, ignore_errors=True)
            self._short = None


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM to ``proc``'s pid (SIGKILL if it hangs), and wait for it."""
    if proc is not None and proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def tail_log(where: Path) -> str:
    """The end of the redis.log a redis-server of ours writes in ``where``."""
    path = where / "redis.log"
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""
