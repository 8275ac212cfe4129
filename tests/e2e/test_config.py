from __future__ import annotations

from pathlib import Path

from eximhook.cli.system import _check_exim_config
from eximhook.config.load import load

from ..support.config import write_config
from ..support.fixtures import Run
from ..support.marks import needs_exim


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
