"""The texts: the probe a customer's host is asked to relay, and the mail that tells
the customer's postmaster (Cc the abuse desk) that the host relayed it.

The probe says plainly what it is and whom to ask, in its From, Subject and first
lines: it lands in a stranger's mailbox whenever a host relays it somewhere else. It
carries the token twice, in ``X-Eximhook-Probe:`` and in the body, because relays may
strip headers.

Both name this server as Exim does (``server``: its ``primary_hostname``), and get their
Message-ID where every mail of eximhook's does (``mails.new_message_id``).
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import Any

from .mails import MAIL_POLICY, fold, new_message_id

HEADER = "X-Eximhook-Probe"
def probe(*, ip: str, probe_id: str, probe_time: float, token: str, sender: str, mailbox: str,
          abuse: str, server: str) -> EmailMessage:
    msg = EmailMessage(policy=MAIL_POLICY)
    msg["From"] = formataddr((f"Open relay test, abuse desk of {server}", sender))
    msg["To"] = mailbox
    fold(msg, "Subject", f"Open relay test of {ip} by the abuse desk of {server} - questions: {abuse}")
    msg["Date"] = formatdate(probe_time, localtime=True)
    msg["Message-ID"] = new_message_id(f"relaytest.{probe_id}", sender)
    msg["Auto-Submitted"] = "auto-generated"
    msg[HEADER] = token
    msg.set_content("\n".join([
        f"This is an automatic open relay test by the abuse desk of {server} ({abuse}).",
        "",
        f"The host {ip} sends mail through our server, so we asked it to relay this",
        f"message back to us, to {mailbox}. A host that relays mail for anyone is",
        "abused by spammers; if it relays this message, it may no longer send mail",
        "through our server until it is fixed, and its postmaster will hear from us.",
        "If you received this message anywhere else, please tell us at the address above.",
        "",
        f"Host:  {ip}",
        f"Time:  {formatdate(probe_time, localtime=True)}",
        f"Probe: {probe_id}",
        f"Token: {token}",
        "",
    ]), cte="7bit")
    return msg


def blocked(notice: dict[str, Any], *, to: str | None, cc: str, sender: str, server: str) -> EmailMessage:
    """The customer's postmaster (``to``; None: unknown, the abuse desk alone) about
    ``notice``, the host that relayed a probe (``table.returned``)."""
    ip = notice["key"]
    msg = EmailMessage(policy=MAIL_POLICY)
    fold(msg, "Subject", f"Your host {ip} is an open relay: it may no longer send mail through {server}")
    msg["From"] = sender
    msg["To"] = to or cc
    if to:
        msg["Cc"] = cc
    msg["Reply-To"] = cc
    msg["Date"] = formatdate(notice["since"], localtime=True)
    msg["Message-ID"] = new_message_id(f"relaytest.blocked.{notice['probe_id']}", sender)
    msg["Auto-Submitted"] = "auto-generated"
    lines = [
        f"On {formatdate(notice['probe_time'], localtime=True)} our server asked the host {ip} to relay a",
        f"test message (probe {notice['probe_id']}) back to us, and at",
        f"{formatdate(notice['since'], localtime=True)} the host did: it relays mail for anyone. Spammers",
        "find such hosts within hours and send through them, through us.",
        "",
        f"So {server} now refuses mail from {ip} (SMTP error 550, naming this reason).",
        "Please close the relay: the host should relay only for your own users and",
        f"networks. Then write to {cc} to have it tested again and unblocked.",
        "",
    ]
    if not to:
        lines += ["(No postmaster address is on file for this host: please tell the customer.)", ""]
    msg.set_content("\n".join(lines), cte="7bit")
    return msg
