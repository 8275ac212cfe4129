"""debian/ agrees with the rest of the tree: one version, one path for the command."""

from __future__ import annotations

import re
import tomllib

import eximhook
from eximhook.exim import debian

from .conftest import CHECKOUT


def test_the_package_version_is_eximhooks() -> None:
    changelog = (CHECKOUT / "debian" / "changelog").read_text()
    first = re.match(r"eximhook \(([^)+~-]+)", changelog)
    assert first, "debian/changelog starts with an eximhook entry"
    pyproject = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]["version"]
    assert first.group(1) == eximhook.__version__ == pyproject


def test_the_units_the_snippets_and_setup_exim4_name_the_packages_paths() -> None:
    units = sorted((CHECKOUT / "debian").glob("eximhook.eximhook-*.service"))
    assert units
    for unit in units:
        [start] = re.findall(r"^ExecStart=(\S+)", unit.read_text(), re.M)
        assert start == debian.PACKAGE_SCRIPT, unit.name
    macros = (CHECKOUT / "exim-snippets" / "macros.conf").read_text()
    assert f"\nEXIMHOOK_CMD = /usr/bin/python3 -IS {debian.PACKAGE_SCRIPT} " in macros
    install = dict(line.split() for line in (CHECKOUT / "debian" / "eximhook.install").read_text().splitlines())
    assert "/" + install["exim-snippets/*.conf"] == debian.SNIPPETS, "where setup-exim4 and the snippets look"
