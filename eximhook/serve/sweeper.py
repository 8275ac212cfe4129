"""The daemon's sweeper thread: the counters' upkeep (``upkeep``), off the event loop and
off the store thread.

Every ``[serve] check_interval``, and at once when a count took the counters past their
high-water mark (``wake``). Not in the store thread: an hourly sweep of a million
counters takes seconds, and a block waiting behind it would be answered with the
fallback token. Not in the event loop: the sweep takes the counters' write lock a batch
at a time, and the loop, which only ever tries that lock, counts between the batches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..config.load import Config
from ..errors import EximhookError
from ..log import Logger
from ..storage import upkeep
from ..storage.counters import Counters
from ..storage.store import Store


class Sweeper(threading.Thread):
    def __init__(self, store: Store, counters: Counters, config: Callable[[], Config], log: Callable[[], Logger],
                 failure: Callable[[str, str], None]) -> None:
        super().__init__(name="eximhook-sweeper", daemon=True)
        self.store, self.counters, self.config, self.log, self.failure = store, counters, config, log, failure
        self.wake = threading.Event()
        self.stopping = False

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()

    def run(self) -> None:
        while not self.stopping:
            self.wake.wait(self.config().serve.check_interval)
            self.wake.clear()
            if self.stopping:
                return
            try:
                upkeep.upkeep(self.store, self.counters, self.log(), time.time(), self.config().bounces.remember)
            except EximhookError as exc:
                self.failure("upkeep", f"could not tend the counters: {exc}")
            except Exception as exc:  # the thread must outlive any one failure: log it, go on
                self.log().log("err", f"sweeper: unexpected {type(exc).__name__}: {exc}")
