from __future__ import annotations

from pathlib import Path

from eximhook.cli.checks import _check_exim_config
from eximhook.config.load import load

from ..support.config import write_config
from ..support.fixtures import Run
from ..support.marks import needs_exim
from ..support.paths import SNIPPETS


@needs_exim
def test_check_config_warns_of_an_exim_config_that_drops_root(tmp_path: Path, cli: Run) -> None:
    """An [exim] config that is not in Debian's trusted_configs (nor sets
    deliver_drop_privilege) makes every `exim -C` the Exim user runs for eximhook write
    "exim user lost privilege for using -C option" to the paniclog: check-config says
    so, naming the file and the fixes, and is quiet once either fix is in."""
    conf = tmp_path / "exim.conf"
    conf.write_text(f"spool_directory = {tmp_path}/spool\n")
    config = write_config(tmp_path, settings={"exim.config": str(conf)})
    code, out, _ = cli("check-config", config_path=config)
    assert code == 0 and f"warning: [exim] config {conf} is not listed in /etc/exim4/trusted_configs" in out
    assert "exim user lost privilege" in out and "deliver_drop_privilege = true" in out
    cfg = load(str(config))
    listing = tmp_path / "trusted_configs"
    listing.write_text(f"# configs the Exim user may name\n/etc/exim4/other.conf\n   {conf}\n")
    listing.chmod(0o644)
    assert _check_exim_config(cfg, str(listing)) == []
    for mode, text in ((0o646, f"{conf}\n"), (0o644, f"{conf}.old\n"), (0o644, f"# {conf}\n")):
        listing.write_text(text)
        listing.chmod(mode)  # writable by others, or the file is not named: not trusted
        [warning] = _check_exim_config(cfg, str(listing))
        assert warning.startswith(f"warning: [exim] config {conf} is not listed in {listing}")
    conf.write_text(f"spool_directory = {tmp_path}/spool\ndeliver_drop_privilege = true\n")
    assert cli("export", config_path=config)[0] == 0  # the mirror files: no warning of their absence either
    code, out, _ = cli("check-config", config_path=config)
    assert code == 0 and "warning:" not in out and str(conf) not in out


# Debian's plain_server and login_server, as docs/signals.md wires them (the check beside
# the password's), and the wiring that takes any password (the macro alone)
PASSWORDS = "${extract{1}{:}{${lookup{$auth2}lsearch{CONFDIR/passwd}{$value}{*:*}}}}"
BESIDE = '"${if and{{bool{EXIMHOOK_ALLOWED_PLAIN}}{crypteq{$auth3}{' + PASSWORDS + '}}}{1}{0}}"'
ALONE = "EXIMHOOK_ALLOWED_PLAIN"


def exim_config(tmp_path: Path, plain: str | None, dovecot: bool = False) -> Path:
    """An Exim config with the snippets' macros and a PLAIN authenticator whose
    server_condition is ``plain`` (None: none), or dovecot's with the macro alone."""
    conf = tmp_path / "exim.conf"
    auth = "" if plain is None else (
        f"plain_server:\n  driver = plaintext\n  public_name = PLAIN\n  server_prompts = :\n"
        f"  server_condition = {plain}\n  server_set_id = $auth2\n")
    if dovecot:
        auth += ("dovecot_plain:\n  driver = dovecot\n  public_name = PLAIN\n  server_socket = /run/dovecot/auth\n"
                 f"  server_condition = {ALONE}\n  server_set_id = $auth1\n")
    conf.write_text(f"CONFDIR = {tmp_path}\nEXIMHOOK_SOCKET = {tmp_path}/eximhook.sock\n"
                    f".include {SNIPPETS}/macros.conf\nspool_directory = {tmp_path}/spool\n"
                    f"deliver_drop_privilege = true\nbegin authenticators\n{auth}")
    return conf


@needs_exim
def test_check_config_warns_of_an_authenticator_that_takes_any_password(tmp_path: Path, cli: Run) -> None:
    """EXIMHOOK_ALLOWED_PLAIN alone in a plaintext authenticator's server_condition is
    its whole check: check-config says any password logs in. Beside the password's
    check, or alone in dovecot's (which checks the password first), it is right; and in
    no authenticator, with the login limit enforced, a login block refuses nothing."""
    def warnings(plain: str | None, *, dovecot: bool = False, enforced: bool = False) -> list[str]:
        settings: dict[str, object] = {"exim.config": str(exim_config(tmp_path, plain, dovecot))}
        if enforced:
            settings["limits.login.authfail.mode"] = "enforce"
        cfg = load(str(write_config(tmp_path, settings=settings)))
        return _check_exim_config(cfg)

    [alone] = warnings(ALONE)
    assert alone.startswith("warning: authenticator plain_server (plaintext): its server_condition is "
                            "EXIMHOOK_ALLOWED_PLAIN or _LOGIN alone") and "ANY password logs in" in alone
    assert warnings(BESIDE) == [] and warnings(BESIDE, enforced=True) == []
    assert warnings(None, dovecot=True, enforced=True) == [], "dovecot checks the password before the macro"
    [refuses_nothing] = warnings('"${if eq{$auth3}{secret}{1}{0}}"', enforced=True)
    assert "[limits.login.authfail] or [limits.all.authfail] is enforced, but no authenticator (plain_server) " \
        "checks" in refuses_nothing
    assert warnings('"${if eq{$auth3}{secret}{1}{0}}"') == [], "in shadow mode a login block refuses nothing anyway"
    assert warnings(None, enforced=True) == [], "no AUTH offered"
    code, out, _ = cli("check-config", config_path=write_config(tmp_path, settings={
        "exim.config": str(exim_config(tmp_path, ALONE))}))
    assert code == 0 and "ANY password logs in" in out
