"""The rspamd Exim scans outgoing mail with (``spamd_address``, ``variant=rspamd``: the
spam verdicts of docs/signals.md), as ``eximhook status`` looks at it."""

from __future__ import annotations

from ..errors import EximhookError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config.load import Config


def servers(cfg: Config) -> list[list[str]]:
    """Exim's rspamd servers, each ``[HOST, PORT, options...]`` or ``[/socket, options...]``;
    none where Exim uses no rspamd, expands the address per scan, or cannot be asked."""
    from ..exim.queue import Exim

    try:
        listed = Exim.from_config(cfg.exim).option("spamd_address")
    except EximhookError:
        return []
    if listed.startswith("$"):
        return []
    return [s.split() for s in exim_list(listed) if "variant=rspamd" in s.split()]


def exim_list(text: str) -> list[str]:
    """An Exim list: colon-separated, a doubled separator one of its characters, or
    another separator named by a leading ``<``."""
    sep, text = (text[1], text[2:]) if text.startswith("<") and len(text) > 1 else (":", text)
    return [item.replace("\0", sep).strip() for item in text.replace(sep * 2, "\0").split(sep) if item.strip()]


def no_pong(server: list[str], timeout: float) -> str | None:
    """Why the rspamd at ``server`` does not answer its scanner's ``GET /ping`` with
    ``pong``; None when it does."""
    import socket

    unix = server[0].startswith("/")
    try:  # of a port range ("11333-11335"), tried in order, its first
        conn = socket.socket(socket.AF_UNIX) if unix else socket.create_connection(
            (server[0], int(server[1].split("-")[0])), timeout)
        with conn:
            if unix:
                conn.settimeout(timeout)
                conn.connect(server[0])
            conn.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
            answer = b""
            while len(answer) < 4096 and (chunk := conn.recv(4096)):
                answer += chunk
    except (OSError, ValueError, IndexError) as exc:
        return str(exc) or type(exc).__name__
    return None if b"pong" in answer else "no pong"
