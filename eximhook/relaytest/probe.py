"""The probe: connect to a customer host and ask it to relay a signed test message to
our own probe mailbox.

``send_probe`` refuses any address outside ``[relaytest] networks`` before it connects,
whatever its caller checked, and any probe id the table has not given the host
(``table.claim`` first). The connection and the host's greeting get
``[relaytest] connect_timeout`` together; the whole probe, from the connection to the
answer to QUIT, gets ``[relaytest] timeout``. Both are deadlines, not idle timeouts: a
host that answers a byte or a "250-" line at a time is cut off at them (``_Cutoff``).
What the host answered is recorded in the table (``table.outcome``):

- ``refused``: a permanent error (5xx) at MAIL, RCPT or DATA: it does not relay. OK.
- ``accepted``: it took the message (or the connection failed after the message was
  sent, which may have been taken): UNKNOWN, until the return (BLOCK), a bounce (OK)
  or ``unknown_after`` (OK).
- ``unreachable``: no connection, a 4xx, a refusal at the greeting or EHLO, a timeout before
  the message was sent: nothing was tested. It stays UNKNOWN, turns OK after
  ``unknown_after`` (as a host that drops relay attempts does), and is retested after
  ``retest``.
"""

from __future__ import annotations

import functools
import smtplib
import socket
import threading
import time
from collections.abc import Callable
from email.policy import SMTP
from types import TracebackType
from typing import TYPE_CHECKING

from ..errors import EximhookError, Exit
from ..exim.queue import primary_hostname
from ..notify.relaytest import probe as probe_message
from . import hosts, signing, table

if TYPE_CHECKING:
    from ..config.load import Config
    from ..storage.store import Store

# CRLF, as smtplib sends bytes as they are; and long lines rather than a token folded
# into encoded words, which no regex would find again
_WIRE = SMTP.clone(max_line_length=998)
# how to reach a host: (ip, port, connect timeout) -> an smtplib.SMTP that has read the
# host's 220 greeting within the timeout (else an OSError, or SMTPConnectError for
# another greeting)
Connect = Callable[[str, int, float], smtplib.SMTP]


class NotACustomer(EximhookError):
    """An address outside [relaytest] networks: never probed."""

    exit_code = Exit.DATAERR


class NotClaimed(EximhookError):
    """The probe id is not the host's outstanding probe: claim it first (table.claim)."""

    exit_code = Exit.FAILED


class _Cutoff:
    """Shuts ``smtp``'s connection down ``seconds`` after the start of the ``with``,
    whatever it is waiting for then. A socket timeout bounds each read, not their sum:
    smtplib reads "220-" or "250-" lines until one without the dash, so a host sending
    one line every few seconds would hold a probe for ever."""

    def __init__(self, smtp: smtplib.SMTP, seconds: float) -> None:
        self.smtp, self.fired = smtp, False
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Cutoff:
        self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._timer.cancel()

    def _fire(self) -> None:
        self.fired = True
        sock = self.smtp.sock  # None before the connection is made and after close()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the read or write in progress returns at once
            except OSError:
                pass

    def ended(self, exc: BaseException) -> bool:
        """Was ``exc`` the deadline: this cutoff, or the socket's timeout at the same time
        (which smtplib reports as SMTPServerDisconnected, "Connection unexpectedly closed:
        timed out")?"""
        return self.fired or isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError)


def connect_smtp(ip: str, port: int, timeout: float, *, helo: str) -> smtplib.SMTP:
    """Connect and read the greeting, both within ``timeout``; we say ``helo`` in EHLO."""
    smtp = smtplib.SMTP(local_hostname=helo, timeout=timeout)
    with _Cutoff(smtp, timeout) as cutoff:
        try:
            code, said = smtp.connect(ip, port)
        except (OSError, smtplib.SMTPException) as exc:
            _close(smtp)
            if cutoff.ended(exc):  # silence, or a greeting of endless "220-" lines
                raise TimeoutError("no complete greeting in time") from exc
            raise
    if code != 220:
        _close(smtp)
        raise smtplib.SMTPConnectError(code, said)
    return smtp


def send_probe(cfg: Config, ip: str, probe_id: str, now: float, connect: Connect | None = None, *,
               store: Store | None = None) -> str:
    """Probe ``ip`` with ``probe_id`` (from ``table.claim``); the outcome, "refused",
    "accepted" or "unreachable", recorded in the table. A process that has the store
    open passes it as ``store`` (LMDB must not be opened twice in one process)."""
    rt = cfg.relaytest
    ip = hosts.normalize(ip)
    if not hosts.is_customer(ip, rt.networks):
        raise NotACustomer(f"{hosts.why_not(ip, rt.networks)}: not probed")
    if store is None:
        from ..storage.store import Store as Opened

        with Opened(cfg.store.path, cfg.store.map_size, cfg.store.owner) as opened:
            return send_probe(cfg, ip, probe_id, now, connect, store=opened)
    record = table.get(store, ip)
    if record is None or record.get("probe_id") != probe_id:
        raise NotClaimed(f"probe {probe_id} is not the outstanding probe of {ip}")
    probe_time = int(record["probe_time"])
    token = signing.make(signing.load_key(rt.key_file), ip, probe_time, probe_id)
    server = primary_hostname(cfg.exim)  # as our Exim names itself: in the text, and in EHLO
    msg = probe_message(ip=ip, probe_id=probe_id, probe_time=probe_time, token=token, sender=rt.sender,
                        mailbox=rt.mailbox, abuse=rt.abuse, server=server)
    result, detail = converse(connect or functools.partial(connect_smtp, helo=server), ip, rt.port,
                              rt.connect_timeout, rt.timeout, rt.sender, rt.mailbox, msg.as_bytes(policy=_WIRE))
    table.outcome(store, ip, probe_id, now, result, detail)
    return result


def converse(connect: Connect, ip: str, port: int, connect_timeout: float, timeout: float, sender: str,
             rcpt: str, data: bytes) -> tuple[str, str]:
    """One SMTP transaction, all of it within ``timeout``, the connection and the
    greeting within ``connect_timeout`` of that; (outcome, what the host said)."""
    start = time.monotonic()
    try:
        smtp = connect(ip, port, min(connect_timeout, timeout))
    except smtplib.SMTPConnectError as exc:
        return table.UNREACHABLE, f"greeting {exc.smtp_code} {_said(exc.smtp_error)}"
    except TimeoutError:
        return table.UNREACHABLE, f"no connection and greeting within [relaytest] connect_timeout {connect_timeout:g}s"
    except (OSError, smtplib.SMTPException) as exc:
        return table.UNREACHABLE, f"connect: {exc}"
    left = timeout - (time.monotonic() - start)
    with _Cutoff(smtp, left) as cutoff:
        stage = "EHLO"
        try:
            if smtp.sock is not None:  # a read may take what is left; the cutoff ends their sum
                smtp.sock.settimeout(max(left, 0.001))
            code, said = smtp.ehlo()
            if not 200 <= code < 300:
                stage = "HELO"
                code, said = smtp.helo()
            if 200 <= code < 300:
                stage = "MAIL"
                code, said = smtp.mail(sender)
            if 200 <= code < 300:
                stage = "RCPT"
                code, said = smtp.rcpt(rcpt)
            if 200 <= code < 300:
                stage = "DATA"
                code, said = smtp.data(data)
        except smtplib.SMTPDataError as exc:  # DATA itself refused
            code, said = exc.smtp_code, _bytes(exc.smtp_error)
        except (OSError, smtplib.SMTPException) as exc:
            _close(smtp)
            why = f"no answer within [relaytest] timeout {timeout:g}s" if cutoff.ended(exc) else str(exc)
            if stage == "DATA":  # the message may have gone: the return or the clock will tell
                return table.ACCEPTED, f"connection lost after DATA: {why}"
            return table.UNREACHABLE, f"{stage}: {why}"
        try:
            if smtp.sock is not None:
                smtp.sock.settimeout(5)
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            _close(smtp)
    text = f"{stage} {code} {_said(said)}"
    if 200 <= code < 300:
        return table.ACCEPTED, text
    # a refusal of the transaction (MAIL, RCPT, DATA) is the answer; one of EHLO/HELO
    # refuses us, not the relaying, and a 4xx tests nothing
    refused = 500 <= code < 600 and stage in ("MAIL", "RCPT", "DATA")
    return (table.REFUSED if refused else table.UNREACHABLE), text


def _bytes(raw: bytes | str) -> bytes:
    return raw if isinstance(raw, bytes) else raw.encode("utf-8", "replace")


def _said(raw: bytes | str) -> str:
    return " ".join(_bytes(raw).decode("utf-8", "replace").split())[:200]


def _close(smtp: smtplib.SMTP) -> None:
    try:
        smtp.close()
    except OSError:
        pass
