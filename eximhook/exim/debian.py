"""``eximhook setup-exim4``: eximhook into Debian's exim4-config, without editing a
conffile, and out again byte for byte.

Debian offers hooks for this, in both layouts:
- macros and main options: ``conf.d/main/00_eximhook`` (split), or a marked block in
  ``exim4.conf.localmacros``, which update-exim4.conf puts before the template (unsplit);
- ``MAIN_ACL_CHECK_RCPT`` names the RCPT ACL: ``acl_eximhook_rcpt``, which first runs
  Debian's own ``acl_check_rcpt`` whole (``require acl``: its denials and its accepts
  stand) and then eximhook's statements, so a blocked sender's mail to postmaster,
  which Debian accepts first of all, is frozen too;
- ``CHECK_DATA_LOCAL_ACL_FILE`` is included just before the DATA ACL's accept;
- Debian sets no ``acl_not_smtp``, ``acl_smtp_auth``, ``acl_smtp_quit`` or
  ``acl_smtp_notquit``: eximhook's are named in the main-section lines;
- ``LOCAL_DENY_EXCEPTIONS_LOCAL_ACL_FILE`` is included at the very end of the ACL that
  comes first in Debian's ACL section, in both layouts: what it includes may start new
  ACLs, and ``exim-snippets/debian-acls.conf`` defines eximhook's there.
Debian's remote smtp transports have no such hook (bookworm's 4.96 and trixie's 4.98
alike) for the ``event_action`` that counts delivery outcomes (``EVENT_LINES``). In the
split layout update-exim4.conf joins the files of ``conf.d/transport`` in the order of
their names, so a file of eximhook's named right after a transport's file continues
that transport (``transport_files``). The unsplit template is a conffile: there the
admin adds the lines.
A config that already sets one of these macros is refused with its name: the admin
merges by hand. Nothing here prints or exits; the CLI does.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import SetupError
from ..model.subjects import own_address

if TYPE_CHECKING:
    from ..config.load import Config

CONFDIR = "/etc/exim4"
# Debian builds Exim with TRUSTED_CONFIG_LIST set to this file (NEWS.Debian, 4.72-1):
# the configs the Exim user may name with -C and keep root
TRUSTED_CONFIGS = os.path.join(CONFDIR, "trusted_configs")
SNIPPETS = "/usr/share/eximhook/exim-snippets"
PACKAGE_SCRIPT = "/usr/sbin/eximhook"  # the Debian package's (debian/eximhook.install)
BEGIN = "# BEGIN eximhook setup-exim4: `eximhook setup-exim4 remove` takes this out"
END = "# END eximhook setup-exim4"
_CREATED = "# (this file did not exist before: remove deletes it)"
_JOINED = "# (the file did not end with a newline: add put one before this block, remove takes it away)"
# Debian's hooks eximhook takes; a config that sets one already is not ours to change.
# WHITELIST_LOCAL_DENY_LOCAL_ACL_FILE (deprecated) is included after the hook
# debian-acls.conf comes in by, so its rules would end up in an ACL nothing uses.
TAKEN = ("MAIN_ACL_CHECK_RCPT", "CHECK_DATA_LOCAL_ACL_FILE", "LOCAL_DENY_EXCEPTIONS_LOCAL_ACL_FILE",
         "WHITELIST_LOCAL_DENY_LOCAL_ACL_FILE", "EXIMHOOK_SOCKET", "EXIMHOOK_NETS_FILE")
# The main options block() sets, which Debian leaves unset: set a second time, Exim
# refuses the whole config. block() sets event_action only where Exim is 4.97 or later
# (AUTH_EVENT), so an event_action of the admin's own would build with it on 4.96 and
# stop building on the upgrade: it is refused on 4.96 too.
TAKEN_OPTIONS = ("acl_not_smtp", "acl_smtp_auth", "acl_smtp_quit", "acl_smtp_notquit", "event_action")
# Exim's predefined macro for its $event_name variable: defined from 4.97 (the macros
# for expansion variables came with the auth:fail event, NewStuff 4.97 items 2 and 4),
# and only in a build with events. Where it is, each failed AUTH is counted by the
# auth:fail event (event_action), else by acl-auth.conf's QUIT and not-QUIT ACLs.
AUTH_EVENT = "_EXP_VAR_EVENT_NAME"
# Debian's remote smtp transports (internet and smarthost set-ups), and the lines that
# count their delivery outcomes (exim-snippets/macros.conf, EXIMHOOK_DELIVERY_EVENT):
# .ifdef, so that a transport whose macros are gone loses the option rather than keep
# a text that, as an event_action, refuses every connection
TRANSPORTS = ("remote_smtp", "remote_smtp_smarthost")
EVENT_LINES = ".ifdef EXIMHOOK_DELIVERY_EVENT\n  event_action = EXIMHOOK_DELIVERY_EVENT\n.endif\n"
_DRIVER = re.compile(r"^([A-Za-z0-9_]+)\s*:\s*$", re.M)  # "remote_smtp:", a driver's first line


@dataclass(frozen=True)
class Layout:
    confdir: str
    split: bool

    @property
    def main_file(self) -> str:
        """Where eximhook's main-section lines go."""
        if self.split:
            return os.path.join(self.confdir, "conf.d", "main", "00_eximhook")
        return os.path.join(self.confdir, "exim4.conf.localmacros")

    def sources(self) -> list[str]:
        """The files update-exim4.conf reads: where a macro could already be set."""
        if self.split:
            top = os.path.join(self.confdir, "conf.d")
            return sorted(os.path.join(d, f) for d, _, files in os.walk(top) for f in files)
        return [os.path.join(self.confdir, f) for f in ("exim4.conf.localmacros", "exim4.conf.template")]


def layout(confdir: str = CONFDIR) -> Layout:
    """Split or unsplit, as update-exim4.conf.conf says (Debian's default: unsplit)."""
    try:
        with open(os.path.join(confdir, "update-exim4.conf.conf"), encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise SetupError(f"{confdir}/update-exim4.conf.conf: {exc.strerror}: is this Debian's exim4-config?") from exc
    found = re.findall(r"^\s*dc_use_split_config\s*=\s*'?(\w*)'?", text, re.M)
    return Layout(confdir, bool(found) and found[-1] == "true")


def block(cfg: Config, snippets: str = SNIPPETS) -> str:
    """eximhook's main-section lines for ``cfg``, between the markers: its socket, its
    config, and the files it writes for Exim where it writes them (the cdb file in
    ``[store] mirror_dir``, ``[relaytest] blocked_nets``)."""
    from ..storage.mirror import CDB_FILE

    return "\n".join([
        BEGIN,
        f"EXIMHOOK_SOCKET = {cfg.serve.socket}",
        f"EXIMHOOK_CMD = {hook_command()} --config {cfg.path}",
        f"EXIMHOOK_CDB = {os.path.join(cfg.store.mirror_dir, CDB_FILE)}",
        f"EXIMHOOK_NETS_FILE = {cfg.relaytest.blocked_nets}",
        f"EXIMHOOK_SNIPPETS = {snippets}",
        f".include {snippets}/macros.conf",
        "MAIN_ACL_CHECK_RCPT = acl_eximhook_rcpt",
        f"CHECK_DATA_LOCAL_ACL_FILE = {snippets}/acl-data.conf",
        f"LOCAL_DENY_EXCEPTIONS_LOCAL_ACL_FILE = {snippets}/debian-acls.conf",
        "acl_not_smtp = acl_eximhook_not_smtp",
        # password guessing (acl-auth.conf, defined by debian-acls.conf); Debian sets none of these
        "acl_smtp_auth = acl_eximhook_auth",
        f".ifdef {AUTH_EVENT}",
        "event_action = EXIMHOOK_EVENT_ACTION",
        ".else",
        "acl_smtp_quit = acl_eximhook_quit",
        "acl_smtp_notquit = acl_eximhook_notquit",
        ".endif",
        END, ""])


def hook_command() -> str:
    """How Exim's ${run} starts this install's eximhook: the interpreter running now and
    the script beside it (a venv's ``bin/eximhook``, contrib/install.sh), or the Debian
    package's ``/usr/sbin/eximhook`` for Debian's ``/usr/bin/python3``."""
    import sys

    for script in (os.path.join(os.path.dirname(sys.executable), "eximhook"), PACKAGE_SCRIPT):
        if os.path.isfile(script):
            return f"{sys.executable} -IS {script}"
    raise SetupError(f"no eximhook script beside {sys.executable} nor at {PACKAGE_SCRIPT}: "
                     "define EXIMHOOK_CMD by hand (docs/exim.md)")


def transport_files(lay: Layout) -> tuple[list[tuple[str, str]], list[str]]:
    """Where eximhook's lines for each of Debian's remote smtp transports go (split
    layout): (transport, file) for those it can wire, and a note for each it cannot.
    The file is named after the transport's own (``30_exim4-config_remote_smtp`` +
    ``_eximhook``) and must come right after it, as update-exim4.conf orders the files
    (``ls`` in the C locale, ``NAME.rul`` read in place of ``NAME``), which must end inside
    that transport; a transport that sets event_action already is the admin's to merge."""
    if not lay.split:
        return [], [f"{t}: Debian's unsplit template (a conffile) has no hook for its event_action: add the lines "
                    "docs/exim.md gives to it in exim4.conf.template" for t in TRANSPORTS]
    top = os.path.join(lay.confdir, "conf.d", "transport")
    try:
        names = [n for n in os.listdir(top) if re.fullmatch(r"[A-Za-z0-9_-]+", n)]  # what update-exim4.conf reads
    except OSError:
        names = []
    found, notes = [], []
    for transport in TRANSPORTS:
        ours = _transport_file(lay, transport)
        base = os.path.basename(ours).removesuffix("_eximhook")
        before = sorted((n for n in names if os.fsencode(n) < os.fsencode(os.path.basename(ours))), key=os.fsencode)
        path = os.path.join(top, base)
        try:
            with open(path + ".rul" if os.path.isfile(path + ".rul") else path, encoding="utf-8",
                      errors="surrogateescape") as f:
                text = f.read()
        except OSError:
            notes.append(f"{transport}: {path} is missing: add the lines docs/exim.md gives to the transport by hand")
            continue
        text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        last = [*_DRIVER.finditer(text)][-1:]
        own = text[last[0].start():] if last and last[0][1] == transport else ""
        if not before or before[-1] != base or not own:
            notes.append(f"{transport}: {path} is not the file just before {os.path.basename(ours)}, or does not "
                         "end inside the transport: add the lines docs/exim.md gives to the transport by hand")
        elif re.search(r"^\s*event_action\s*=", own, re.M):
            notes.append(f"{transport}: {path} sets event_action already: put EXIMHOOK_DELIVERY_EVENT in front of "
                         "its value by hand (docs/exim.md)")
        else:
            found.append((transport, ours))
    return found, notes


def _transport_file(lay: Layout, transport: str) -> str:
    """eximhook's lines for ``transport`` (split layout): named after Debian's file."""
    return os.path.join(lay.confdir, "conf.d", "transport", f"30_exim4-config_{transport}_eximhook")


def _holds(path: str, text: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return text in f.read()
    except OSError:
        return False


def is_added(lay: Layout) -> bool:
    return _holds(lay.main_file, BEGIN)


def add(lay: Layout, text: str) -> list[str]:
    """Write ``text`` (``block()``) into the layout's main file and, in the split layout,
    the lines that count delivery outcomes after each remote smtp transport it can wire
    (``transport_files``); returns what changed. Refuses when a hook eximhook takes is
    set already, or when it is added already."""
    if is_added(lay):
        raise SetupError(f"eximhook is set up already ({lay.main_file}): remove first to change it")
    for path in lay.sources():
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                body = f.read()
        except OSError:
            continue
        for macro in TAKEN:
            if _sets(body, macro):
                raise SetupError(f"{path} sets {macro}, which eximhook's set-up cannot share: merge by hand "
                                 "(docs/exim.md)")
        main = _main_section(lay, path, body)
        for option in TAKEN_OPTIONS:
            if _sets(main, option):
                raise SetupError(f"{path} sets the main option {option}, which eximhook's set-up sets too: "
                                 "merge by hand (docs/exim.md; for event_action, docs/guards.md, Password guessing)")
    path = lay.main_file
    wired = transport_files(lay)[0]
    if lay.split or not os.path.exists(path):
        _write(path, (text if lay.split else _CREATED + "\n" + text).encode())
    else:
        with open(path, "rb") as f:
            old = f.read()
        if old and not old.endswith(b"\n"):
            text = "\n" + text.replace(BEGIN + "\n", BEGIN + "\n" + _JOINED + "\n", 1)
        _write(path, old + text.encode(), keep_mode_of=path)
    for transport, ours in wired:  # after the main file: remove() finds them by it
        _write(ours, f"{BEGIN}\n# The transport {transport} goes on: update-exim4.conf joins this file to the one "
                     f"before it, which defines it.\n{EVENT_LINES}{END}\n".encode())
    return [path, *(ours for _, ours in wired)]


def _main_section(lay: Layout, path: str, text: str) -> str:
    """The part of ``text`` in Exim's main section: a file of conf.d/main (split), or
    what comes before the first ``begin`` (unsplit; transports have an event_action too)."""
    if lay.split:
        return text if os.path.basename(os.path.dirname(path)) == "main" else ""
    return re.split(r"^\s*begin\s", text, maxsplit=1, flags=re.M)[0]


def _sets(text: str, macro: str) -> bool:
    """Whether ``text`` defines ``macro``, other than as a default (``.ifndef``-guarded,
    as Debian's own files define MAIN_ACL_CHECK_RCPT)."""
    previous = ""
    for line in text.splitlines():
        stripped = line.strip()
        if re.match(rf"{macro}\s*=", stripped) and previous != f".ifndef {macro}":
            return True
        if stripped and not stripped.startswith("#"):
            previous = " ".join(stripped.split())
    return False


def includes_elsewhere(lay: Layout, snippets: str = SNIPPETS) -> list[str]:
    """The files of Exim's configuration, other than eximhook's own lines, that name the
    snippets directory outside a comment (an admin's ``.include`` of tls-auth.conf or of
    the relay-test router): with the snippets gone, Exim's configuration stops building."""
    candidates = [*lay.sources(), os.path.join(lay.confdir, "exim4.conf")]  # a hand-made one wins over Debian's
    found = []
    for path in candidates:
        if lay.split and path == lay.main_file:
            continue  # eximhook's own file
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError:
            continue
        if BEGIN in text and END in text:
            text = text[:text.index(BEGIN)] + text[text.index(END):]
        if any(snippets in line.split("#", 1)[0] for line in text.splitlines()):
            found.append(path)
    return found


def remove(lay: Layout) -> list[str]:
    """Take eximhook out again: the file as it was before ``add``, byte for byte."""
    path = lay.main_file
    if not is_added(lay):
        return []
    if lay.split:
        ours = [p for p in (_transport_file(lay, t) for t in TRANSPORTS) if _holds(p, BEGIN)]
        for p in [path, *ours]:
            os.unlink(p)
        return [path, *ours]
    with open(path, "rb") as f:
        data = f.read()
    start, end = data.index(BEGIN.encode()), data.index(END.encode())
    end = data.index(b"\n", end) + 1
    if _JOINED.encode() in data[start:end]:
        start -= 1  # the newline add put at the end of the admin's last line
    before, after = data[:start], data[end:]
    if before == (_CREATED + "\n").encode() and not after:
        os.unlink(path)
        return [path]
    # the admin added lines to the file add created: it stays, without add's remark
    before = before.removeprefix((_CREATED + "\n").encode())
    _write(path, before + after, keep_mode_of=path)
    return [path]


def trusted(config: str, listing: str = TRUSTED_CONFIGS) -> bool:
    """Whether Exim keeps root when the Exim user runs ``exim -C config``: ``listing``
    is root's, writable by no one else (by its group only if that is root), and holds
    ``config`` as a line. Read as Exim 4.96 reads it (exim.c): blanks before the path
    skipped, lines that do not start with "/" ignored, the first 32 paths only."""
    try:
        with open(listing, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_uid != 0 or (st.st_gid != 0 and st.st_mode & 0o020) or st.st_mode & 0o002:
                return False
            paths = [line.lstrip().partition(b"\n")[0] for line in f if line.lstrip().startswith(b"/")][:32]
    except OSError:
        return False
    return os.fsencode(config) in paths


def update(timeout: float = 60) -> None:
    """Regenerate Exim's config (update-exim4.conf, from /etc/exim4) and check it
    (exim4 -bV)."""
    for argv in (["update-exim4.conf"], ["exim4", "-bV"]):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SetupError(f"{argv[0]}: {exc}") from exc
        if proc.returncode != 0:
            raise SetupError(f"{' '.join(argv)} failed: {(proc.stderr or proc.stdout).strip()[:800]}")


def _write(path: str, data: bytes, keep_mode_of: str | None = None) -> None:
    """Atomically, with the mode the file had, or readable by all (Exim's config files
    are: root 0644)."""
    from ..perms import replace_files

    replace_files([(path, data)], mode=os.stat(keep_mode_of).st_mode & 0o7777 if keep_mode_of else 0o644)


def selftest(samples: list[tuple[str, str]], timeout: float = 30) -> list[str]:
    """What the generated config does, as Exim itself expands it: which ACLs it runs,
    and, for each sample subject, whether its mail would be accepted and frozen."""
    probe = ["acl_smtp_rcpt", "acl_smtp_data", "acl_not_smtp", "acl_smtp_auth", "acl_smtp_quit", "acl_smtp_notquit",
             "event_action"]
    try:
        shown = subprocess.run(["exim4", "-bP", *probe], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"exim4 -bP: {exc}") from exc
    lines = [line.strip() for line in shown.stdout.splitlines() if line.strip()]
    lines += _transports_counted(timeout)
    queries = [f"${{lookup{{{ns}:{_quote(key)}}}cdb{{EXIMHOOK_CDB}}{{blocked: its mail is accepted and frozen}}"
               f"{{not blocked: its invalid recipients are counted}}}}" for ns, key in samples]
    queries.append("${if exists{EXIMHOOK_SOCKET}{daemon socket EXIMHOOK_SOCKET: there}"
                   "{daemon socket EXIMHOOK_SOCKET: missing, the run hooks count}}")
    try:
        out = subprocess.run(["exim4", "-be"], input="\n".join(queries) + "\n", capture_output=True, text=True,
                             timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"exim4 -be: {exc}") from exc
    answers = [a.removeprefix("> ").strip() for a in out.stdout.split("\n") if a.startswith("> ")]
    for (ns, key), answer in zip(samples, answers, strict=False):
        own = " (but this machine's own address: the relay snippets skip it)" if own_address(ns, key) else ""
        lines.append(f"{ns} {key}: {answer}{own} (the cdb lookup the snippets make)")
    lines += answers[len(samples):len(samples) + 1]
    return lines


def _transports_counted(timeout: float) -> list[str]:
    """Whether each of Debian's remote smtp transports counts its delivery outcomes: its
    event_action is EXIMHOOK_DELIVERY_EVENT, as the generated config has it."""
    def show(*what: str) -> str:
        try:
            return subprocess.run(["exim4", "-bP", *what], capture_output=True, text=True, timeout=timeout,
                                  check=False).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SetupError(f"exim4 -bP: {exc}") from exc

    ours = show("macro", "EXIMHOOK_DELIVERY_EVENT").partition("=")[2].strip()
    lines = []
    for transport in TRANSPORTS:
        options = show("transport", transport).splitlines()
        action = next((o.partition("=")[2].strip() for o in options if o.startswith("event_action =")), None)
        lines.append(f"transport {transport}: " + (
            "not in this config" if action is None else
            "counts its delivery outcomes (event_action = EXIMHOOK_DELIVERY_EVENT)" if ours and action == ours else
            "does not count delivery outcomes: an event_action of its own (docs/exim.md)" if action else
            "does not count delivery outcomes: add the lines docs/exim.md gives to it"))
    return lines


def _quote(key: str) -> str:
    """A key inside an Exim string: backslash, dollar and braces escaped."""
    return re.sub(r"([\\${}])", r"\\\1", key)
