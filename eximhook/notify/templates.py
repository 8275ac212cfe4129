"""Notification templates: the text of the mails eximhook sends, in files an admin can edit.

A template is header lines (``Subject:`` at least), a blank line, and the body, with
``$name`` or ``${name}`` placeholders (Python's ``string.Template``: no code runs, and
every name is known before a mail is sent; ``$$`` is a dollar sign). The built-in
templates are the files ``notify.tmpl``, ``shadow.tmpl``, ``owner.tmpl`` and ``digest.tmpl``
beside this module: the one text eximhook sends unless the config names another file.

``load`` checks a template whole (``eximhook check-config`` runs it), so a mail never
meets an unknown placeholder. The sender logs a template that no longer loads (edited
since) and sends the built-in one instead: an edit never loses a notification.
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ConfigError
from ..model.placeholders import problem

# notify: a block, to the abuse desk; shadow: a would-block, to the abuse desk (with
# [limits] notify_shadow); owner: a block, to the subject's owner ([owner]); digest: a
# burst of one namespace's blocks, to the abuse desk ([notify] digest_after)
KINDS = ("notify", "shadow", "owner", "digest")
_FACTS = frozenset({"label", "ns", "key", "counter", "count", "limit", "period", "total", "date", "host"})
_DESK = _FACTS | {"summary", "reason", "by", "note", "counted", "ips", "evidence_title", "evidence", "frozen",
                  "frozen_count", "command", "subject_args", "commands", "consequence"}
# The owner is a customer: what the block says about their own account, never the admin
# commands, the admin's note, or addresses and IPs that may be someone else's.
# A digest names many subjects: what they share, then a list with a few lines each
_DIGEST = frozenset({"what", "ns", "count", "host", "first", "last", "after", "every", "command", "blocks",
                     "commands", "consequence"})
PLACEHOLDERS = {"notify": _DESK, "shadow": _DESK, "owner": _FACTS | {"why", "abuse"}, "digest": _DIGEST}
# and X- headers; eximhook sets From, To, Date, Message-ID, Auto-Submitted and the MIME
# headers itself, and the recipient is the command's argument, never a header's
HEADERS = ("Subject", "Reply-To", "Organization", "Precedence")
HEADER_VALUE_MAX = 120  # longer values (a key of kilobytes) are cut in headers, with "..."


@dataclass(frozen=True)
class Template:
    path: str
    headers: tuple[tuple[str, str], ...]  # (name, text with placeholders), Subject first
    body: str


def builtin_path(kind: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{kind}.tmpl")


def builtin(kind: str) -> Template:
    return load(None, kind)


def load(path: str | None, kind: str) -> Template:
    """The template at ``path`` (None: the built-in one) for mail of ``kind``; a
    ``ConfigError`` naming the file and the line says what is wrong with it."""
    path = path or builtin_path(kind)
    try:
        # text mode: CRLF lines read as LF, so no CR can reach a header
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {kind} template: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the {kind} template is not UTF-8 (byte {exc.start})") from exc
    return _parse(text, path, kind)


def _parse(text: str, path: str, kind: str) -> Template:
    lines = text.split("\n")
    headers: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            break
        name, sep, value = line.partition(":")
        if not sep or not name or not all(c.isascii() and (c.isalnum() or c == "-") for c in name):
            raise ConfigError(f"{path} line {n}: not a header line ('Name: value'); the headers end at the first "
                              "blank line, the body follows it")
        canonical = next((h for h in HEADERS if h.lower() == name.lower()), name if name[:2] in ("X-", "x-") else None)
        if canonical is None:
            raise ConfigError(f"{path} line {n}: a template cannot set {name}: it may set {', '.join(HEADERS)} and "
                              "X- headers (eximhook sets From, To, Date, Message-ID and Auto-Submitted itself)")
        if canonical.lower() in (h.lower() for h in headers):
            raise ConfigError(f"{path} line {n}: a second {canonical} header")
        _check_line(value, path, n, kind, header=True)
        headers[canonical] = value.strip()
    else:
        raise ConfigError(f"{path}: no blank line after the headers (a template is headers, a blank line, the body)")
    if "Subject" not in headers:
        raise ConfigError(f"{path}: no Subject header in its first lines")
    for i, line in enumerate(lines[n:], n + 1):
        _check_line(line, path, i, kind, header=False)
    ordered = (("Subject", headers.pop("Subject")), *headers.items())
    return Template(path, ordered, "\n".join(lines[n:]))


def _check_line(line: str, path: str, n: int, kind: str, *, header: bool) -> None:
    found = problem(line, PLACEHOLDERS[kind], single=header)
    if found:
        raise ConfigError(f"{path} line {n}: {found}")


def render(template: Template, values: Mapping[str, str | list[str]]) -> tuple[list[tuple[str, str]], str]:
    """The headers and the body of ``template`` filled in. The values are one printable
    line each (``subjects.escape``), so no value can add a header or end one. A list
    puts one item per line, each indented as the line that holds it ("-" if empty)."""
    cut = {k: v[:HEADER_VALUE_MAX] + "..." if len(v) > HEADER_VALUE_MAX else v
           for k, v in values.items() if isinstance(v, str)}
    headers = [(name, string.Template(text).substitute(cut)) for name, text in template.headers]
    lines = []
    for line in template.body.split("\n"):
        indent = line[: len(line) - len(line.lstrip())]
        filled = string.Template(line).substitute(
            {k: v if isinstance(v, str) else ("\n" + indent).join(v or ["-"]) for k, v in values.items()})
        # sendmail without -i takes a line holding only a dot for the end of the message
        lines += [". " if part == "." else part for part in filled.split("\n")]
    return headers, "\n".join(lines)
