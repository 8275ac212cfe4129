"""The form of every mail eximhook writes, whatever it says: its Message-ID, its
Subject folded as RFC 5322 asks, the headers it always sets, a body that reads as it
is, and the sendmail command that takes it. What the mails say is ``notify``'s (the
abuse desk's, the owner's, the alerts), ``digest``'s and ``notify.relaytest``'s.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from email import policy
from email.message import EmailMessage
from email.utils import formatdate

from ..model.subjects import escape
from . import templates
from .templates import Template


def new_message_id(unique: str, sender: str) -> str:
    """``<eximhook.UNIQUE@DOMAIN>``, the Message-ID of every mail eximhook writes: DOMAIN
    is the sender's, or this machine's name when the sender is a bare local part
    (``[notify] from`` is "root" by default)."""
    import os

    domain = sender.rpartition("@")[2] if "@" in sender else os.uname().nodename
    return f"<eximhook.{unique}@{domain or 'localhost'}>"


def mail(template: Template, values: dict[str, str | list[str]], *, when: float, to: str, sender: str,
         msgid: str) -> EmailMessage:
    """The mail ``template`` makes of ``values``, dated ``when``."""
    headers, body = templates.render(template, values)
    # the template's Subject first, then what eximhook sets whatever the template says
    # (a template cannot drop Auto-Submitted), then the template's other headers
    msg = message(headers[0][1], sender=sender, to=to, when=when, msgid=msgid)
    for name, value in headers[1:]:
        msg[name] = value
    set_body(msg, body)
    return msg


# a header folded here (``fold``) goes out as folded, whatever its length: refolded,
# the email package would start it with a fold again, or cut a long word into encoded words
MAIL_POLICY = policy.default.clone(refold_source="none")
_LONGEST_WORD = 900


def fold(msg: EmailMessage, name: str, text: str, width: int = 78) -> None:
    """Set header ``name`` to ``text`` folded as RFC 5322 asks: at spaces, and only
    where the line would pass ``width`` characters, so the first line holds text; a
    word longer than a line gets one of its own, uncut. (The email package folds a
    Subject with a colon in it right after "Subject:".) Text that is not ASCII goes to
    the email package, which encodes it."""
    if not text.isascii() or any(len(word) > _LONGEST_WORD for word in text.split()):
        # a word past SMTP's 998-character line (a kilobyte key) must be cut into
        # encoded words, as the email package does; so must text that is not ASCII
        msg[name] = text
        return
    lines, room = [""], width - len(name) - 2  # "Subject: " on the first line, " " on the others
    for word in text.split():
        if not lines[-1]:
            lines[-1] = word
        elif len(lines[-1]) + 1 + len(word) <= room:
            lines[-1] += " " + word
        else:
            lines.append(word)
            room = width - 1
    msg.set_raw(name, "\n ".join(lines))


def message(subject: str, *, sender: str, to: str, when: float | None, msgid: str) -> EmailMessage:
    """A mail of eximhook's with the headers it always sets (``when`` None: now)."""
    msg = EmailMessage(policy=MAIL_POLICY)
    fold(msg, "Subject", subject)
    msg["From"] = sender
    msg["To"] = to
    msg["Date"] = formatdate(when, localtime=True)
    msg["Message-ID"] = msgid
    msg["Auto-Submitted"] = "auto-generated"
    return msg


def set_body(msg: EmailMessage, text: str) -> None:
    """The text as it reads: 7bit, or 8bit when it holds non-ASCII (an escaped key may),
    so that the paste-ready commands are not wrapped with quoted-printable's ``=``. Only
    a line past SMTP's 998 octets (a key of kilobytes) takes quoted-printable."""
    longest = max((len(line.encode()) for line in text.split("\n")), default=0)
    cte = "quoted-printable" if longest > 998 else "7bit" if text.isascii() else "8bit"
    msg.set_content(text, cte=cte)


def send(msg: EmailMessage, sendmail: Sequence[str], to: str | list[str], timeout: float) -> str | None:
    """Run ``sendmail TO...`` with ``msg`` on stdin; None on success, else the reason."""
    # Output goes to a file, not a pipe: Exim's background delivery process may keep
    # a pipe open long after the submission has finished.
    with tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.run([*sendmail, *([to] if isinstance(to, str) else to)], input=msg.as_bytes(),
                                  stdout=output, stderr=subprocess.STDOUT, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return f"{sendmail[0]} did not finish within {timeout:g}s; killed"
        except OSError as exc:
            return f"cannot run {sendmail[0]}: {exc.strerror}"
        if proc.returncode != 0:
            output.seek(0)
            said = output.read(500).decode("utf-8", "replace").strip()
            return f"{sendmail[0]} exited {proc.returncode}" + (f": {escape(said)}" if said else "")
    return None
