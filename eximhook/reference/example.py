"""The example config (contrib/eximhook.toml) read for its words: what it says of each
table and key.

That file is written for people: every key with its default and a comment, the comment
going on in indented comment lines below, keys without a default to write shown
commented out (``# owner = ...``), and paragraphs of comment at the start of a line
before the tables they introduce. The man page takes what each key means from here,
so that the words live in one place: the file the package installs as the conffile.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field

_TABLE = re.compile(r"(#\s?)?\[([^\[\]]+)\]\s*(?:#\s?(.*))?")
_KEY = re.compile(r"(#\s?)?([A-Za-z_][A-Za-z0-9_-]*) = (.*)")
_MORE = re.compile(r"\s+#\s?(.*)")  # indented: the comment of the line above goes on


@dataclass
class Key:
    value: str  # the TOML text after "=", as written
    comment: str
    active: bool  # False: shown commented out


@dataclass
class Table:
    comment: str = ""  # on its header line and the lines that go on from it
    prose: str = ""  # the paragraphs just before it
    active: bool = True
    keys: dict[str, Key] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Its keys as TOML lines, without their comments, commented out or not."""
        return [f"{name} = {key.value}" for name, key in self.keys.items()]


@dataclass
class Example:
    header: str = ""  # the file's first paragraph
    tables: dict[str, Table] = field(default_factory=dict)  # in the file's order, commented out ones too


def parse(text: str) -> Example:
    ex = Example()
    prose: list[str] = []
    table: Table | None = None
    last: Table | Key | None = None
    for line in text.splitlines():
        more = _MORE.fullmatch(line)
        if more and last is not None:
            last.comment = f"{last.comment} {more[1].strip()}".strip()
            continue
        last = None
        head, key = _TABLE.fullmatch(line), _KEY.fullmatch(line)
        if not line.strip():
            if table is None and prose and not ex.header:
                ex.header, prose = " ".join(prose), []
        elif head:
            table = last = Table((head[3] or "").strip(), " ".join(prose), active=not head[1])
            ex.tables[head[2]] = table
            prose = []
        elif key and table is not None:
            value, comment = _split(key[3])
            table.keys[key[2]] = last = Key(value, comment, active=not key[1])
        elif line.startswith("#"):
            prose.append(line[1:].strip())
    return ex


def _split(rest: str) -> tuple[str, str]:
    """``value   # comment``: the comment starts at the first ``#`` that whole TOML comes
    before (a ``#`` inside a string does not), else (a placeholder such as ``...``, not
    TOML) at the first `` #``."""
    for i, ch in enumerate(rest):
        if ch == "#" and is_value(rest[:i]):
            return rest[:i].strip(), rest[i + 1:].strip()
    if is_value(rest):
        return rest.strip(), ""
    value, _, comment = rest.partition(" #")
    return value.strip(), comment.strip()


def is_value(text: str) -> bool:
    try:
        tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return False
    return True
