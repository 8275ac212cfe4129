"""The Debian package, as a new admin meets it: `apt install ./eximhook_*.deb` on a fresh
Debian 12 and a fresh Debian 13 (dependencies from Debian's archive), the demo's story
against the installed units and commands (debian/tests/story), an upgrade that keeps
the admin's edited config, remove, and purge.

Each release's package is built on that release (a unit file's place differs), the
upgrade too: moving a file between /lib and /usr/lib in an upgrade can lose it on a
merged-/usr system."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from ..support.marks import needs_root
from .chroot import Chroot
from .conftest import CHECKOUT, NEW_DEFAULT, Debs

# systems made by debootstrap, a package built: each step has a timeout of its own
# (chroot.py, conftest.py), pytest-timeout's default (300 s) is far too short for them
pytestmark = [pytest.mark.release, needs_root, pytest.mark.timeout(3600)]

APT = "apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"


def test_the_bookworm_build_is_reproducible(host_debs: Debs, tmp_path: Path) -> None:
    """Two builds of one tree: the same files with the same contents (and timestamps:
    dpkg takes them from debian/changelog)."""
    done = subprocess.run(["bash", str(CHECKOUT / "contrib" / "build-deb.sh"), str(tmp_path)], capture_output=True,
                          text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stdout[-3000:]
    again = tmp_path / host_debs.first.name
    assert again.read_bytes() == host_debs.first.read_bytes() or contents(again) == contents(host_debs.first)


def running_in(system: Chroot) -> list[str]:
    """The processes whose root is the chroot's."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "root")) == system.root:
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue  # gone, or a kernel thread
    return found


def contents(deb: Path) -> dict[str, bytes]:
    """Every member of the package's data and control archives, by name."""
    out = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    ctrl = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True).stdout
    found: dict[str, bytes] = {}
    for prefix, blob in (("data", out), ("control", ctrl)):
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            for member in tar:
                f = tar.extractfile(member) if member.isfile() else None
                found[f"{prefix}:{member.name}:{member.mode:o}:{member.uname}:{member.gname}"] = (
                    f.read() if f else member.linkname.encode())
    return found


def test_lintian_finds_no_error(host_debs: Debs, trixie_debs: Debs) -> None:
    # build-deb.sh fails on an error; what is left are warnings and notes, each
    # overridden with its reason in debian/eximhook.lintian-overrides or listed here
    for lines in (host_debs.lintian, trixie_debs.lintian):
        assert not [line for line in lines.splitlines() if line.startswith(("E:", "W:"))], lines


@pytest.mark.parametrize("release", ["bookworm", "trixie"])
def test_install_story_upgrade_remove_purge(release: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    debs: Debs = request.getfixturevalue("host_debs" if release == "bookworm" else "trixie_debs")
    system = Chroot.make(tmp_path / "root", release)
    for deb in (debs.first, debs.upgrade):
        system.copy_in(deb, f"/root/{deb.name}")
    system.copy_in(CHECKOUT / "debian" / "tests" / "story", "/root/story")

    # install, as README says; apt brings what it needs from Debian's archive
    system.run(f"apt-get update -qq && apt-get install -y -q ./root/{debs.first.name} > /root/install.log")
    installed = system.run("dpkg-query -W -f='${Status} ${Version}' eximhook; echo; eximhook --help | head -1")
    assert "install ok installed" in installed.stdout
    for unit in ("eximhook-serve.socket", "eximhook-serve.service", "eximhook-maintain.timer"):
        # enabled by the package, as Debian does with services (started only where systemd runs)
        assert system.run(f"ls /etc/systemd/system/*.wants/{unit}", check=False).returncode == 0, unit
    assert system.run("ls /etc/systemd/system/*.wants/eximhook-relaytest.service", check=False).returncode != 0
    assert system.run("man -w eximhook eximhook.toml 2>/dev/null || ls /usr/share/man/man8/eximhook.8.gz "
                      "/usr/share/man/man5/eximhook.toml.5.gz").returncode == 0

    story = system.run("python3 /root/story", net=False, check=False, timeout=900)
    assert story.returncode == 0, story.stdout[-8000:]
    assert running_in(system) == [], "the story stops what it started (Exim, the daemon)"

    # upgrade: the admin's edited config stays, the new default lands beside it
    system.run(f"{APT} ./root/{debs.upgrade.name} > /root/upgrade.log")
    etc = system.root / "etc" / "eximhook"
    assert "limit = 5" in (etc / "eximhook.toml").read_text(), "the admin's edit survives the upgrade"
    assert (etc / "eximhook.toml.dpkg-dist").read_text().endswith(NEW_DEFAULT)
    kept = system.run("stat -c '%U:%G %a' /etc/eximhook/eximhook.toml && eximhook setup-exim4 test | head -3 && "
                      "update-exim4.conf && exim4 -bV >/dev/null && eximhook history relay 127.0.0.3")
    assert kept.stdout.startswith("root:Debian-exim 640\n"), kept.stdout
    assert "acl_smtp_rcpt = acl_eximhook_rcpt" in kept.stdout, "an upgrade leaves eximhook wired in"
    assert "block" in kept.stdout, "the store's history survives the upgrade"

    # remove, while a file of the admin's includes a snippet: refused, or Exim's config
    # would stop building when the snippets go
    localmacros = system.root / "etc" / "exim4" / "exim4.conf.localmacros"
    wired = localmacros.read_text()
    localmacros.write_text(wired + ".include /usr/share/eximhook/exim-snippets/tls-auth.conf\n")
    refused = system.run("apt-get remove -y -q eximhook 2>&1", check=False)
    assert refused.returncode != 0 and "include(s) eximhook's snippets" in refused.stdout, refused.stdout[-3000:]
    system.run("dpkg-query -W -f='${Status}' eximhook | grep -q 'install ok installed' && update-exim4.conf")
    localmacros.write_text(wired)

    # remove: eximhook is taken out of Exim's config, which still builds; data stays
    removed = system.run("apt-get remove -y -q eximhook 2>&1")
    assert "eximhook removed from the" in removed.stdout, removed.stdout
    system.run("update-exim4.conf && exim4 -bV > /dev/null && ! grep -rl eximhook /etc/exim4 /var/lib/exim4")
    assert (etc / "eximhook.toml").exists() and (system.root / "var/spool/exim4/eximhook/data.mdb").exists()

    # purge: nothing of eximhook's left, and Exim's config builds
    system.run("apt-get purge -y -q eximhook > /root/purge.log 2>&1 && update-exim4.conf && exim4 -bV > /dev/null")
    found = system.run("find / -xdev \\( -path /proc -o -path /root \\) -prune -o -name '*eximhook*' -print")
    assert found.stdout.split() == [], found.stdout
    assert "eximhook" not in system.run("dpkg-statoverride --list").stdout
    assert not list((system.root / "var" / "spool" / "exim4").glob("blocked*"))
