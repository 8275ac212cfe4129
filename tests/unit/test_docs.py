"""The docs: docs/ documents every subcommand, snippet, exit code and config key (the
commands, snippets and exit codes in the pages people write, the keys in the generated
configuration reference too); every relative link in README.md, CHANGELOG.md and docs/
leads to a file and, with an #anchor, to a heading in it; every file of this tree the
docs name exists; README stays the short front door; and the docs explain by what
eximhook does, not by seed or issue numbers (those are CHANGELOG's)."""

from __future__ import annotations

import argparse
import re
from dataclasses import fields
from pathlib import Path

import pytest

from eximhook.cli import build_parser
from eximhook.config.load import _SECTIONS
from eximhook.errors import Exit

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())  # the checkout
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
# The pages people write (docs/reference/ is generated: tests/test_markdown.py)
WRITTEN = sorted(p for p in DOCS.rglob("*.md") if REFERENCE not in p.parents)
EVERY_PAGE = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(DOCS.rglob("*.md"))]
README_MAX_LINES = 250
TREE = ("eximhook", "tests", "bench", "contrib", "debian", "exim-snippets", "requirements")  # paths the docs name


def _text(paths: list[Path]) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in paths)


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def subcommands() -> list[str]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    raise AssertionError("no subcommands")


def test_there_are_pages_to_check() -> None:
    assert len(WRITTEN) >= 10 and (REFERENCE / "commands.md").exists() and (REFERENCE / "configuration.md").exists()


@pytest.mark.parametrize("name", subcommands())
def test_subcommand_in_docs(name: str) -> None:
    assert re.search(rf"eximhook( --config \S+)? {re.escape(name)}\b", _text(WRITTEN)), (
        f"no page of docs/ (but the generated reference) says `eximhook {name}`")
    assert f"### `eximhook {name}`" in (REFERENCE / "commands.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "exim-snippets").iterdir()))
def test_snippet_in_docs(name: str) -> None:
    assert f"exim-snippets/{name}" in _text(WRITTEN), f"no page of docs/ names exim-snippets/{name}"


@pytest.mark.parametrize("name", [n for n in vars(Exit) if n.isupper()])
def test_exit_code_in_docs(name: str) -> None:
    assert re.search(rf"\|\s*{getattr(Exit, name)}\s*\|", _text(WRITTEN)), f"exit code {name} missing from docs/"


def _config_keys() -> list[str]:
    return [f"{section}.{f.metadata['toml'] or f.name}" for section, cls in _SECTIONS.items() for f in fields(cls)]


def _reference_sections() -> dict[str, str]:
    """The generated configuration reference, by section: ``[store]`` -> its text."""
    text = (REFERENCE / "configuration.md").read_text(encoding="utf-8")
    parts = re.split(r"^### `\[([^\]]+)\]`$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.mark.parametrize("dotted", _config_keys())
def test_config_key_in_docs(dotted: str) -> None:
    section, key = dotted.split(".")
    body = _reference_sections().get(section, "")
    assert re.search(rf"^- `{re.escape(key)}( = .*| \(unset\))?`", body, re.M), (
        f"docs/reference/configuration.md's [{section}] lacks {key}")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, no punctuation but dashes, spaces as dashes."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _prose(text: str) -> str:
    """Markdown without its code: fenced blocks, indented blocks and code spans."""
    text = re.sub(r"^(```+|~~~+).*?^\1[ \t]*$", "", text, flags=re.M | re.S)
    text = re.sub(r"^(?: {4}|\t).*$", "", text, flags=re.M)
    return re.sub(r"(`+).+?\1", "", text, flags=re.S)


def _links() -> list[tuple[str, str]]:
    found = []
    for page in EVERY_PAGE:
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text(encoding="utf-8"))):
            if not re.match(r"[a-z]+:", target):
                found.append((_name(page), target))
    return found


@pytest.mark.parametrize(("page", "target"), _links())
def test_a_relative_link_leads_to_a_file_and_a_heading(page: str, target: str) -> None:
    path, _, anchor = target.partition("#")
    dest = (ROOT / page).parent / path if path else ROOT / page
    assert dest.exists(), f"{page} links to {target}, but there is no {path}"
    if anchor:
        assert dest.is_file() and dest.suffix == ".md", f"{page} links to #{anchor} of {path}, which is no page"
        headings = re.findall(r"^#+ (.+)$", _prose_headings(dest.read_text(encoding="utf-8")), re.M)
        assert anchor in {_anchor(h) for h in headings}, f"{page} links to {target}, but no heading has that anchor"


def _prose_headings(text: str) -> str:
    """The text with fenced code blocks taken out: a '# comment' in one is no heading."""
    return re.sub(r"^(```+|~~~+).*?^\1[ \t]*$", "", text, flags=re.M | re.S)


def test_the_link_check_sees_links() -> None:
    assert ("README.md", "docs/exim.md#your-own-config-or-an-unsplit-one-the-checklist") in _links()


@pytest.mark.parametrize("page", [_name(p) for p in [ROOT / "README.md", ROOT / "CHANGELOG.md", *WRITTEN]])
def test_the_files_the_docs_name_exist(page: str) -> None:
    """A path in this tree (eximhook/..., tests/..., contrib/...) that a page names is
    there: a module moved or a test renamed leaves no stale pointer."""
    text = (ROOT / page).read_text(encoding="utf-8")
    named = re.findall(rf"(?<![\w/.~$-])((?:{'|'.join(TREE)})/[\w./-]*[\w/])", text)
    missing = sorted({p for p in named if not (ROOT / p).exists()})
    assert not missing, f"{page} names files that are not in the tree: {', '.join(missing)}"


def test_readme_is_short() -> None:
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines < README_MAX_LINES, f"README.md has {lines} lines: it is the front door, the rest goes to docs/"


@pytest.mark.parametrize("page", [_name(p) for p in [ROOT / "README.md", *WRITTEN]])
def test_the_docs_explain_without_seed_or_issue_numbers(page: str) -> None:
    cited = re.findall(r"\b(?:seeds?|issues?) (?:#?\d+)", (ROOT / page).read_text(encoding="utf-8"), re.I)
    assert not cited, f"{page} cites {cited}: say what eximhook does, and leave the history to CHANGELOG.md"
