"""Per-request failures, logged without flooding the log."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..log import Logger

_LOG_EVERY = 60.0  # seconds between two log lines of one kind of per-request failure


class Throttle:
    """Failures that come per request (a broken store, a snippet sending garbage) would
    write a log line per RCPT: log the first, then one line a minute with a count."""

    def __init__(self, log: Callable[[], Logger]) -> None:
        self.log = log
        self.last: dict[str, tuple[float, int]] = {}
        self.lock = threading.Lock()

    def __call__(self, kind: str, text: str) -> None:
        now = time.monotonic()
        with self.lock:
            last, suppressed = self.last.get(kind, (-_LOG_EVERY, 0))
            if now - last < _LOG_EVERY:
                self.last[kind] = (last, suppressed + 1)
                return
            self.last[kind] = (now, 0)
        more = f" (and {suppressed} more like it in the last {_LOG_EVERY:g}s)" if suppressed else ""
        self.log().log("err", text + more)
