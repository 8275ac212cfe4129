"""``eximhook serve`` as a real process, for the tests and the benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from .paths import EXIMHOOK
from .waiting import wait_for


class Daemon:
    """``eximhook serve`` as a real process: as the Exim user (``user``), as the systemd
    unit runs it, or else as root with --allow-root (unit tests in pytest's private
    tmp_path, the benchmark)."""

    def __init__(self, config: Path, user: str | None = None, held: socket.socket | None = None,
                 python: str | None = None) -> None:
        import tomllib

        self.config, self.user = config, user
        # another venv's interpreter, its eximhook beside it: two installs served at once,
        # for a benchmark's A/B in one run (bench/serve.py --ab); None: this one's
        self.python = python
        self.held = held  # a listening socket passed as systemd's socket activation does
        self.socket = tomllib.loads(config.read_text())["serve"]["socket"]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Daemon:
        proc = self.spawn()

        def up() -> bool:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"eximhook serve exited {proc.returncode}: {err}")
            try:
                return self.request(b"ping\n") == b"pong"
            except OSError:
                return False

        wait_for("eximhook serve to answer", up)
        return self

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process, and return at once."""
        python, script = (sys.executable, EXIMHOOK) if self.python is None else (
            self.python, os.path.join(os.path.dirname(self.python), "eximhook"))
        argv = [python, "-IS", script, "--config", str(self.config), "serve"]
        if self.user:
            argv = ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups", *argv]
        else:
            argv.append("--allow-root")
        pass_fds: tuple[int, ...] = ()
        if self.held is not None:  # as systemd: the socket on fd 3, LISTEN_PID the daemon's own pid
            fd = self.held.fileno()
            pass_fds = (fd,)
            trampoline = (f"import os, sys; os.dup2({fd}, 3); os.close({fd}); os.environ['LISTEN_PID'] = "
                          "str(os.getpid()); os.environ['LISTEN_FDS'] = '1'; os.execvp(sys.argv[1], sys.argv[1:])")
            argv = [sys.executable, "-IS", "-c", trampoline, *argv]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env={}, cwd="/", pass_fds=pass_fds)
        return self.proc

    def sockets(self) -> int:
        """How many sockets the process holds open: its listening socket and each
        connection it has accepted and not closed yet (the signal that a request has
        reached it)."""
        fds = f"/proc/{self.pid}/fd"
        count = 0
        for fd in os.listdir(fds):
            try:
                count += os.readlink(f"{fds}/{fd}").startswith("socket:")
            except FileNotFoundError:  # closed meanwhile
                pass
        return count

    def request(self, data: bytes, timeout: float = 10, shutdown: bool = True) -> bytes:
        """One ${readsocket} call: connect, send, shut down our side, read to EOF."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(self.socket)
            s.sendall(data)
            if shutdown:
                s.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
            return answer

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Signal it and wait (SIGKILL after 20 s); its exit code, None if not running."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
