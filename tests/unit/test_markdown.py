"""docs/reference/ is what eximhook.reference.markdown makes of the man pages' sources,
and its roff reader reads back whatever roff.escape writes, or refuses what it does not
know rather than dropping text."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eximhook.errors import Exit
from eximhook.reference import markdown, roff

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())  # the checkout
REGENERATE = "/opt/eximhook/bin/python -m eximhook.reference.markdown"


def written() -> dict[str, str]:
    return markdown.pages(Path(markdown.EXAMPLE).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(markdown.PAGES))
def test_the_committed_reference_is_what_its_sources_make(name: str) -> None:
    path = ROOT / "docs" / "reference" / name
    assert path.exists() and path.read_text(encoding="utf-8") == written()[name], (
        f"docs/reference/{name} is not what the parser, the config's definitions and contrib/eximhook.toml "
        f"make of it now: run `{REGENERATE}` and commit docs/reference/")


def test_main_writes_every_page_into_outdir(tmp_path: Path) -> None:
    assert markdown.main([str(tmp_path / "ref")]) == Exit.OK
    assert {p.name: p.read_text(encoding="utf-8") for p in (tmp_path / "ref").iterdir()} == written()


printable = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=200)


@given(printable)
def test_escaped_text_reads_back_as_it_prints(value: str) -> None:
    assert markdown.plain(roff.escape(value)) == " ".join(value.split())


@given(printable.filter(str.strip))
def test_bold_and_italic_read_back_in_their_font(value: str) -> None:
    flat = " ".join(value.split())
    assert [(r.font, r.text) for r in markdown.runs(roff.bold(value) + roff.italic(value))] == [("B", flat),
                                                                                               ("I", flat)]


@pytest.mark.parametrize("page", [".XY something\n", "text \\fQbold\\fR\n", "\\*(Tm\n"])
def test_what_the_reader_does_not_know_is_refused(page: str) -> None:
    with pytest.raises(markdown.RoffError):
        markdown.markdown(page, "x(1)")


@pytest.mark.parametrize(("value", "shown"), [
    ("a *glob* and ~28 ms", r"a \*glob\* and \~28 ms"),
    ("run `eximhook check-config` as root", "run `eximhook check-config` as root"),
    ("one ` alone", r"one \` alone"),
    ("[x](y) <b> & a_b _c_", r"[x\](y) \<b> \& a_b \_c\_"),
])
def test_text_is_shown_as_written(value: str, shown: str) -> None:
    assert markdown.text(value) == shown


@pytest.mark.parametrize(("line", "shown"), [
    ("- a", r"\- a"), ("# a", r"\# a"), ("12. a", r"12\. a"), ("1) a", r"1\) a"), ("a - b", "a - b"),
])
def test_a_line_starts_no_block_of_its_own(line: str, shown: str) -> None:
    assert markdown.start(line) == shown


def test_items_nested_in_rs_are_one_tight_list() -> None:
    page = "\n".join([".SH \"COMMANDS\"", ".TP", r"\fB\%a\fR", "about a", ".RS", ".TP", r"\fI\%X\fR", "x", ".RE",
                      ".TP", r"\fB\%b\fR", "about b", ".br", "more", ".nf", "lit", ".fi"])
    assert markdown.markdown(page, "x(1)") == "\n".join([
        "## Commands", "", "- `a`\\", "  about a", "  - `X`\\", "    x", "- `b`\\", "  about b\\", "  more", "",
        "```", "lit", "```", ""])
