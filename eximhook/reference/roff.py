"""roff for man pages (man(7) macros), from text that may hold anything.

Help strings, defaults and comments reach the pages through ``escape``, so each prints
as written: never as a request (a line that starts with ``.``), an escape (``\\``), a
minus that is not ASCII when copied, or a quote that ends a macro argument. The
output is ASCII whatever the input, so no encoding (preconv) is needed to read it.
"""

from __future__ import annotations

# Characters that groff would not print as themselves: its escape character; "-",
# which is a hyphen (\- prints the ASCII minus an option needs when pasted); quotes and
# accents that -Tutf8 turns into typographic glyphs; '"', which ends a macro argument.
_GLYPHS = {"\\": r"\e", "-": r"\-", "'": r"\(aq", "`": r"\(ga", '"': r"\(dq", "^": r"\(ha", "~": r"\(ti"}


def escape(text: str, *, fill: bool = True) -> str:
    """``text`` as roff that prints literally. ``fill``: one line, every run of white
    space one space (a paragraph); otherwise the lines are kept, for no-fill blocks.
    A control character prints as ``\\xNN``, anything past ASCII as its code point."""
    lines = [" ".join(text.split())] if fill else text.expandtabs().splitlines()
    return "\n".join(_line(line) for line in lines)


def _line(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _GLYPHS:
            out.append(_GLYPHS[ch])
        elif 32 <= code < 127:
            out.append(ch)
        elif code < 160:  # C0 and C1 controls: visible, as `eximhook view` shows them
            out.append(rf"\ex{code:02x}")
        else:
            out.append(rf"\[u{code:04X}]")
    line = "".join(out)
    # a leading "." would make the line a request ("'" is \(aq already)
    return r"\&" + line if line.startswith(".") else line


def bold(text: str) -> str:
    """In bold, and never hyphenated (\\%): an option split as --fall-back would not paste."""
    return rf"\fB\%{escape(text)}\fR"


def italic(text: str) -> str:
    return rf"\fI\%{escape(text)}\fR"


def request(name: str, *args: str) -> str:
    """A macro call, each argument quoted (and escaped: a '"' inside is \\(dq)."""
    return " ".join([f".{name}", *(f'"{escape(a)}"' for a in args)])


def title(name: str, section: str, date: str, source: str, manual: str) -> str:
    return request("TH", name.upper(), section, date, source, manual)


def paragraph(text: str) -> list[str]:
    return [".PP", escape(text)]


def item(tag: str, *body: str) -> list[str]:
    """A ``.TP`` entry: ``tag`` and each of ``body`` are roff already (made with escape)."""
    return [".TP", tag, *body]


def literal(lines: list[str]) -> list[str]:
    """Lines shown as they are (no fill), indented: an example."""
    return [".RS", ".nf", *(escape(line, fill=False) for line in lines), ".fi", ".RE"]
