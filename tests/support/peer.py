"""A remote MTA on 127.0.0.1 whose answers a test scripts: per recipient local part, the
reply to its RCPT and to the data of a message it is in (a 550 at RCPT, a 550 after
the data, a 451 that a later retry finds turned into a 250 or a 550). Everything else
is taken. The harness routes a domain to it (``router``, ``transport``); Debian's
generated config reaches it as its smarthost, on a loopback address Exim does not take
for its own (``host``)."""

from __future__ import annotations

import socket
import threading
from collections import Counter

from .loopback import LoopbackServer

OK = "250 2.0.0 ok"


class Peer(LoopbackServer):
    """``rcpt[local_part]`` is the reply to that recipient's RCPT, ``data[local_part]``
    the reply to the data of a message holding it (the first one set among its
    recipients); both may change while Exim retries. ``tried`` counts each local part's
    RCPTs. A reply may span lines ("550-...\\r\\n550 ...")."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.rcpt: dict[str, str] = {}
        self.data: dict[str, str] = {}
        self.tried: Counter[str] = Counter()
        self.lock = threading.Lock()

    def router(self, name: str, domain: str) -> str:
        return (f"{name}:\n  driver = manualroute\n  domains = {domain}\n  route_list = * 127.0.0.1\n"
                f"  self = send\n  transport = {name}\n")

    def transport(self, name: str, wired: bool = True) -> str:
        """The remote smtp transport, with the delivery event as docs/exim.md has it."""
        event = ".ifdef EXIMHOOK_DELIVERY_EVENT\n  event_action = EXIMHOOK_DELIVERY_EVENT\n.endif\n"
        return f"{name}:\n  driver = smtp\n  port = {self.port}\n  allow_localhost\n{event if wired else ''}"

    def _session(self, conn: socket.socket) -> None:
        def say(reply: str) -> None:
            conn.sendall(reply.encode("utf-8", "surrogateescape") + b"\r\n")

        with conn, conn.makefile("rb") as lines:
            say("220 peer ESMTP")
            taken: list[str] = []
            in_data = False
            for raw in lines:
                line = raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
                if in_data:
                    if line == ".":
                        in_data = False
                        with self.lock:
                            say(next((self.data[lp] for lp in taken if lp in self.data), OK))
                        taken = []
                    continue
                verb = line[:4].upper()
                if verb in ("EHLO", "HELO"):
                    say("250 peer")
                elif verb == "MAIL":
                    taken = []
                    say(OK)
                elif verb == "RCPT":
                    address = line[line.index("<") + 1 : line.rindex(">")]
                    local_part = address.rpartition("@")[0]
                    with self.lock:
                        self.tried[local_part] += 1
                        reply = self.rcpt.get(local_part, OK)
                    if reply.startswith("2"):
                        taken.append(local_part)
                    say(reply)
                elif verb == "DATA":
                    in_data = bool(taken)
                    say("354 go on" if taken else "554 no valid recipients")
                elif verb == "QUIT":
                    say("221 bye")
                    return
                else:
                    say(OK)
