"""The internet's MTAs, on loopback: what the population's mail meets once Exim relays it.

One aiosmtpd server in a process of its own (the other core: the load, Exim and the
daemon share the machine) plays every remote provider. It refuses what real providers
refuse, decided by the address and the content alone, so that it keeps no state:
  - a local part starting ``nx-`` does not exist: 550 at RCPT (Exim's callout sees it
    too, so eximhook counts it as an invalid recipient; the delivery then bounces);
  - a local part starting ``busy-`` is deferred: 451 at RCPT (greylisting, a full
    mailbox); Exim keeps the message and retries it later, after the run;
  - a message whose body holds SPAM_MARK is refused after DATA with 550 (the provider's
    content filter): Exim bounces it. The mark is GTUBE, the test string every spam
    filter knows, so that rspamd, where the run has it, judges the same messages spam;
  - everything else is delivered (250).
The domains are ``*.inet.example``; ROUTER and TRANSPORT route them here, through the
harness's ``routers`` and ``transports`` (inserted first in their sections).

    python -m population.internet PORT      # serves until SIGTERM (bench/ and the checkout on PYTHONPATH)
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.redis_server import stop_process
from tests.support.rspamd_server import GTUBE

DOMAINS = "*.inet.example"
UNKNOWN, BUSY = "nx-", "busy-"
SPAM_MARK = GTUBE  # what the providers' content filters refuse, and rspamd calls spam

ROUTER = """
internet:
  driver = manualroute
  domains = {domains}
  route_list = * 127.0.0.1
  self = send
  transport = internet_smtp
"""

# one connection may carry up to 100 recipients of one message (Exim's default max_rcpt)
TRANSPORT = """
internet_smtp:
  driver = smtp
  port = {port}
  allow_localhost
"""
# each remote recipient's outcome counted, as docs/exim.md wires Debian's remote_smtp
DELIVERY_EVENT = """.ifdef EXIMHOOK_DELIVERY_EVENT
  event_action = EXIMHOOK_DELIVERY_EVENT
.endif
"""


def router() -> str:
    return ROUTER.format(domains=DOMAINS)


def transport(port: int, outcomes: bool) -> str:
    """The smtp transport to the MTAs; with ``outcomes``, it reports each remote
    recipient's outcome to eximhook (the failures and failrate counters)."""
    return TRANSPORT.format(port=port) + (DELIVERY_EVENT if outcomes else "")


class Provider:
    """aiosmtpd's handler: the verdicts above, per recipient and per message."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        local = address.rpartition("@")[0].lower()
        if local.startswith(UNKNOWN):
            return "550 5.1.1 <" + address + ">: no such user here"
        if local.startswith(BUSY):
            return "451 4.2.1 mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if SPAM_MARK.encode() in envelope.original_content:
            return "550 5.7.1 message refused as spam by the provider's content filter"
        return "250 2.0.0 OK queued"


def serve(port: int) -> None:
    from aiosmtpd.smtp import SMTP

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        handler = Provider()
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="mx.inet.example", decode_data=False, data_size_limit=None), "127.0.0.1",
            port, backlog=512)
        async with server:
            await stop

    asyncio.run(main())


class Internet:
    """The server process: started, and stopped by its pid; what it says goes to ``log``."""

    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log = port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Internet:
        import socket

        from tests.support.waiting import wait_for

        bench = Path(__file__).resolve().parent.parent
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "population.internet", str(self.port)],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         env={"PYTHONPATH": f"{bench}:{bench.parent}"})

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the internet's MTA exited {self.proc.returncode}: "
                                     f"{self.log.read_text(errors='replace')[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for("the internet's MTA to listen", up)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
