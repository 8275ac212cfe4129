"""``eximhook check-config``: the config as eximhook reads it, in words, and what it
finds wrong around it (the templates and lookup files, the secrets' permissions, the
Exim config's trust and authenticators)."""

from __future__ import annotations

import argparse
import os

from ..backends import cluster
from ..config.load import Config
from ..errors import ConfigError, Exit, ServeError
from ..model.policy import UNITS
from ..model.subjects import escape
from ..notify import send as notify_mod
from ..periods import format_period
from ..storage import mirror

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..exim.queue import Exim


def check_config(cfg: Config, opts: argparse.Namespace) -> int:
    from ..relaytest.checks import check as check_relaytest

    mail = _check_mail(cfg)
    mail += check_relaytest(cfg)
    secrets = _check_password_file(cfg) + [f"warning: {text}" for text in exposed_secrets(cfg) + unsafe_config(cfg)]
    if not _readable_by(cfg.path, cfg.exim.user):
        secrets.append(f"warning: [exim] user {cfg.exim.user} cannot read {cfg.path}: the hooks and eximhook serve "
                       f"run as that user (chown root:{cfg.exim.user}, chmod 0640)")
    cdb = os.path.join(cfg.store.mirror_dir, mirror.CDB_FILE)
    if not os.path.exists(cdb):
        secrets.append(f"warning: {cdb} does not exist yet: Exim's cdb lookup of it fails, and the snippets answer "
                       "451, until it does: run eximhook export (eximhook serve writes it when it starts)")
    print(f"config {cfg.path}: ok")
    print(f"  store {cfg.store.path}, mirrors in {cfg.store.mirror_dir}")
    if cluster.shares(cfg):
        from ..backends.connect import describe

        print(f"  eximhook serve counts and blocks in {describe(cfg.store)} (calls time out after "
              f"{cfg.store.redis_timeout:g}s) as relay {cfg.store.node!r}, and mirrors its blocks into the store; "
              "the hooks count there")
    for line in secrets:
        print(f"  {line}")
    for ns, table_ in cfg.policies.items():
        for name, policy in table_.items():
            if policy.windows:
                windows = " or ".join(f"more than {lim} {UNITS[name]}" + (
                    f" in {format_period(per)}" if policy.adds != "score" else " (the enforced counters')")
                    + (f" once {policy.minimum} are counted" if policy.adds == "ratio" else "")
                    for lim, per in policy.windows)
                verb = "blocks" if policy.enforced else "is recorded as a would-block (shadow mode)"
                per = f" from one IPv4 /{cfg.net.ipv4_prefix} or IPv6 /{cfg.net.ipv6_prefix}" if ns == "net" else ""
                print(f"  limits.{ns}.{name}: {windows}{per} {verb}")
    for (ns, name), entries in cfg.overrides.items():
        for pattern, policy in entries:
            windows = " or ".join(f"{lim} in {format_period(per)}" for lim, per in policy.windows) or "not counted"
            print(f"  overrides.{ns}.{pattern!r}.{name}: {windows} ({policy.mode})")
    for ns, exempt in cfg.exempt.items():
        print(f"  exempt {ns}: {', '.join(repr(p) for p, _ in exempt) or 'none'} (counted, never blocked by a limit)")
    for line in _customers_and_logins(cfg):
        print(f"  {line}")
    print(f"  {_bounds(cfg)}")
    sp = cfg.spool
    print(f"  spool guard: a blocked subject's mail is refused, not frozen, below {sp.floor} KiB free in "
          f"{sp.directory} or below {sp.fraction:g} x the free space when its block started")
    ex = cfg.expiry
    print("  expiry: off, an admin lifts every block" if not ex.after else
          f"  expiry: blocks {'(manual ones too) ' if ex.manual else 'by a limit '}lift after "
          f"{format_period(ex.after)}, x{ex.escalate:g} for each repeat within {format_period(ex.forget)}, "
          f"at most {format_period(ex.longest)}; " + ("even with frozen mail" if ex.lift_frozen else
                                                       "not while frozen mail waits for review"))
    print(f"  notify {cfg.notify.to} via {' '.join(cfg.notify.sendmail)}; " + (
        f"after {cfg.notify.digest_after} mails about one namespace's blocks within "
        f"{format_period(cfg.notify.digest_every)}, one digest per {format_period(cfg.notify.digest_every)}"
        if cfg.notify.digest() else "every block its own mail (digests off)"))
    for line in mail:
        print(f"  {line}")
    print(f"  hooks fail {cfg.hooks.check} (check-blocked), {cfg.hooks.record} (record-invalid)")
    print(f"  eximhook serve on {cfg.serve.socket}, answering within {cfg.serve.timeout:g}s")
    from ..serve.sockets import ping

    try:
        ping(cfg.serve.socket, min(cfg.serve.timeout, 1.0))
        # it read its config when it started: an edit reaches it with SIGHUP, not by itself
        print("  eximhook serve is running with the config it read when it started: for this one, "
              "systemctl reload eximhook-serve.service (or kill -HUP its pid)")
    except ServeError:
        pass
    if cfg.serve.timeout >= 2:
        print(f"  note: [serve] timeout {cfg.serve.timeout:g}s: keep it below the snippets' EXIMHOOK_WAIT (2s unless "
              "you changed it), or Exim runs the ${run} hook while the daemon may still count the same event")
    import pwd

    try:
        pwd.getpwnam(cfg.exim.user)
    except KeyError:
        print(f"  note: [exim] user {cfg.exim.user!r} does not exist here: set it to the user Exim runs as "
              "(eximhook status and maintain check as that user)")
    for line in _check_exim_config(cfg):
        print(f"  {line}")
    return Exit.OK


def _not_members(cfg: Config, path: str, subjects: list[tuple[str, str]]) -> list[str]:
    """The customers file's subjects that never match a member: another namespace than
    ``customers.MEMBERS``, or a relay network where the snippets key one host (an IPv4
    address, an IPv6 /[relay] ipv6_prefix)."""
    from ..engine.customers import MEMBERS
    from ..model.subjects import network

    out = []
    for ns, key in subjects:
        net = network(key) if ns == "relay" else None
        if ns not in MEMBERS:
            out.append(f"warning: {path}: {ns}:{escape(key)} is no member (only {', '.join(MEMBERS)} are): skipped")
        elif net is not None and net.prefixlen != (32 if net.version == 4 else cfg.relay.ipv6_prefix):
            out.append(f"warning: {path}: relay:{escape(key)} is a network, and a relay subject is one host (an IPv4 "
                       f"address, an IPv6 /{cfg.relay.ipv6_prefix}): it matches none; list each host")
    return out


def _customers_and_logins(cfg: Config) -> list[str]:
    """Who counts toward a customer (``[customers]``), and whom a login block still lets
    in (``[logins]``), when their limits are on (docs/signals.md)."""
    lines = []
    c = cfg.customers
    on = any(p.windows for p in cfg.policies.get("customer", {}).values()) or any(
        ns == "customer" for ns, _ in cfg.overrides)
    whom = [w for w in (c.lookup and f"the users, hosts and local users {c.lookup} lists",
                        c.by_domain and "an authenticated user it does not list: its domain") if w]
    if on and not whom:
        lines.append("warning: customer limits are set, but [customers] has no lookup and by_domain = false: "
                     "nothing counts toward a customer")
    elif on:
        lines.append(f"customers: {'; '.join(whom)}; a customer's block freezes every member's mail")
        if c.by_domain:
            lines.append("note: [customers] by_domain makes all users of one domain one customer: where your users "
                         "share your own domain, set it to false and list customers in the lookup")
    elif c.lookup:
        lines.append(f"customers: {c.lookup} names customers, but no [limits.customer.COUNTER] is set: nothing "
                     "counts toward them")
    login = cfg.policy("login", "authfail")
    if login is not None and login.windows:
        lines.append(f"logins: a login block refuses AUTH for its account except from the networks it sent mail "
                     f"from in the last {format_period(cfg.logins.known)} ([logins] known), where the "
                     "authenticators check EXIMHOOK_ALLOWED_PLAIN or _LOGIN (docs/signals.md)")
    return lines


def _check_exim_config(cfg: Config, listing: str | None = None) -> list[str]:
    """A warning when the Exim user's ``exim -C [exim] config`` (the hooks', the
    daemon's, relaytest's) makes Exim drop root and write a paniclog line each time: the
    config is not in Debian's trusted list (``listing``), nor sets deliver_drop_privilege."""
    from ..errors import EximError
    from ..exim import debian
    from ..exim.queue import Exim

    listing = listing or debian.TRUSTED_CONFIGS
    exim = Exim.from_config(cfg.exim)
    found = _check_authenticators(cfg, exim)
    if not cfg.exim.config or debian.trusted(cfg.exim.config, listing):
        return found
    try:
        if exim.option("deliver_drop_privilege") == "deliver_drop_privilege":
            return found  # Exim drops root for it anyway, and says nothing
    except EximError:
        pass
    return [*found, f"warning: [exim] config {cfg.exim.config} is not listed in {listing}: each time the Exim user "
            "(the hooks, eximhook serve, relaytest) runs exim -C with it, Exim drops root and writes \"exim user lost "
            f"privilege for using -C option\" to its paniclog. Add the path as a line of {listing} (owned by root, "
            "not writable by others), or set deliver_drop_privilege = true in that config"]


def _check_authenticators(cfg: Config, exim: Exim) -> list[str]:
    """A login block's wiring in Exim's authenticators (``exim.authenticators``); nothing
    when Exim's config cannot be read (the other checks say so)."""
    from ..errors import EximError
    from ..exim import authenticators

    try:
        found = authenticators.parse(exim.authenticators())
        allowed = {v for m in ("EXIMHOOK_ALLOWED_PLAIN", "EXIMHOOK_ALLOWED_LOGIN") if (v := exim.macro(m))}
    except EximError:
        return []
    enforced = any(p is not None and p.enforced for p in (cfg.policy(ns, "authfail") for ns in ("login", "all")))
    return authenticators.problems(found, allowed, enforced)


def _bounds(cfg: Config) -> str:
    """What the counters may hold: per subject and counter, and in all."""
    from ..model.counter import max_bytes
    from ..model.evidence import EVIDENCE_BYTES, EVIDENCE_KEPT

    policies = [p for t in cfg.policies.values() for p in t.values()]
    policies += [p for entries in cfg.overrides.values() for _, p in entries]
    windows = max((len(p.windows) for p in policies), default=1)
    return (f"counters: at most {max_bytes(windows, cfg.evidence.rcpts, cfg.evidence.ips):,} bytes per subject and "
            f"counter (evidence cut to {EVIDENCE_BYTES} bytes, {EVIDENCE_KEPT} a list), "
            f"{cfg.store.counters_budget / (1 << 20):g} MiB in all ([store] counters_budget)")


def _check_mail(cfg: Config) -> list[str]:
    """Check the templates and the owner and customers lookups as eximhook reads them (a
    ``ConfigError`` names the file and the line of the first fault); what to print."""
    from ..engine import owner
    from ..engine.customers import customer_id
    from ..notify import templates

    lines, files = [], []
    for kind in templates.KINDS:
        path = notify_mod.template_path(cfg, kind)
        templates.load(path, kind)
        lines.append(f"{kind} template {path or templates.builtin_path(kind) + ' (built-in)'}: ok")
        files += [path] if path else []
    for section, path, value, what in (("owner", cfg.owner.lookup, None, "ADDRESS"),
                                       ("customers", cfg.customers.lookup, customer_id, "CUSTOMER")):
        if not path:
            continue
        try:
            entries, problems = owner.read(path, cfg.relay.ipv6_prefix, value, what)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the [{section}] lookup: {exc.strerror}") from exc
        if problems:
            raise ConfigError(f"{path}: " + "; ".join(problems[:10]) +
                              (f"; and {len(problems) - 10} more" if len(problems) > 10 else ""))
        lines.append(f"{section} lookup {path}: {len(entries)} subject(s)")
        if section == "customers":
            lines += _not_members(cfg, path, list(entries))
        files.append(path)
    patterns = ", ".join(f"{ns} = {p!r}" for ns, p in cfg.owner.pattern) or "none"
    lines.append(f"owner notification {'on' if cfg.owner.notify else 'off'} (pattern: {patterns}; blocks by hand "
                 f"{'too' if cfg.owner.manual else 'not'})")
    if cfg.owner.notify and not cfg.owner.lookup and not cfg.owner.pattern:
        lines.append("note: [owner] notify is on, but neither lookup nor pattern is set: no owner is ever found")
    # the hooks and the daemon read them as the Exim user, whom root's reading proves nothing about
    lines += [f"note: {path} is not readable by [exim] user {cfg.exim.user}: the hooks and the daemon "
              "cannot read it" for path in files if not _readable_by(path, cfg.exim.user)]
    return lines


def _check_password_file(cfg: Config) -> list[str]:
    """``[store] redis_password_file``, as the daemon will read it: what to print."""
    path = cfg.store.redis_password_file
    if not path or not cluster.shares(cfg):
        return []
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read store.redis_password_file: {exc.strerror}") from exc
    if not _readable_by(path, cfg.exim.user):
        return [f"note: {path} (store.redis_password_file) is not readable by [exim] user {cfg.exim.user}: "
                f"eximhook serve cannot log in to Redis (chown root:{cfg.exim.user}, chmod 0640)"]
    return []


def exposed_secrets(cfg: Config) -> list[str]:
    """The Redis password where every local user can read it (the "other" bits): in the
    config (redis_url), or in its own file."""
    from ..config.values import has_password

    files = [(cfg.path, "holds the Redis password (store.redis_url), and")] if has_password(cfg.store.redis_url) else []
    files += [(cfg.store.redis_password_file, "(store.redis_password_file):")] if cfg.store.redis_password_file else []
    found = []
    for path, what in files:
        try:
            exposed = os.stat(path).st_mode & 0o004
        except OSError:
            continue  # a missing password file is check-config's error
        if exposed:
            found.append(f"{path} {what} every local user can read it: chown root:{cfg.exim.user} and "
                         "chmod 0640 it" + (", or move the password to store.redis_password_file"
                                            if path == cfg.path else ""))
    return found


def unsafe_config(cfg: Config) -> list[str]:
    """The config, or the directory that holds it, where someone other than root can
    change it: root runs the commands it names ([notify] sendmail, [owner] lookup) for
    every admin command, so whoever can write it (the Exim user, given group write) can
    run anything as root."""
    found = []
    for path in (cfg.path, os.path.dirname(os.path.abspath(cfg.path))):
        try:
            st = os.stat(path)
        except OSError:
            continue
        sticky = os.path.isdir(path) and st.st_mode & 0o1000
        if st.st_uid != 0 or (st.st_mode & 0o022 and not sticky):
            found.append(f"{path} can be changed by another user than root, who runs the commands the config names "
                         "([notify] sendmail, [owner] lookup): chown root and chmod go-w it")
    return found


def _readable_by(path: str, user: str) -> bool:
    """By the permission bits (ACLs aside); True if there is no such user (noted apart)."""
    import pwd

    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return True
    st = os.stat(path)
    if st.st_uid == pw.pw_uid:
        return bool(st.st_mode & 0o400)
    if st.st_gid in os.getgrouplist(user, pw.pw_gid):
        return bool(st.st_mode & 0o040)
    return bool(st.st_mode & 0o004)
