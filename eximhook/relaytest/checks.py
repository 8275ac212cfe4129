"""What ``eximhook check-config`` says about ``[relaytest]``: the key, the contacts
file, and the files Exim and the pipe transport need."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import ConfigError
from . import hosts, signing

if TYPE_CHECKING:
    from ..config.load import Config


def check(cfg: Config) -> list[str]:
    """Lines to print; ``ConfigError`` for what stops probing from working."""
    rt = cfg.relaytest
    if not rt.enabled:
        return ["relaytest off ([relaytest] networks is empty)"]
    signing.load_key(rt.key_file)
    needed = [(rt.key_file, "the relay-test key"), *([(rt.contacts, "the contacts file")] if rt.contacts else [])]
    for path, what in needed:
        if not _reads(path, cfg.exim.user):
            raise ConfigError(f"{path}: {what} cannot be read by {cfg.exim.user} ([exim] user), as whom `relaytest "
                              "receive` runs: chown root:Debian-exim and chmod 0640 it")
    mode = os.stat(rt.key_file).st_mode
    if mode & 0o007:
        raise ConfigError(f"{rt.key_file}: the relay-test key is readable by every local user (mode "
                          f"{mode & 0o777:04o}): whoever reads it can forge returns; chmod 0640, "
                          "chown root:Debian-exim")
    lines = [f"relaytest on: probes {', '.join(rt.networks)} on port {rt.port}, back to {rt.mailbox} "
             f"(sender {rt.sender}), open relays listed in {rt.blocked_nets}",
             f"relaytest key {rt.key_file}: ok"]
    if rt.contacts:
        try:
            entries, problems = hosts.read_contacts(rt.contacts)
        except OSError as exc:
            raise ConfigError(f"{rt.contacts}: cannot read [relaytest] contacts: {exc.strerror}") from exc
        if problems:
            raise ConfigError(f"{rt.contacts}: " + "; ".join(problems[:10]))
        lines.append(f"relaytest contacts {rt.contacts}: {len(entries)} network(s)")
    else:
        lines.append("relaytest contacts unset: only the abuse desk hears of an open relay")
    if not os.path.exists(rt.blocked_nets):
        lines.append(f"note: {rt.blocked_nets} does not exist yet; the RCPT snippet skips its check until "
                     "it does (eximhook relaytest list creates it)")
    return lines


def _reads(path: str, user: str) -> bool:
    """Do the mode bits let ``user`` read ``path``? (check-config runs as root, for whom
    everything is readable; ACLs are not looked at.) True when it cannot tell."""
    import grp
    import pwd

    try:
        st, who = os.stat(path), pwd.getpwnam(user)
    except (OSError, KeyError):
        return True  # a missing file is reported where it is read; an unknown user by [exim] user's check
    groups = {who.pw_gid, *(g.gr_gid for g in grp.getgrall() if user in g.gr_mem)}
    return bool(st.st_mode & 0o004 or (st.st_gid in groups and st.st_mode & 0o040)
                or (st.st_uid == who.pw_uid and st.st_mode & 0o400))
