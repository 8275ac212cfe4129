"""The release and package tests' systems: made once per run, each from Debian's archive.

- ``host_debs``: the package built on this machine (Debian 12), and an upgrade of it;
- ``trixie_dev``: Debian 13 with eximhook's test install (contrib/install.sh --dev), in
  which the suite runs again and the trixie package and its upgrade are built.

A fresh system for each story (``Chroot.make``) is made by the test itself."""

from __future__ import annotations

import email.utils
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from .chroot import Chroot, copy_checkout

CHECKOUT = Path(__file__).resolve().parents[2]
UPGRADE = "+upgrade1"
# the line the upgrade's default config gains, so that dpkg must choose between it and
# the admin's edited one
NEW_DEFAULT = "# a line only the upgrade's default config has\n"


@dataclass(frozen=True)
class Debs:
    first: Path
    upgrade: Path
    lintian: str  # what build-deb.sh printed of lintian's findings


def upgrade_tree(target: Path) -> Path:
    """The checkout as a newer package version with a changed default config."""
    copy_checkout(CHECKOUT, target)
    changelog = target / "debian" / "changelog"
    text = changelog.read_text()
    version = re.match(r"eximhook \(([^)]+)\)", text)
    assert version, "debian/changelog starts with an entry"
    stamp = re.search(r"^ -- (.*>)  (.*)$", text, re.M)
    assert stamp
    later = email.utils.format_datetime(email.utils.parsedate_to_datetime(stamp.group(2)) + timedelta(days=1))
    changelog.write_text(f"eximhook ({version.group(1)}{UPGRADE}) unstable; urgency=medium\n\n"
                         f"  * The package tests' upgrade.\n\n -- {stamp.group(1)}  {later}\n\n{text}")
    toml = target / "contrib" / "eximhook.toml"
    toml.write_text(toml.read_text() + NEW_DEFAULT)
    return target


def build(run: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """(the .deb's path, lintian's lines) from build-deb.sh's output."""
    out = run.stdout
    deb = re.findall(r"^build-deb: (\S+\.deb)$", out, re.M)
    assert deb, out[-4000:]
    return deb[-1], "\n".join(line for line in out.splitlines() if re.match(r"[EWIPNX]: eximhook", line))


@pytest.fixture(scope="session")
def host_debs(tmp_path_factory: pytest.TempPathFactory) -> Debs:
    out = tmp_path_factory.mktemp("debs")

    def build_here(tree: Path) -> tuple[str, str]:
        done = subprocess.run(["bash", str(tree / "contrib" / "build-deb.sh"), str(out)], capture_output=True,
                              text=True, timeout=1200, check=False)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        return build(done)

    first, lintian = build_here(CHECKOUT)
    upgrade, _ = build_here(upgrade_tree(tmp_path_factory.mktemp("upgrade") / "eximhook"))
    return Debs(Path(first), Path(upgrade), lintian)


@pytest.fixture(scope="session")
def trixie_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chroot]:
    chroot = Chroot.make(tmp_path_factory.mktemp("trixie-dev") / "root", "trixie")
    copy_checkout(CHECKOUT, chroot.root / "srv" / "eximhook")
    chroot.apt_install("ca-certificates")
    # the checkout outside /root: Exim, as Debian-exim, reads the snippets from it
    chroot.run("cd /srv/eximhook && bash contrib/install.sh --dev >/dev/null")
    yield chroot


@pytest.fixture(scope="session")
def trixie_debs(trixie_dev: Chroot, tmp_path_factory: pytest.TempPathFactory) -> Debs:
    upgrade_tree(trixie_dev.root / "srv" / "upgrade")
    first, lintian = build(trixie_dev.run("bash /srv/eximhook/contrib/build-deb.sh /srv/dist"))
    upgrade, _ = build(trixie_dev.run("bash /srv/upgrade/contrib/build-deb.sh /srv/dist"))
    return Debs(trixie_dev.root / first.lstrip("/"), trixie_dev.root / upgrade.lstrip("/"), lintian)
