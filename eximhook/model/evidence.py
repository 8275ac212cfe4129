"""How much of one piece of evidence eximhook keeps: the one place for the length and
the mark of a cut value (issue 21).

Evidence is what a subject's counter, its block record, its mail and ``show`` name:
the invalid recipient, the user name a password guesser tried, a bounce's failed
recipients, a message's id, the client's address. The SMTP client chooses most of it,
any byte and any length (a 12,000-byte user name costs a guesser nothing). So each
value is kept to ``EVIDENCE_BYTES`` bytes of UTF-8, a raw byte that is not UTF-8
counting one (the surrogate escape it travels as). A longer one is cut at a character
boundary and ends in ``CUT_END``, within those bytes, so a reader sees it was cut and
cutting it again changes nothing. Everything that cuts evidence (the counters, the
backends' events, the snippets, the daemon's oversize requests) marks it so.
``CUT_START`` marks the other cut, of a value whose *tail* is kept: a Message-ID or a
bounce's References, whose last id names the message (macros.conf writes both marks;
tests/e2e/test_oversize.py holds it to these).

A counter keeps the newest few pieces (``[evidence] rcpts``, ``ips``), and of those at
most ``EVIDENCE_KEPT`` bytes in all (``newest``): the addresses of a spam run fit ten
times over, a guesser's kilobyte user names leave the last four. So a counter stays
small enough for LMDB to keep it inline, beside others on one page.

No imports: the hooks load it.
"""

from __future__ import annotations

EVIDENCE_BYTES = 256  # one piece, cut mark included
EVIDENCE_KEPT = 1024  # the pieces of one list of one counter together
CUT_END, CUT_START = "...[cut]", "[cut]..."
_MARK = CUT_END.encode()


def cut_bytes(data: bytes, limit: int = EVIDENCE_BYTES) -> bytes:
    """``data`` if it has at most ``limit`` bytes, else its start and ``CUT_END``, in
    ``limit`` bytes: cut before a UTF-8 continuation byte, so no character is split
    (a run of stray continuation bytes is not a character: at most 3 are stepped over)."""
    if len(data) <= limit:
        return data
    end = limit - len(_MARK)
    for _ in range(3):
        if end > 0 and data[end] & 0xC0 == 0x80:
            end -= 1
    return data[:end] + _MARK


def cut(text: str, limit: int = EVIDENCE_BYTES) -> str:
    """``cut_bytes`` for text that may hold surrogate-escaped bytes (as keys and
    evidence do: ``surrogateescape`` both ways)."""
    if len(text) * 4 <= limit:  # no character takes more than 4 bytes: short enough as it is
        return text
    data = text.encode("utf-8", "surrogateescape")
    return text if len(data) <= limit else cut_bytes(data, limit).decode("utf-8", "surrogateescape")


def newest(items: list[str], n: int, total: int = EVIDENCE_KEPT) -> list[str]:
    """The last ``n`` of ``items`` (pieces cut already), fewer if they hold more than
    ``total`` bytes together; the last one always."""
    kept: list[str] = []
    size = 0
    for text in reversed(items[max(len(items) - n, 0):]):
        size += len(text.encode("utf-8", "surrogateescape"))
        if kept and size > total:
            break
        kept.append(text)
    return kept[::-1]
