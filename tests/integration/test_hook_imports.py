"""A ``${run}`` hook is a fresh interpreter per Exim call: what it imports is its cost
(``bench/hooks.py``). Each hook path loads only the modules on its list: no Redis client
(~0.1 s: ``bench/redis_hook.py``), no typing, dataclasses, enum, argparse or tomllib
(milliseconds each against a ~10 ms start), no module of the admin's commands, the
daemon or the notifications; a trip may add what making a block needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..support.config import write_config

# What every hook loads: the package, the hooks' view of the config, the store.
COMMON = {"eximhook", "eximhook.hooks", "eximhook.errors", "eximhook.log", "eximhook.periods", "eximhook.perms",
          "eximhook.config", "eximhook.config.hookcache", "eximhook.model", "eximhook.model.subjects",
          "eximhook.model.policy", "eximhook.model.ratelimit", "eximhook.model.records", "eximhook.model.evidence",
          "eximhook.model.counter", "eximhook.storage", "eximhook.storage.env", "eximhook.storage.store"}
# A count: the counters, the one path from a request to counts (and the combined score) and from a count to a block.
COUNT = COMMON | {"eximhook.storage.counters", "eximhook.storage.budget", "eximhook.storage.refs",
                  "eximhook.engine", "eximhook.engine.events", "eximhook.engine.settle",
                  "eximhook.engine.scores", "eximhook.model.score", "eximhook.engine.logins",
                  "eximhook.backends", "eximhook.backends.base", "eximhook.backends.lmdb"}
# A trip: the block's record (json), its exemption check, the spool guard, the mirror files.
TRIP = COUNT | {"eximhook.model.patterns", "eximhook.model.spool", "eximhook.storage.mirror", "eximhook.storage.cdb",
                "eximhook.storage.known"}
NEVER = {"redis", "typing", "dataclasses", "enum", "argparse", "tomllib"}
TRIP_NEVER = NEVER - {"enum"}  # json's re brings enum: a block's record is JSON

# imports nothing itself (json would bring re and enum): one call per argument, its
# words separated by tabs
PROBE = """
import sys
from eximhook import hooks
for call in sys.argv[2:]:
    name, *args = call.split("\\t")
    hooks.run(name, args, sys.argv[1])
print()
print(" ".join(sys.modules))
"""


def loaded(config: Path, calls: list[tuple[str, list[str]]]) -> tuple[str, set[str]]:
    """The tokens the hooks printed, and the modules the process holds after them."""
    proc = subprocess.run([sys.executable, "-I", "-c", PROBE, str(config),
                           *("\t".join([name, *args]) for name, args in calls)],
                          capture_output=True, text=True, check=True, cwd="/")
    tokens, modules = proc.stdout.split("\n")[:2]
    return tokens, set(modules.split())


@pytest.mark.parametrize(("calls", "tokens", "allowed", "never"), [
    pytest.param([("check-blocked", ["auth", "bob"])], "0", COMMON, NEVER, id="check"),
    pytest.param([("record-invalid", ["auth", "bob", "--rcpt", "x@example.com"])], "0", COUNT, NEVER, id="count"),
    pytest.param([("record-invalid", ["auth", "bob", "--rcpt", "x@example.com"]),
                  ("record-invalid", ["auth", "bob", "--rcpt", "y@example.com"])], "01", TRIP, TRIP_NEVER, id="trip"),
    pytest.param([("record-message", ["auth", "bob", "--count", "1", "--sender", "bob@example.com"])], "0", COUNT,
                 NEVER, id="message"),
    pytest.param([("record-message", ["auth", "bob", "--count", "1", "--ip", "192.0.2.7"])], "0",
                 COUNT | {"eximhook.storage.known"}, NEVER, id="message-learns"),
])
def test_a_hook_loads_only_its_modules(tmp_path: Path, calls: list[tuple[str, list[str]]], tokens: str,
                                       allowed: set[str], never: set[str]) -> None:
    config = write_config(tmp_path, limit=1)
    loaded(config, [("check-blocked", ["auth", "nobody"])])  # the config cache, as check-config leaves it
    printed, modules = loaded(config, calls)
    assert printed == tokens, "the hooks ran and answered"
    ours = {m for m in modules if m.split(".")[0] == "eximhook"}
    assert ours <= allowed, f"modules a hook must not load: {sorted(ours - allowed)}"
    others = {m.split(".")[0] for m in modules} - set(sys.stdlib_module_names) - {"eximhook"}
    assert others <= {"lmdb", "__main__", "sitecustomize", "_distutils_hack"}, sorted(others)
    assert not (modules & never), sorted(modules & never)
