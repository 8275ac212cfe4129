"""README must document every subcommand, every snippet and every exit code."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from eximhook.cli import build_parser
from eximhook.errors import Exit

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def subcommands() -> list[str]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    raise AssertionError("no subcommands")


@pytest.mark.parametrize("name", subcommands())
def test_subcommand_in_readme(name: str) -> None:
    assert re.search(rf"eximhook( --config \S+)? {re.escape(name)}\b", README), f"README lacks `eximhook {name}`"


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "exim-snippets").iterdir()))
def test_snippet_in_readme(name: str) -> None:
    assert f"exim-snippets/{name}" in README


@pytest.mark.parametrize("name", [n for n in vars(Exit) if n.isupper()])
def test_exit_code_in_readme(name: str) -> None:
    assert re.search(rf"\|\s*{getattr(Exit, name)}\s*\|", README), f"exit code {name} missing from README"


def _config_keys() -> list[str]:
    from dataclasses import fields

    from eximhook.config import _SECTIONS

    return [f"{section}.{f.metadata['toml'] or f.name}" for section, cls in _SECTIONS.items() for f in fields(cls)]


@pytest.mark.parametrize("dotted", _config_keys())
def test_config_key_in_readme(dotted: str) -> None:
    section, key = dotted.split(".")
    rows = [line for line in README.splitlines() if line.startswith(f"| `[{section}]`")]
    assert rows and f"`{key}`" in rows[0], f"README's config table lacks {dotted}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, no punctuation but dashes, spaces as dashes."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@pytest.mark.parametrize("target", sorted(set(re.findall(r"\]\(#([^)]+)\)", README))))
def test_readme_link_has_its_heading(target: str) -> None:
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", README, re.M)}
    assert target in anchors, f"README links to #{target}, but no heading has that anchor"
