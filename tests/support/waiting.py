"""Waiting for the event that proves something happened, never for a stretch of time."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


def wait_for(what: str, check: Callable[[], object], timeout: float = 20.0) -> object:
    """Poll ``check`` until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def wait_up(proc: subprocess.Popen[bytes], what: str, ping: Callable[[], bool], log: Callable[[], str],
            stop: Callable[[], object], timeout: float = 20.0) -> None:
    """Wait until the server ``proc`` runs answers ``ping``; fail at once, with its
    stderr and ``log()``, if it exits; stop it when it never answers."""
    def up() -> bool:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise AssertionError(f"{what.split()[0]} exited {proc.returncode}: {err}{log()}")
        return ping()

    try:
        wait_for(what, up, timeout)
    except AssertionError:
        stop()
        raise
