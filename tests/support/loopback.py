"""A threaded TCP server on a loopback address, one thread per connection: what the
tests' scripted SMTP peers share (``harness.RefusingSink``, ``peer.Peer``). Stopped by
closing its listening socket; sessions in flight end with their client."""

from __future__ import annotations

import socket
import threading
from typing import Self

from .ports import free_port


class LoopbackServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, free_port()
        self.server: socket.socket | None = None

    def start(self) -> Self:
        if self.server is None:
            self.server = socket.create_server((self.host, self.port))
            threading.Thread(target=self._serve, args=(self.server,), daemon=True).start()
        return self

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.close()

    def _serve(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        raise NotImplementedError
