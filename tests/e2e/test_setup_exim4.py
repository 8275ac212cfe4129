"""setup-exim4's file handling on a scratch copy of a Debian layout: add writes only
its own lines, remove restores every byte, and a hook already in use is refused.
(tests/e2e/test_debian.py runs it against Debian's real exim4-config.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from eximhook.config.load import Config, load
from eximhook.errors import SetupError
from eximhook.exim import debian
from eximhook.relaytest import nets
from eximhook.storage.store import Store

from ..support import harness as h
from ..support.config import write_config
from ..support.marks import needs_exim
from ..support.paths import EXIM, SNIPPETS

TEXT = debian.block(Config())


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


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("option", ["event_action", "acl_smtp_quit"])
def test_a_main_option_in_use_is_refused(tmp_path: Path, split: bool, option: str) -> None:
    """Set twice, Exim refuses the whole config; event_action too, though block() sets it
    only on Exim 4.97 and later: the config would stop building on the upgrade."""
    top = confdir(tmp_path, split)
    line = f"{option} = ${{if eq{{$event_name}}{{msg:complete}}{{}}}}\n"
    if split:
        (top / "conf.d" / "main" / "00_local").write_text(line)
    else:
        (top / "exim4.conf.template").write_text(line + "begin acl\n")
    before = snapshot(top)
    with pytest.raises(SetupError, match=f"sets the main option {option}, "):
        debian.add(debian.layout(str(top)), TEXT)
    assert snapshot(top) == before


@pytest.mark.parametrize("split", [True, False])
def test_a_transports_event_action_is_not_the_main_one(tmp_path: Path, split: bool) -> None:
    top = confdir(tmp_path, split)
    transport = "remote_smtp:\n  driver = smtp\n  event_action = ${if eq{$event_name}{msg:delivery}{}}\n"
    if split:
        (top / "conf.d" / "transport").mkdir()
        (top / "conf.d" / "transport" / "30_local").write_text(transport)
    else:
        (top / "exim4.conf.template").write_text("begin acl\nbegin transports\n" + transport)
    lay = debian.layout(str(top))
    assert debian.add(lay, TEXT) == [lay.main_file]


def test_not_debian(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="Debian's exim4-config"):
        debian.layout(str(tmp_path))


def expand(conf: Path, *macros: str) -> list[str]:
    """What Exim makes of ``macros`` with the config ``conf``."""
    out = subprocess.run([EXIM, "-C", str(conf), "-be"], input="\n".join(macros) + "\n", capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return [line.removeprefix("> ") for line in out.splitlines() if line.startswith("> ")][:len(macros)]


@needs_exim
@pytest.mark.parametrize("how", ["by-hand", "setup-exim4"])
def test_exim_reads_blocked_nets_where_eximhook_writes_it(tmp_path: Path, how: str) -> None:
    """With [store] mirror_dir moved and neither [relaytest] blocked_nets nor
    EXIMHOOK_NETS_FILE set, the snippets' lookup reads the file the relay-test writer
    writes: by hand, beside EXIMHOOK_CDB, which README has the admin point at the mirror
    directory; with setup-exim4, from the lines it writes. Also with blocked_nets set."""
    for name in ("eximhook", "other", "mirror"):
        (tmp_path / name).mkdir()
    config = write_config(tmp_path / "eximhook", settings={"store.mirror_dir": str(tmp_path / "mirror")})
    cfg = load(str(config))
    assert cfg.relaytest.blocked_nets == f"{tmp_path}/mirror/blocked.nets"
    head = (f"EXIMHOOK_CDB = {tmp_path}/mirror/blocked_subjects.cdb\n" if how == "by-hand" else
            debian.block(cfg, snippets=SNIPPETS))
    conf = tmp_path / "exim.conf"
    conf.write_text(f"{head}\n.include {SNIPPETS}/macros.conf\nspool_directory = {tmp_path}/spool\n"
                    if how == "by-hand" else f"{head}\nspool_directory = {tmp_path}/spool\n")
    with Store(cfg.store.path) as store:
        nets.sync(store, cfg.relaytest.blocked_nets)
    assert expand(conf, "EXIMHOOK_NETS_FILE", "${if exists{EXIMHOOK_NETS_FILE}{there}{missing}}") == [
        cfg.relaytest.blocked_nets, "there"]
    if how == "setup-exim4":
        elsewhere = write_config(tmp_path / "other", settings={"relaytest.blocked_nets": f"{tmp_path}/b.nets"})
        head = debian.block(load(str(elsewhere)), snippets=SNIPPETS)
        conf.write_text(f"{head}\nspool_directory = {tmp_path}/spool\n")
        assert expand(conf, "EXIMHOOK_NETS_FILE") == [f"{tmp_path}/b.nets"]


@needs_exim
def test_the_block_counts_failed_auth_the_way_this_exim_can(tmp_path: Path) -> None:
    """The lines setup-exim4 writes, as this Exim reads them: the auth:fail event where
    Exim has it (4.97 and later), the QUIT and not-QUIT ACLs where not (4.96)."""
    conf = tmp_path / "exim.conf"
    conf.write_text(debian.block(load(str(write_config(tmp_path))), snippets=str(SNIPPETS)))
    shown = subprocess.run([EXIM, "-C", str(conf), "-bP", "acl_smtp_auth", "event_action", "acl_smtp_quit",
                            "acl_smtp_notquit"], capture_output=True, text=True, check=True).stdout.splitlines()
    if h.auth_event():
        assert shown == ["acl_smtp_auth = acl_eximhook_auth",
                         "event_action = ${if eq{$event_name}{auth:fail}{${acl{acl_eximhook_authfail}}}}",
                         "acl_smtp_quit = ", "acl_smtp_notquit = "]
    else:
        assert shown == ["acl_smtp_auth = acl_eximhook_auth", "event_action = ",
                         "acl_smtp_quit = acl_eximhook_quit", "acl_smtp_notquit = acl_eximhook_notquit"]


@pytest.mark.parametrize("split", [True, False])
def test_a_file_of_the_admins_that_includes_the_snippets_is_found(tmp_path: Path, split: bool) -> None:
    """The package's prerm (setup-exim4 remove --uninstall) refuses while one does: with
    the snippets deleted, Exim's configuration would stop building (README told admins
    to include tls-auth.conf once). eximhook's own lines and comments do not count."""
    top = confdir(tmp_path, split, b"# .include /usr/share/eximhook/exim-snippets/tls-auth.conf (commented out)\n")
    lay = debian.layout(str(top))
    debian.add(lay, TEXT)
    assert debian.includes_elsewhere(lay) == [], "only eximhook's own block and a comment"
    mine = top / ("conf.d/main/000_localmacros" if split else "exim4.conf.localmacros")
    with mine.open("a") as f:
        f.write("MAIN_TLS_ENABLE = yes\n.include /usr/share/eximhook/exim-snippets/tls-auth.conf\n")
    assert debian.includes_elsewhere(lay) == [str(mine)]


def test_remove_keeps_the_admins_lines_in_a_file_add_created(tmp_path: Path) -> None:
    top = confdir(tmp_path, split=False)
    lay = debian.layout(str(top))
    debian.add(lay, TEXT)
    with open(lay.main_file, "a") as f:
        f.write("MAIN_TLS_ENABLE = yes\n")
    debian.remove(lay)
    assert Path(lay.main_file).read_text() == "MAIN_TLS_ENABLE = yes\n", "without add's remark that it deletes it"


DEBIAN_TRANSPORTS = {  # Debian's remote smtp transports, cut short, and a file after them
    "30_exim4-config_remote_smtp": "### transport/30_exim4-config_remote_smtp\nremote_smtp:\n  driver = smtp\n"
                                   ".ifdef REMOTE_SMTP_HELO_DATA\n  helo_data=REMOTE_SMTP_HELO_DATA\n.endif\n",
    "30_exim4-config_remote_smtp_smarthost": "remote_smtp_smarthost:\n  driver = smtp\n  multi_domain\n",
    "35_exim4-config_address_directory": "address_directory:\n  driver = appendfile\n",
}


def transports(top: Path, extra: dict[str, str] | None = None) -> Path:
    (top / "conf.d" / "transport").mkdir()
    for name, text in {**DEBIAN_TRANSPORTS, **(extra or {})}.items():
        (top / "conf.d" / "transport" / name).write_text(text)
    return top / "conf.d" / "transport"


def joined(directory: Path) -> str:
    """The section as update-exim4.conf joins it: names in C order, NAME.rul for NAME."""
    names = sorted((p.name for p in directory.iterdir() if "." not in p.name), key=str.encode)
    return "".join(((directory / f"{n}.rul") if (directory / f"{n}.rul").exists() else directory / n).read_text()
                   for n in names)


def test_split_layout_counts_delivery_outcomes_in_debians_transports(tmp_path: Path) -> None:
    """A file named after each remote smtp transport's own comes right after it, and
    so continues it with the event_action lines; remove restores every byte."""
    top = confdir(tmp_path, split=True)
    section = transports(top)
    before = snapshot(top)
    lay = debian.layout(str(top))
    assert debian.transport_files(lay)[1] == []
    changed = debian.add(lay, TEXT)
    assert changed == [lay.main_file, str(section / "30_exim4-config_remote_smtp_eximhook"),
                       str(section / "30_exim4-config_remote_smtp_smarthost_eximhook")]
    text = joined(section)
    for transport, after in (("remote_smtp", "remote_smtp_smarthost"), ("remote_smtp_smarthost", "address_directory")):
        own = text[text.index(f"\n{transport}:\n"):text.index(f"\n{after}:\n")]
        assert own.count(debian.EVENT_LINES) == 1, f"{transport} ends with the event lines"
    assert debian.remove(lay) == changed
    assert snapshot(top) == before


@pytest.mark.parametrize(("extra", "note"), [
    ({"30_exim4-config_remote_smtp_dkim": "# the admin's\n"}, "is not the file just before"),
    ({"30_exim4-config_remote_smtp.rul": "remote_smtp:\n  driver = smtp\n  event_action = ${if eq{1}{1}{}}\n"},
     "sets event_action already"),
    ({"30_exim4-config_remote_smtp": "remote_smtp:\n  driver = smtp\nother:\n  driver = smtp\n"},
     "does not end inside the transport"),
], ids=["a-file-between", "its-own-event-action", "another-transport-after"])
def test_a_transport_that_cannot_be_continued_is_left_to_the_admin(tmp_path: Path, extra: dict[str, str],
                                                                   note: str) -> None:
    top = confdir(tmp_path, split=True)
    section = transports(top, extra)
    lay = debian.layout(str(top))
    wired, notes = debian.transport_files(lay)
    assert [t for t, _ in wired] == ["remote_smtp_smarthost"]
    [said] = notes
    assert said.startswith("remote_smtp: ") and note in said
    before = snapshot(top)
    assert debian.add(lay, TEXT)[1:] == [str(section / "30_exim4-config_remote_smtp_smarthost_eximhook")]
    debian.remove(lay)
    assert snapshot(top) == before


def test_unsplit_layout_leaves_the_transports_to_the_admin(tmp_path: Path) -> None:
    """The unsplit template is a conffile: add writes only its block, and says what to add."""
    lay = debian.layout(str(confdir(tmp_path, split=False)))
    wired, notes = debian.transport_files(lay)
    assert wired == [] and [n.split(":")[0] for n in notes] == list(debian.TRANSPORTS)
    assert debian.add(lay, TEXT) == [lay.main_file]


@needs_exim
def test_the_event_lines_count_only_with_the_macros(tmp_path: Path) -> None:
    """As Exim reads them: with eximhook's macros, the transport's event_action is
    EXIMHOOK_DELIVERY_EVENT; without them (macros.conf gone, the lines left), none,
    rather than a text that would refuse every connection."""
    transport = f"begin transports\nremote_smtp:\n  driver = smtp\n{debian.EVENT_LINES}"
    conf = tmp_path / "exim.conf"
    shown = {}
    for with_macros in (True, False):
        head = f"EXIMHOOK_SOCKET = {tmp_path}/sock\n.include {SNIPPETS}/macros.conf\n" if with_macros else ""
        conf.write_text(f"{head}spool_directory = {tmp_path}/spool\n{transport}")
        options = subprocess.run([EXIM, "-C", str(conf), "-bP", "transport", "remote_smtp"], capture_output=True,
                                 text=True, check=True).stdout.splitlines()
        shown[with_macros] = next(o for o in options if o.startswith("event_action ="))
    assert shown[True].startswith("event_action = ${if and{{def:acl_m_ns}") and f"{tmp_path}/sock" in shown[True]
    assert shown[False] == "event_action = "
