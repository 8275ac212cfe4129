"""setup-exim4's file handling on a scratch copy of a Debian layout: add writes only
its own lines, remove restores every byte, and a hook already in use is refused.
(tests/e2e/test_debian.py runs it against Debian's real exim4-config.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from eximhook import debian
from eximhook.errors import SetupError

TEXT = debian.block("/run/eximhook/eximhook.sock", "/etc/eximhook/eximhook.toml", "/var/spool/exim4/b.cdb")


def confdir(tmp_path: Path, split: bool, localmacros: bytes | None = None) -> Path:
    (tmp_path / "conf.d" / "main").mkdir(parents=True)
    (tmp_path / "conf.d" / "main" / "02_exim4-config_options").write_text(
        ".ifndef MAIN_ACL_CHECK_RCPT\nMAIN_ACL_CHECK_RCPT = acl_check_rcpt\n.endif\n")
    (tmp_path / "exim4.conf.template").write_text(
        "# comment\n.ifndef MAIN_ACL_CHECK_RCPT\nMAIN_ACL_CHECK_RCPT = acl_check_rcpt\n.endif\n")
    (tmp_path / "update-exim4.conf.conf").write_text(f"dc_use_split_config='{'true' if split else 'false'}'\n")
    if localmacros is not None:
        (tmp_path / "exim4.conf.localmacros").write_bytes(localmacros)
    return tmp_path


def snapshot(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in sorted(top.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("split", "localmacros"), [
    (True, None), (False, None), (False, b"MAIN_TLS_ENABLE = yes\n"), (False, b"MAIN_TLS_ENABLE = yes"),
    (False, b""), (False, b"\xff\xfe not utf-8\n")])
def test_remove_restores_every_byte(tmp_path: Path, split: bool, localmacros: bytes | None) -> None:
    top = confdir(tmp_path, split, localmacros)
    before = snapshot(top)
    lay = debian.layout(str(top))
    assert lay.split is split
    [changed] = debian.add(lay, TEXT)
    assert changed == lay.main_file and debian.is_added(lay)
    assert all(line in Path(changed).read_text(errors="replace").splitlines() for line in TEXT.splitlines())
    if localmacros:
        assert Path(changed).read_bytes().startswith(localmacros), "the admin's lines stay first, untouched"
    with pytest.raises(SetupError, match="set up already"):
        debian.add(lay, TEXT)
    assert debian.remove(lay) == [lay.main_file]
    assert snapshot(top) == before
    assert debian.remove(lay) == [], "nothing left to remove"


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("macro", ["CHECK_DATA_LOCAL_ACL_FILE", "WHITELIST_LOCAL_DENY_LOCAL_ACL_FILE"])
def test_a_hook_in_use_is_refused(tmp_path: Path, split: bool, macro: str) -> None:
    top = confdir(tmp_path, split, f"{macro} = /etc/exim4/my-acl\n".encode())
    if split:
        (top / "conf.d" / "main" / "00_local").write_text(f"{macro} = /etc/exim4/my-acl\n")
    before = snapshot(top)
    with pytest.raises(SetupError, match=f"sets {macro}"):
        debian.add(debian.layout(str(top)), TEXT)
    assert snapshot(top) == before


def test_not_debian(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="Debian's exim4-config"):
        debian.layout(str(tmp_path))
