"""The man pages eximhook(8) and eximhook.toml(5), made from what defines their content,
so that they cannot drift from it: the argparse parser (``cli.build_parser``), the exit
codes (``errors.Exit``), the config's dataclasses and ``[limits]`` defaults, and for
what each key means the comments of contrib/eximhook.toml (``example``), the file the
package installs as the conffile.

``python3 -m eximhook.manpages OUTDIR`` writes ``eximhook.8`` and ``eximhook.toml.5``.
The same sources give the same bytes: no clock and no host name in them; the date is
``$SOURCE_DATE_EPOCH``'s (Debian's reproducible builds), else left out. Only the
standard library and eximhook are needed. No hook or daemon path imports this module.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .. import __version__, errors
from ..config import DEFAULT_PATH, ENV_VAR, hookcache
from ..config.load import load
from ..exim import debian
from ..model.subjects import LSEARCH_FILES
from ..ops import health, status
from ..storage import mirror
from .roff import bold, escape, italic, item, paragraph, request, title
from .tomlpage import eximhook_toml_5

# the checkout: eximhook/reference/manpages.py is three levels down
EXAMPLE = os.path.join(os.path.abspath(__file__).rsplit(os.sep, 3)[0], "contrib", "eximhook.toml")
PAGES = ("eximhook.8", "eximhook.toml.5")


# Every variable the code reads (tests/integration/test_manpages.py greps for them).
ENVIRONMENT = {
    ENV_VAR: f"The config file when --config is not given (else {DEFAULT_PATH}). Exim "
                         "gives the hooks no environment, so the snippets pass --config.",
    "LISTEN_PID": "With LISTEN_FDS: eximhook serve takes the listening socket systemd passes on descriptor 3 "
                  "(socket activation); it must be [serve] socket.",
    "LISTEN_FDS": "See LISTEN_PID.",
    "NOTIFY_SOCKET": "eximhook serve tells systemd there (Type=notify) when it is ready and when it stops.",
    "SUDO_USER": "Who ran an admin command, for the audit log (else the user running it).",
    "SENDER": "eximhook relaytest receive: the envelope sender, as Exim's pipe transport sets it, unless --sender "
              "is given.",
}


def source_date(environ: Mapping[str, str] = os.environ) -> str:
    """``$SOURCE_DATE_EPOCH`` as a date (UTC), or "": never the clock."""
    epoch = environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        return ""
    if not epoch.isdigit():
        raise ValueError(f"SOURCE_DATE_EPOCH is {epoch!r}, not a number of seconds")
    return time.strftime("%Y-%m-%d", time.gmtime(int(epoch)))


def eximhook_8(parser: argparse.ArgumentParser, date: str) -> str:
    """The page of the command line ``parser`` (``cli.build_parser()``)."""
    description = (parser.description or "").rstrip(".")
    lines = [title("eximhook", "8", date, f"eximhook {__version__}", "System Manager's Manual"),
             request("SH", "NAME"), f"eximhook \\- {escape(description[:1].lower() + description[1:])}",
             request("SH", "SYNOPSIS"), _usage(["eximhook"], parser),
             request("SH", "DESCRIPTION"),
             *paragraph("Exim runs the hooks from its ACLs, with ${run}, or asks the daemon, eximhook serve, over "
                        "a Unix socket with ${readsocket}: they count invalid recipients, bounces, volume and failed "
                        "SMTP AUTH per subject, block a subject once it goes over a limit, and notify the abuse desk "
                        "once. A hook prints one token on standard output, nothing on standard error, and logs to "
                        "syslog (facility mail) or [log] file. Blocked subjects' mail is frozen for review."),
             *paragraph("The admin commands run as root: they list, show, make and lift blocks, and release or "
                        "purge the frozen mail. Admin commands print tables for people, and JSON with --json. A key "
                        "that starts with - goes after --."),
             *paragraph(f"The Exim snippets are in {debian.SNIPPETS}; on Debian, eximhook setup-exim4 add wires "
                        "them into exim4-config."),
             request("SH", "OPTIONS"), *_arguments(parser, with_help=True),
             request("SH", "COMMANDS")]
    for name, sub, help in _subcommands(parser):
        words = ["eximhook", name]
        lines += [request("SS", " ".join(words))]
        if _subparsers(sub) is None:
            lines += [_usage(words, sub), ".br", escape(help), *_arguments(sub)]
            continue
        lines += [escape(help)]
        for verb, leaf, verb_help in _subcommands(sub):
            lines += item(_usage([*words, verb], leaf), escape(verb_help), ".RS", *_arguments(leaf), ".RE")
    lines += [request("SH", "EXIT STATUS"), *paragraph("Every command exits with one of these; none is 127, which "
                                                       "Exim's ${run} reserves for a command it could not run.")]
    for code, name, meaning in exit_codes():
        lines += item(bold(f"{code} {name}"), escape(meaning))
    levels = ", ".join(f"{i} {name}" for i, name in enumerate(status.LEVELS))
    lines += paragraph(f"eximhook status, a monitoring plugin, exits as Nagios and Icinga expect instead: {levels}.")
    lines += [request("SH", "FILES")]
    for path, what in files():
        lines += item(bold(path), escape(what))
    lines += [request("SH", "ENVIRONMENT")]
    for name, what in ENVIRONMENT.items():
        lines += item(bold(name), escape(what))
    lines += [request("SH", "SEE ALSO"), ".BR eximhook.toml (5),", ".BR exim4 (8),", ".BR update\\-exim4.conf (8)"]
    return "\n".join(lines) + "\n"


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    """(name, parser, help) of each subcommand, in the order they were added."""
    sub = _subparsers(parser)
    if sub is None:
        return []
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    return [(name, p, helps.get(name) or p.description or "") for name, p in sub.choices.items()]


def _documented(parser: argparse.ArgumentParser, with_help: bool = False) -> list[argparse.Action]:
    """The arguments to show: a command's own first (NS KEY), then its options; but the
    options that must come before a subcommand (--config), before it."""
    shown = [a for a in parser._actions if a.help != argparse.SUPPRESS
             and (with_help or not isinstance(a, argparse._HelpAction))]
    if _subparsers(parser) is not None:
        return shown
    return sorted(shown, key=lambda a: bool(a.option_strings))


def _usage(words: list[str], parser: argparse.ArgumentParser) -> str:
    """The synopsis: the command's words, then each argument as argparse's usage has it."""
    groups = {id(a): g for g in parser._mutually_exclusive_groups for a in g._group_actions}
    parts, seen = [bold(" ".join(words))], set()
    for action in _documented(parser):
        group = groups.get(id(action))
        if isinstance(action, argparse._SubParsersAction):
            parts.append(italic(_metavar(action)) + " ...")
        elif group is not None:
            if id(group) not in seen:
                seen.add(id(group))
                alternatives = " | ".join(_form(a) for a in group._group_actions)
                parts.append(alternatives if group.required else f"[{alternatives}]")
        elif (action.option_strings and not action.required) or action.nargs == "?":
            parts.append(f"[{_form(action)}]")
        else:
            parts.append(_form(action))
    return " ".join(parts)


def _form(action: argparse.Action, options: Sequence[str] = ()) -> str:
    """An argument as written on the command line: ``--since SINCE``, ``NS``, ``add|remove``."""
    if action.option_strings:
        flags = ", ".join(bold(o) for o in (options or action.option_strings[-1:]))
        return flags if action.nargs == 0 else f"{flags}\\ {italic(_metavar(action))}"
    if action.choices is not None and action.metavar is None:
        return "|".join(bold(str(c)) for c in action.choices)
    return italic(_metavar(action))


def _metavar(action: argparse.Action) -> str:
    metavar = action.metavar if isinstance(action.metavar, str) else None
    return metavar or action.dest.upper()


def _arguments(parser: argparse.ArgumentParser, with_help: bool = False) -> list[str]:
    lines: list[str] = []
    for action in _documented(parser, with_help):
        if isinstance(action, argparse._SubParsersAction):
            continue  # the commands have a section of their own
        lines += item(_form(action, action.option_strings), escape(help_text(parser, action)))
    return lines


def help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """What ``--help`` says of ``action`` (%(default)s and the like expanded), and its
    choices where the text does not name them all."""
    text = parser._get_formatter()._expand_help(action) if action.help else ""
    choices = [str(c) for c in action.choices or ()]
    if choices and not all(re.search(rf"\b{re.escape(c)}\b", text) for c in choices):
        text = f"{text} (one of: {', '.join(choices)})".strip()
    return text


def exit_codes() -> list[tuple[int, str, str]]:
    """(code, name, meaning) of ``errors.Exit``: the meaning is the comment on its line."""
    comments = dict(re.findall(r"^\s+([A-Z_]+) = \d+\s+#\s*(.*)$", inspect.getsource(errors.Exit), re.M))
    codes = [(value, name, comments.get(name, "")) for name, value in vars(errors.Exit).items() if name.isupper()]
    return sorted(codes)


def files() -> list[tuple[str, str]]:
    """The files eximhook reads and writes at their default places (the config's defaults)."""
    cfg = load(os.devnull)  # an empty config: every default, the derived ones included
    store, mirror_dir = cfg.store.path, cfg.store.mirror_dir
    return [
        (DEFAULT_PATH, "The configuration, eximhook.toml(5)."),
        (hookcache.cache_path(DEFAULT_PATH),
         "The hooks' cache of the values they need from the config, stamped with its inode, size and mtime; any "
         "admin command and check-config refresh it."),
        (store, f"[store] path: the LMDB store (blocks, notifications, audit log) and the counters' environment, "
                f"with {mirror.LOCK_FILE} and {mirror.STAMP_FILE}, which serialise and stamp the mirror's rewrites."),
        (os.path.join(mirror_dir, mirror.CDB_FILE), "[store] mirror_dir: the blocked subjects, which the snippets "
                                                    "look up (cdb), rewritten from the store on every change."),
        *((os.path.join(mirror_dir, name), f"The blocked {ns} subjects, one a line, for lsearch and for people.")
          for ns, name in LSEARCH_FILES.items()),
        (cfg.relaytest.blocked_nets, "[relaytest] blocked_nets: the open relays found, a host list for Exim."),
        (cfg.serve.socket, "[serve] socket: the daemon's, which Exim's ${readsocket} asks."),
        (os.path.join(os.path.dirname(cfg.serve.socket), health.STATE_FILE),
         "Written by eximhook maintain while the store refuses writes."),
        (debian.SNIPPETS, "The Exim snippets: macros and ACL statements to include in Exim's configuration."),
        (cfg.relaytest.key_file, "[relaytest] key_file: the key that signs the relay probes."),
        (cfg.log.file or "[log] file", "The log, when [log] file is set; by default eximhook logs to syslog, "
                                       "facility mail."),
    ]


def main(argv: list[str] | None = None) -> int:
    from ..cli import build_parser

    ap = argparse.ArgumentParser(prog="python3 -m eximhook.reference.manpages",
                                 description=f"Write {' and '.join(PAGES)} into OUTDIR.")
    ap.add_argument("outdir", metavar="OUTDIR", help="the directory to write them in (made if need be)")
    ap.add_argument("--example", metavar="FILE", default=EXAMPLE,
                    help="the example config whose comments say what each key means (default: %(default)s, "
                         "in the source tree)")
    opts = ap.parse_args(argv)
    try:
        date = source_date()
        with open(opts.example, encoding="utf-8") as f:
            pages = (eximhook_8(build_parser(), date), eximhook_toml_5(f.read(), date))
    except (ValueError, OSError) as exc:
        print(f"eximhook.reference.manpages: {exc}", file=sys.stderr)
        return errors.Exit.DATAERR
    os.makedirs(opts.outdir, exist_ok=True)
    for name, text in zip(PAGES, pages, strict=True):
        with open(os.path.join(opts.outdir, name), "w", encoding="ascii") as out:
            out.write(text)
    return errors.Exit.OK


if __name__ == "__main__":
    sys.exit(main())
