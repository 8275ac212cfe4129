"""The daemon's outbox thread: notifications and queue freezing, off the SMTP path.

A trip answers Exim at once; this thread then mails the abuse desk through the same
outbox as ``eximhook notify`` (claimed, sent, marked sent: never lost, and restarts
send what is left). It first waits, up to ``[notify] hold`` seconds, for the DATA ACL
snippet to report the tripping message's id: that message is still in its SMTP
transaction when the block is made, so only then can the mail name it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ..config.load import Config
from ..log import Logger
from ..notify import send as notify
from ..storage import outbox
from ..storage.counters import Counter
from ..storage.store import Store

Subject = tuple[str, str]
_MAX_REPORTED = 20  # ids kept per subject: the tripping message and a few after it


class Outbox(threading.Thread):
    def __init__(self, store: Store, config: Callable[[], Config], log: Callable[[], Logger],
                 read: Callable[[str, str, str], Counter]) -> None:
        super().__init__(name="eximhook-outbox", daemon=True)
        self.store, self.config, self.log = store, config, log
        self.read = read  # a subject's counter, for a customer's members' shares
        self.wake = threading.Event()
        self.stopping = False
        self._lock = threading.Lock()
        self._awaiting: set[Subject] = set()  # held notifications whose message id may still come
        self._reported: dict[Subject, list[str]] = {}

    def tripped(self, subjects: set[Subject]) -> None:
        """New blocks with held notifications (called by the store thread)."""
        with self._lock:
            self._awaiting |= subjects
        self.wake.set()

    def report(self, ns: str, key: str, msg_id: str) -> bool:
        """The DATA ACL froze ``msg_id`` of a subject; True if a notification waits for it."""
        with self._lock:
            if (ns, key) not in self._awaiting:
                return False
            ids = self._reported.setdefault((ns, key), [])
            if msg_id not in ids and len(ids) < _MAX_REPORTED:
                ids.append(msg_id)
        self.wake.set()
        return True

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()

    def run(self) -> None:
        # notifications left queued (or held) by an earlier run, a hook or a crash
        with self._lock:
            self._awaiting |= {(i["block"]["ns"], i["block"]["key"]) for i in self._held(time.time())}
        while not self.stopping:
            try:
                wait = self._send()
            except Exception as exc:  # the thread must outlive any one failure: log, retry later
                self.log().log("err", f"outbox: unexpected {type(exc).__name__}: {exc}")
                wait = self.config().serve.check_interval
            self.wake.wait(wait)
            self.wake.clear()

    def _held(self, now: float) -> list[dict[str, Any]]:
        return [i for i in self.store.outbox() if i["state"] == "queued" and now < i.get("hold_until", 0)]

    def _send(self) -> float:
        """Send what is due; returns how long to sleep before the next look."""
        cfg, log = self.config(), self.log()
        with self._lock:
            looked_at = set(self._awaiting)
            release = set(self._reported)
            reported = {s: list(ids) for s, ids in self._reported.items()}
        notify.deliver(cfg, self.store, log, notify.command_line(cfg), release=release,
                       reported=lambda ns, key: reported.get((ns, key), []), read=self.read)
        now = time.time()
        held = self._held(now)
        with self._lock:  # forget subjects whose notification went out (not those that tripped meanwhile)
            gone = looked_at - {(i["block"]["ns"], i["block"]["key"]) for i in held}
            self._awaiting -= gone
            for subject in gone:
                self._reported.pop(subject, None)
        until = [float(i["hold_until"]) - now for i in held]
        digest = outbox.next_digest(self.store) if cfg.notify.digest() else None  # a burst's next digest
        until += [digest - now] if digest is not None and digest > now else []
        return max(0.05, min([cfg.serve.check_interval, *until]))
