"""A pipelined SMTP client for the benchmarks: smtplib waits for each reply, which at
tens of thousands of RCPTs a second would measure Python, not Exim.

Exim advertises PIPELINING, so a session writes a whole envelope (MAIL and its RCPTs) in
one go and then reads the replies; it also does STARTTLS and AUTH PLAIN like the e2e
harness's clients.
"""

from __future__ import annotations

import base64
import socket
import ssl
import time

_CTX = ssl.create_default_context()
_CTX.check_hostname = False
_CTX.verify_mode = ssl.CERT_NONE


class Session:
    def __init__(self, port: int, *, source: str = "127.0.0.1", user: str | None = None,
                 password: str = "secret", tls: bool = True) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            ("127.0.0.1", port), timeout=60, source_address=(source, 0))
        # without it, Nagle's algorithm meeting delayed ACKs stalled ~1 pipelined envelope in 10 by ~30 ms
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self._expect(1, b"220")
        self.command(b"EHLO bench.example", b"250")
        if tls:
            self.command(b"STARTTLS", b"220")
            self.sock = _CTX.wrap_socket(self.sock)
            self.buf = b""
            self.command(b"EHLO bench.example", b"250")
        if user is not None:
            token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
            self.command(b"AUTH PLAIN " + token, b"235")

    def _expect(self, count: int, code: bytes | None = None) -> list[bytes]:
        """Read ``count`` replies (a multi-line reply counts once); their codes.

        Splits every complete line in the buffer at once: one line at a time (a copy of
        the rest of the buffer per line) made the client, not Exim, the bottleneck at a
        few thousand pipelined replies.
        """
        codes: list[bytes] = []
        while len(codes) < count:
            end = self.buf.rfind(b"\n")
            if end < 0:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                self.buf += data
                continue
            lines = self.buf[:end].split(b"\n")
            rest = self.buf[end + 1 :]
            finals = [i for i, line in enumerate(lines) if line[3:4] != b"-"]
            need = count - len(codes)
            if len(finals) > need:  # replies beyond the ones asked for stay buffered
                cut = finals[need - 1] + 1
                rest = b"".join(line + b"\n" for line in lines[cut:]) + rest
                finals = finals[:need]
            codes.extend(lines[i][:3] for i in finals)
            self.buf = rest
        if code is not None and any(c != code for c in codes):
            raise AssertionError(f"expected {code!r}, got {codes[:5]!r}")
        return codes

    def command(self, line: bytes, code: bytes | None = None) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self._expect(1, code)[0]

    def envelope(self, sender: str, rcpts: list[str]) -> list[bytes]:
        """MAIL FROM and the RCPTs, pipelined; returns the RCPT reply codes."""
        lines = [f"MAIL FROM:<{sender}>".encode()] + [f"RCPT TO:<{r}>".encode() for r in rcpts]
        self.sock.sendall(b"\r\n".join(lines) + b"\r\n")
        codes = self._expect(len(lines))
        if codes[0] != b"250":
            raise AssertionError(f"MAIL FROM refused: {codes[0]!r}")
        return codes[1:]

    def data(self, body: bytes) -> bytes:
        self.command(b"DATA", b"354")
        self.sock.sendall(body.replace(b"\n.", b"\n..") + b"\r\n.\r\n")
        return self._expect(1)[0]

    def timed_data(self, body: bytes) -> tuple[float, bytes]:
        """DATA through the final reply: Exim's DATA ACL and the spool write."""
        start = time.perf_counter()
        code = self.data(body)
        return time.perf_counter() - start, code

    def timed_envelope(self, sender: str, rcpts: list[str]) -> tuple[float, list[bytes]]:
        start = time.perf_counter()
        codes = self.envelope(sender, rcpts)
        return time.perf_counter() - start, codes

    def close(self) -> None:
        try:
            self.command(b"QUIT")
        except (OSError, AssertionError, ConnectionError):
            pass
        self.sock.close()
