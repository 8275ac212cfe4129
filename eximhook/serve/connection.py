"""One ``${readsocket}`` call, as the daemon's event loop sees it: a connection that
brings one request (ended by a newline, or by Exim shutting down its side), gets one
token back and is closed; or that sends nothing and is dropped. Of a request longer
than ``[serve] max_request`` the first that many bytes are kept and the rest is read
and thrown away: it is counted with its evidence cut (``protocol.parse``)."""

from __future__ import annotations

import asyncio

from ..model.records import Request
from ..model.subjects import escape
from . import protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from ..config.load import Config

    class Server(Protocol):
        """What a connection uses of the daemon (``server.Server``)."""

        loop: asyncio.AbstractEventLoop
        cfg: Config
        connections: set[Connection]

        def handle(self, conn: Connection, line: bytes, cut: bool = False) -> None: ...
        def failure(self, kind: str, text: str) -> None: ...


class Connection(asyncio.Protocol):
    """One ``${readsocket}`` call: a request in, one token out, then close."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.buf = bytearray()
        self.cut = False  # past [serve] max_request: buf holds the request's start
        self.transport: asyncio.Transport | None = None
        self.state = "reading"  # then "waiting" (on the store thread), then "done"
        self.fallback = protocol.NO
        self.request: Request | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.timer = self.server.loop.call_later(self.server.cfg.serve.timeout, self._expire)
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.state != "reading":
            return
        end = data.find(b"\n")
        if not self.cut:
            self.buf += data if end < 0 else data[:end]
            limit = self.server.cfg.serve.max_request
            if len(self.buf) > limit:  # bounded: the rest is only looked through for its end
                del self.buf[limit:]
                self.cut = True
        if end >= 0:
            self._handle()

    def eof_received(self) -> bool:
        if self.state == "reading":  # Exim shuts down its side once the request is sent
            self._handle()
        return True  # keep our side open for the answer

    def _handle(self) -> None:
        if self.buf.split(b" ", 1)[0] in protocol.FALLBACK and self.abandoned():
            self.server.failure("gone", "a request whose client had given up waiting (its ${run} hook counted "
                                        "it: a daemon restarted late on a socket that held it); not counted")
            self.state = "done"
            if self.transport is not None:
                self.transport.close()
            return
        self.server.handle(self, bytes(self.buf), cut=self.cut)

    def abandoned(self) -> bool:
        """Has the client closed its end altogether, not only shut down its sending side
        as Exim does once the request is sent? Then its ``${readsocket}`` gave up
        (``EXIMHOOK_WAIT``) and the snippets' ``${run}`` hook counted the event instead:
        a request that waited in the socket's backlog for a daemon restarted too late
        must not count a second time. (A Unix socket's peer that closed sets POLLHUP;
        one that only shut down its side, POLLRDHUP.)"""
        import select

        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return False
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLHUP)
        return any(events & select.POLLHUP for _, events in poller.poll(0))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.state = "done"
        self.server.connections.discard(self)

    def answer(self, token: bytes) -> None:
        if self.state == "done" or self.transport is None:
            return
        self.state = "done"
        if self.timer is not None:
            self.timer.cancel()
        self.transport.write(token)
        self.transport.close()

    def _expire(self) -> None:
        timeout = self.server.cfg.serve.timeout
        if self.state == "reading":
            self.server.failure("silent", f"a client sent no complete request within {timeout:g}s; dropped")
            self.state = "done"
            if self.transport is not None:
                self.transport.abort()
        elif self.state == "waiting":
            self.server.failure("slow", f"{describe(self.request)}: no answer from the store within {timeout:g}s "
                                        f"([serve] timeout); answered {self.fallback.decode()}")
            self.answer(self.fallback)


def describe(req: Request | None) -> str:
    return "?" if req is None else f"{req.op} {req.ns} {escape(req.key)}"
