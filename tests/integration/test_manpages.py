"""The man pages: every command, option, exit code, file, environment variable and config
key is in them (each test walks the definition, not the page), groff and man-db find
nothing to warn about, two builds give the same bytes, and text prints as written."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eximhook.cli import build_parser
from eximhook.config import DEFAULT_PATH, ENV_VAR, hookcache
from eximhook.config import limits as _limits
from eximhook.config import values as v
from eximhook.config.load import _SECTIONS, Config, load
from eximhook.errors import Exit
from eximhook.exim import debian
from eximhook.model.subjects import LSEARCH_FILES
from eximhook.ops.status import LEVELS
from eximhook.reference import example, manpages, roff, tomlpage
from eximhook.storage import mirror

from ..support.paths import ROOT

GROFF, LEXGROG, MAN = shutil.which("groff"), shutil.which("lexgrog"), shutil.which("man")
# Debian: groff-base (contrib/install.sh --dev installs it); in CI it must be there
needs_groff = pytest.mark.skipif(os.environ.get("CI") != "true" and GROFF is None, reason="needs groff (groff-base)")
pytestmark = needs_groff
PLAIN = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}


def render(roff_text: str) -> str:
    """The page as man shows it, but plain and unwrapped: each paragraph one line, so no
    word is hyphenated; groff's warnings (all of them, -ww) fail the test."""
    assert GROFF is not None, "groff is not installed: apt-get install groff-base"
    proc = subprocess.run([GROFF, "-man", "-Tutf8", "-ww", "-P-cbou", "-rLL=20000n"], input=roff_text.encode(),
                          capture_output=True, env=PLAIN, check=False)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr.decode()
    return proc.stdout.decode()


def sections(page: str) -> dict[str, list[str]]:
    """The rendered lines under each heading: .SH at column 0, .SS at column 3."""
    out: dict[str, list[str]] = {}
    current: list[str] = []
    for line in page.splitlines():
        if re.match(r"( {3})?\S", line):
            current = out.setdefault(line.strip(), [])
        else:
            current.append(line)
    return out


def entries(lines: list[str]) -> dict[str, list[str]]:
    """The .TP entries of a section: tag (at 7 columns) -> the lines of its body (at 14;
    unwrapped, so a line is a paragraph or what .br ended)."""
    out: dict[str, list[str]] = {}
    tag = None
    for line in lines:
        if re.match(r" {7}\S", line):
            tag = line.strip()
            out[tag] = []
        elif re.match(r" {14}\S", line) and tag is not None:
            out[tag].append(line.strip())
    return out


def entry(lines: list[str], name: str) -> tuple[str, list[str]]:
    """(tag, body) of the entry for ``name``: its tag is ``name``, ``name = ...``,
    ``name (unset)``, or (shorter than the indent) ``name`` and the body's first line."""
    for tag, body in entries(lines).items():
        if tag == name or tag.startswith((f"{name} = ", f"{name} (unset)")):
            return tag, body
        if tag.startswith(f"{name} ") and len(name) < 7:
            return name, [tag[len(name):].strip(), *body]
    raise AssertionError(f"no entry for {name!r} among {list(entries(lines))}")


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("man")
    assert manpages.main([str(out)]) == Exit.OK
    return {name: out / name for name in manpages.PAGES}


@pytest.fixture(scope="module")
def page8(built: dict[str, Path]) -> dict[str, list[str]]:
    return sections(render(built["eximhook.8"].read_text()))


@pytest.fixture(scope="module")
def page5(built: dict[str, Path]) -> dict[str, list[str]]:
    return sections(render(built["eximhook.toml.5"].read_text()))


# -- eximhook(8): the parser, the exit codes, files, environment --------------------------

def walk(parser: argparse.ArgumentParser, words: tuple[str, ...] = ("eximhook",)
         ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser, the subcommands' subcommands too, with the words that reach it."""
    yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*words, name))


def arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)]


def spelled(action: argparse.Action) -> str:
    """An argument as the synopsis writes it."""
    if action.option_strings:
        return action.option_strings[-1] + ("" if action.nargs == 0 else f" {action.metavar or action.dest.upper()}")
    if action.choices is not None and action.metavar is None:
        return "|".join(action.choices)
    return str(action.metavar or action.dest.upper())


PARSERS = list(walk(build_parser()))
LEAVES = [(words, p) for words, p in PARSERS
          if len(words) > 1 and not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)]


@pytest.mark.parametrize(("words", "parser"), [pytest.param(w, p, id=" ".join(w[1:])) for w, p in LEAVES])
def test_every_command_is_in_eximhook_8_with_its_arguments(page8: dict[str, list[str]], words: tuple[str, ...],
                                                          parser: argparse.ArgumentParser) -> None:
    lines = [line.strip() for lines in page8.values() for line in lines]
    command = " ".join(words)
    synopses = [line for line in lines if line == command or line.startswith(f"{command} ")]
    wanted = [spelled(a) for a in arguments(parser)]
    assert any(all(w in line for w in wanted) for line in synopses), f"{command} {wanted}: not in {synopses}"
    text = flat(" ".join(lines))
    for action in arguments(parser):
        assert flat(parser._get_formatter()._expand_help(action)) in text, (command, action.dest)


@pytest.mark.parametrize(("words", "parser"), [pytest.param(w, p, id=" ".join(w)) for w, p in PARSERS
                                               if any(isinstance(a, argparse._SubParsersAction) for a in p._actions)])
def test_every_subcommand_is_described_in_eximhook_8(page8: dict[str, list[str]], words: tuple[str, ...],
                                                     parser: argparse.ArgumentParser) -> None:
    text = flat(" ".join(line for lines in page8.values() for line in lines))
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for choice in sub._choices_actions:
        assert choice.help and flat(choice.help) in text, f"{' '.join(words)} {choice.dest}"


def test_the_program_s_own_options_are_in_eximhook_8(page8: dict[str, list[str]]) -> None:
    parser, found = build_parser(), entries(page8["OPTIONS"])
    for action in parser._actions:
        if action.option_strings:
            tag = ", ".join(action.option_strings) + ("" if action.nargs == 0 else f" {action.metavar}")
            assert found.get(tag) == [flat(parser._get_formatter()._expand_help(action))], tag


@pytest.mark.parametrize(("words", "action"), [pytest.param(w, a, id=f"{' '.join(w)} {a.dest}")
                                               for w, p in PARSERS for a in arguments(p)])
def test_every_argument_has_help_that_states_its_default(words: tuple[str, ...], action: argparse.Action) -> None:
    """--help and the page say what each argument is, and the default where it has one."""
    assert action.help and len(action.help.split()) >= 2, f"{' '.join(words)} {action.dest}: no help"
    if action.default not in (None, False, argparse.SUPPRESS):
        assert "default" in action.help, f"{' '.join(words)} {action.dest}: its default {action.default!r} unsaid"


@pytest.mark.parametrize("name", [n for n in vars(Exit) if n.isupper()])
def test_every_exit_code_is_in_eximhook_8(page8: dict[str, list[str]], name: str) -> None:
    code = getattr(Exit, name)
    source = (ROOT / "eximhook" / "errors.py").read_text()
    meaning = re.search(rf"^\s+{name} = {code}\s+#\s*(.*)$", source, re.M)
    assert meaning, f"Exit.{name} has no comment to say what it means"
    tag, body = entry(page8["EXIT STATUS"], f"{code} {name}")
    assert body == [flat(meaning[1])], tag


def test_the_status_plugin_codes_are_in_eximhook_8(page8: dict[str, list[str]]) -> None:
    text = flat(" ".join(page8["EXIT STATUS"]))
    assert all(f"{i} {level}" in text for i, level in enumerate(LEVELS))


def variables_read() -> list[str]:
    """Every environment variable eximhook's code reads, by name or through ENV_VAR.
    manpages.py is left out: it reads SOURCE_DATE_EPOCH when the pages are built."""
    names = set()
    read = r"""(?:environ\.get\(|environ\[|getenv\()\s*"""
    for path in sorted((ROOT / "eximhook").rglob("*.py")):
        if path.name != "manpages.py":
            text = path.read_text()
            names |= set(re.findall(read + r"""["']([A-Za-z_][A-Za-z0-9_]*)["']""", text))
            if re.search(read + "ENV_VAR", text):
                names.add(ENV_VAR)
    return sorted(names)


def test_the_environment_grep_finds_what_it_should() -> None:
    assert {"EXIMHOOK_CONFIG", "LISTEN_PID", "SUDO_USER"} <= set(variables_read())


@pytest.mark.parametrize("name", variables_read())
def test_every_environment_variable_is_in_eximhook_8(page8: dict[str, list[str]], name: str) -> None:
    _, body = entry(page8["ENVIRONMENT"], name)
    assert body, f"${name} is named but not explained"


def default_files() -> list[str]:
    from eximhook.config.load import RelaytestConfig, ServeConfig, StoreConfig

    store = StoreConfig()
    return [DEFAULT_PATH, hookcache.cache_path(DEFAULT_PATH), store.path,
            os.path.join(store.mirror_dir, mirror.CDB_FILE), *(os.path.join(store.mirror_dir, n)
                                                                for n in LSEARCH_FILES.values()),
            ServeConfig().socket, debian.SNIPPETS, RelaytestConfig().key_file]


@pytest.mark.parametrize("path", default_files())
def test_the_files_at_their_default_places_are_in_eximhook_8(page8: dict[str, list[str]], path: str) -> None:
    _, body = entry(page8["FILES"], path)
    assert body, path


def test_see_also(page8: dict[str, list[str]], page5: dict[str, list[str]]) -> None:
    assert flat(" ".join(page8["SEE ALSO"])) == "eximhook.toml(5), exim4(8), update-exim4.conf(8)"
    assert "eximhook(8)" in flat(" ".join(page5["SEE ALSO"]))


# -- eximhook.toml(5): every key of the config's definitions ------------------------------

EXAMPLE = example.parse((ROOT / "contrib" / "eximhook.toml").read_text())
KEYS = [pytest.param(section, f, id=f"{section}.{f.metadata['toml'] or f.name}")
        for section, cls in _SECTIONS.items() for f in fields(cls)]


def shown_value(tag: str) -> Any:
    """The TOML value in a tag ``key = VALUE``."""
    return tomllib.loads(f"v = {tag.partition(' = ')[2]}")["v"]


@pytest.mark.parametrize(("section", "f"), KEYS)
def test_every_config_key_is_in_eximhook_toml_5(page5: dict[str, list[str]], section: str, f: Any) -> None:
    key, parse = f.metadata["toml"] or f.name, f.metadata["parse"]
    assert f"[{section}]" in page5, f"no [{section}] in eximhook.toml(5)"
    tag, body = entry(page5[f"[{section}]"], key)
    written = EXAMPLE.tables[section].keys[key]
    assert parse in tomlpage.TYPES and body[0] == flat(tomlpage.TYPES[parse]), f"{section}.{key}: its type"
    assert written.comment and body[1] == flat(written.comment), f"{section}.{key}: its comment in the example file"
    if f.default is None:
        assert tag == f"{key} (unset)"
    elif written.active:  # the default, written so that the key's own check reads it back
        assert parse(shown_value(tag)) == f.default, tag
    else:  # commented out in the example: a default that depends on the machine ([store] node)
        assert tag == key and body[2] == f"Example: {key} = {written.value}"


def test_no_host_name_in_the_pages(built: dict[str, Path]) -> None:
    """[store] node defaults to this machine's name: a package built elsewhere would differ."""
    node = os.uname().nodename
    for path in built.values():
        assert f'"{node}"' not in path.read_text()


@pytest.mark.parametrize(("key", "default"), [("mode", None), ("notify_shadow", Config.notify_shadow)])
def test_the_limits_keys_are_in_eximhook_toml_5(page5: dict[str, list[str]], key: str, default: Any) -> None:
    """[limits] mode and notify_shadow, read by _limits.parse, not by a dataclass of sections."""
    tag, body = entry(page5["[limits]"], key)
    assert body[1] == flat(EXAMPLE.tables["limits"].keys[key].comment)
    assert (tag == f"{key} (unset)") if default is None else (shown_value(tag) == default)


def limit_tables() -> list[Any]:
    """Every counter with its default windows ([limits.NS.COUNTER]), and the ones the
    example file suggests that are off by default."""
    out = []
    for ns, table in _limits.default_policies().items():
        out += [pytest.param(ns, counter, policy, id=f"{ns}.{counter}") for counter, policy in table.items()]
    out += [pytest.param(*name.split(".")[1:], None, id=name) for name in EXAMPLE.tables
            if name.startswith("limits.") and not EXAMPLE.tables[name].active]
    return out


@pytest.mark.parametrize(("ns", "counter", "policy"), limit_tables())
def test_every_limit_table_is_in_eximhook_toml_5(page5: dict[str, list[str]], tmp_path: Path, ns: str, counter: str,
                                                 policy: Any) -> None:
    found = entries(page5["[limits]"])
    names = [f"[limits.{ns}.{counter}]", *([f"[limits.{ns}]"] if counter == "invalid" else [])]
    tag = next((n for n in names if n in found), None)
    assert tag, f"none of {names} in eximhook.toml(5)"
    setting, *about = found[tag]
    written = EXAMPLE.tables.get(tag.strip("[]"))
    assert about == ([flat(written.comment)] if written and written.comment else []), tag
    if policy is None:
        assert setting == "off unless set"
        return
    table = tomllib.loads(f"t = {{{setting}}}")["t"]  # read back as the config reads it
    policies, _ = _limits.parse(str(tmp_path), {ns: {counter: table}})
    assert policies[ns][counter] == policy, setting


@pytest.mark.parametrize("section", ["[exempt]", '[overrides.NS."PATTERN".COUNTER]'])
def test_the_pattern_tables_are_in_eximhook_toml_5_with_an_example_that_loads(page5: dict[str, list[str]],
                                                                              tmp_path: Path, section: str) -> None:
    lines = page5[section]
    shown = [line.strip() for line in lines[[line.strip() for line in lines].index("Example:") + 1:] if line.strip()]
    path = tmp_path / "eximhook.toml"
    path.write_text("\n".join(shown) + "\n")
    cfg = load(str(path))
    assert cfg.exempt if section == "[exempt]" else cfg.overrides


def test_every_section_is_in_eximhook_toml_5(page5: dict[str, list[str]]) -> None:
    top = {name.split(".")[0] for name in EXAMPLE.tables} | set(_SECTIONS)
    headings = {h.strip("[]").split(".")[0] for h in page5 if h.startswith("[")}
    assert top <= headings, top - headings


# -- the files as roff: man-db, reproducible, literal ------------------------------------

@pytest.mark.parametrize("name", manpages.PAGES)
def test_man_finds_nothing_to_warn_about(built: dict[str, Path], name: str) -> None:
    """What lintian runs on a package's man pages."""
    if MAN is None:
        pytest.skip("man-db is not installed")
    env = {**PLAIN, "MANROFFSEQ": "", "MANWIDTH": "80"}
    proc = subprocess.run([MAN, "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(built[name])],
                          capture_output=True, env=env, check=False)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr.decode()


@pytest.mark.parametrize(("name", "whatis"), [
    ("eximhook.8", "eximhook - block senders who mail many nonexistent recipients"),
    ("eximhook.toml.5", "eximhook.toml - the configuration of eximhook"),
])
def test_lexgrog_reads_the_name_section(built: dict[str, Path], name: str, whatis: str) -> None:
    """apropos and whatis: man-db's parser of the NAME section (lintian's bad-whatis-entry)."""
    if LEXGROG is None:
        pytest.skip("man-db is not installed")
    proc = subprocess.run([LEXGROG, str(built[name])], capture_output=True, text=True, env=PLAIN, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith(f'{built[name]}: "{whatis}'), proc.stdout + proc.stderr


def test_two_builds_give_the_same_bytes_and_no_clock(tmp_path: Path) -> None:
    """Reproducible builds: the date is SOURCE_DATE_EPOCH's, else none; nothing else
    (time zone, locale, terminal width) changes a byte."""
    def build(out: Path, **env: str) -> dict[str, bytes]:
        subprocess.run([sys.executable, "-m", "eximhook.reference.manpages", str(out)], cwd=ROOT, check=True,
                       env={**PLAIN, **env})
        return {name: (out / name).read_bytes() for name in manpages.PAGES}

    first = build(tmp_path / "a", SOURCE_DATE_EPOCH="1700000000", TZ="Pacific/Kiritimati", COLUMNS="40")
    second = build(tmp_path / "b", SOURCE_DATE_EPOCH="1700000000", TZ="UTC", LC_ALL="C", COLUMNS="200")
    assert first == second
    footer = render(first["eximhook.8"].decode()).rstrip().splitlines()[-1]
    assert "2023-11-14" in footer, footer
    undated = build(tmp_path / "c")
    assert undated["eximhook.toml.5"].startswith(b'.TH "EXIMHOOK.TOML" "5" "" ')
    assert all(text.isascii() for text in first.values())


# -- hostile text prints as written -------------------------------------------------------

def shown_as(text: str) -> str:
    """What escape promises: white space runs as one space, control characters as \\xNN."""
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 32 or 127 <= ord(c) < 160 else c for c in flat(text))


def rendered(*roff_lines: str) -> str:
    page = render("\n".join(['.TH "T" "1"', ".SH D", "BEGIN", ".br", *roff_lines, ".br", "END", ""]))
    lines = [line.strip() for line in page.splitlines()]
    return flat(" ".join(lines[lines.index("BEGIN") + 1:lines.index("END")]))


HOSTILE = [".TH x 1", "'br", ". leading dot", "\\fBbold\\fR \\\\ \\e \\(aq \\& \\- \\*(Tm \\$1", "--config -x -",
           '"quoted" arg', "`tick' ^caret ~tilde", "tab\tand\nnewline\n.SH NEW", "\x1b[31mred\x00\x7f",
           "é ü ß µ — → € 中 😀", "100%", "a\\", ".", "'"]


@pytest.mark.parametrize("text", HOSTILE)
def test_escape_prints_the_text_as_written(text: str) -> None:
    assert rendered(roff.escape(text)) == shown_as(text)


@pytest.mark.parametrize("text", HOSTILE)
def test_a_macro_argument_prints_as_written(text: str) -> None:
    """Arguments of requests (.SS) are read twice by groff (copy mode): \\\\ would not do."""
    assert rendered(roff.request("SS", text)) == shown_as(text)


@pytest.mark.parametrize("name", manpages.PAGES)
def test_what_groff_1_23_prints_otherwise_is_escaped(built: dict[str, Path], name: str) -> None:
    """From groff 1.23 on, a bare - prints as a hyphen (U+2010), ' and ` as curly quotes,
    ^ and ~ as modifier letters: an option or a value copied from the page would not work
    (Debian's groff 1.22 maps them back to ASCII, so rendering here cannot show it)."""
    bare = [line for line in built[name].read_text().splitlines() if re.search(r"(?<!\\)-|['`^~]", line)]
    assert not bare, bare[:3]


@settings(max_examples=60, deadline=None)
@given(st.text(st.one_of(st.characters(min_codepoint=0, max_codepoint=0x7f),
                         st.sampled_from("\x85\xa0éüßµ—→€中😀")), max_size=80))
def test_escape_prints_any_text_as_written(text: str) -> None:
    assert rendered(roff.escape(text)) == shown_as(text)


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_help_and_defaults_print_as_written(text: str) -> None:
    """A parser whose help strings and defaults hold requests, escapes and dashes."""
    parser = argparse.ArgumentParser(prog="eximhook", description=f"x {text}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("cmd", help=f"the command: {text}")
    p.add_argument("--opt", metavar="X", default=text, help="the option (default: %(default)s)")
    page = flat(" ".join(line for lines in sections(render(manpages.eximhook_8(parser, ""))).values()
                         for line in lines))
    assert f"the command: {shown_as(text)}" in page and f"the option (default: {shown_as(text)})" in page
    key = tomlpage.key_entry("k", text, v.text, example.Key("x", text, active=True))
    shown = rendered(*key[1:])  # without the .TP: its tag and body, one after the other
    assert shown == shown_as(f"k = {tomlpage.toml_literal(text, v.text)} {tomlpage.TYPES[v.text]} {text}")
