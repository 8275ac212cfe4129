"""Shared fixtures: a config in tmp_path, the CLI in-process, hooks as real processes."""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eximhook.cli.main import main

from .e2e.harness import EXIM, EXIMHOOK, Daemon, toml_value
from .redis_ha import ClusterNode
from .redis_server import REDIS_SERVER, RedisServer


def write_config(tmp_path: Path, extra: str = "", limit: int = 5, sendmail: str | None = None,
                 settings: dict[str, object] | None = None) -> Path:
    """A config in ``tmp_path``; ``settings`` ("section.key": value) go into their tables."""
    sections: dict[str, dict[str, str]] = {
        "store": {"path": f'"{tmp_path}/store"', "mirror_dir": f'"{tmp_path}/mirror"'},
        "limits.auth": {"limit": str(limit), "period": '"1h"'},
        "limits.relay": {"limit": str(limit), "period": '"1h"'},
        "notify": {"to": '"abuse@example.net"', "sendmail": f"[{sendmail or chr(34) + '/bin/true' + chr(34)}]"},
        "log": {"file": f'"{tmp_path}/eximhook.log"'},
        "serve": {"socket": f'"{tmp_path}/eximhook.sock"'},
        # everything here runs as root, in pytest's private tmp_path: the Exim user
        # could not even enter it (tests of that user's view set exim.user back)
        "exim": {"user": '"root"'},
    }
    for dotted, value in (settings or {}).items():
        section, _, key = dotted.rpartition(".")
        sections.setdefault(section, {})[key] = toml_value(value)
    text = "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in table.items())
                   for name, table in sections.items())
    (tmp_path / "mirror").mkdir(exist_ok=True)
    path = tmp_path / "eximhook.toml"
    path.write_text(text + extra)
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(config: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``eximhook --config CONFIG ARGS...`` in-process: (exit code, stdout, stderr)."""

    def run(*args: str, config_path: Path | None = None) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--config", str(config_path or config), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def hook(config: Path, *args: str, user: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    """Run the installed hook as a real process, as Exim would (optionally as the Exim
    user, with an empty environment), stdout and stderr merged as in ``$value``."""
    argv = [sys.executable, "-IS", EXIMHOOK, "--config", str(config), *args]
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *argv]
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={}, timeout=timeout,
                          cwd="/", check=False)


def outbox_drained(config: Path) -> bool:
    """No notification to the abuse desk is left in the outbox (queued, held or being
    sent): another cannot come without a new event. Wait for this, then count the mail."""
    listed = subprocess.run([sys.executable, "-IS", EXIMHOOK, "--config", str(config), "list", "--json"],
                            capture_output=True, env={}, cwd="/", timeout=30, check=True)
    return all(b["notification"] is None for b in json.loads(listed.stdout))


def exim_expand(expression: str) -> str:
    """Expand ``expression`` with the real Exim (``exim -be``)."""
    proc = subprocess.run([EXIM, "-be"], input=expression.encode() + b"\n", capture_output=True, check=True)
    # -be prints "> " before each result and once more at the end of its input
    return proc.stdout.decode("utf-8", "replace").split("\n")[0].removeprefix("> ")


def pytest_sessionstart(session: pytest.Session) -> None:
    """The hooks run from the installed copy (as Exim runs them): refuse to test a
    stale one, which would pass or fail for code that is not in this checkout."""
    probe = [sys.executable, "-I", "-c", "import eximhook, os; print(os.path.dirname(eximhook.__file__))"]
    installed = Path(subprocess.run(probe, capture_output=True, text=True, cwd="/", check=False).stdout.strip())
    here = Path(__file__).resolve().parent.parent / "eximhook"
    ours = [p.relative_to(here) for p in [*here.rglob("*.py"), *here.glob("*.tmpl")]]  # the subpackages too
    stale = [str(p) for p in ours
             if not (installed / p).is_file() or (installed / p).read_bytes() != (here / p).read_bytes()]
    if stale or not os.path.exists(EXIMHOOK):
        pytest.exit(f"the eximhook installed for {sys.executable} is not this checkout ({', '.join(stale) or EXIMHOOK}"
                    " differs): run `bash contrib/install.sh --dev` (or pip install .)", returncode=4)


# CI (CI=true) has Exim and root: there these tests must run, never skip.
_CI = os.environ.get("CI") == "true"
needs_exim = pytest.mark.skipif(not _CI and not os.path.exists(EXIM), reason="needs exim4-daemon-heavy")
needs_root = pytest.mark.skipif(not _CI and os.geteuid() != 0, reason="needs root (to become the Exim user)")


Serve = Callable[[Path], Daemon]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start ``eximhook serve`` on a config; every daemon started is stopped at teardown,
    whatever the test did (a failed assert must not leave one running)."""
    started: list[Daemon] = []

    def start(config: Path) -> Daemon:
        started.append(Daemon(config).start())
        return started[-1]

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def daemon(tmp_path: Path, serve: Serve) -> Daemon:
    return serve(write_config(tmp_path, settings={"notify.hold": 0.5}))


# A sendmail stand-in: one file per message (named by time and pid, so concurrent
# senders never overwrite each other and a duplicate cannot hide; renamed into place
# whole, so a test never reads half a message); fails while FAIL exists; hangs while
# HANG exists; takes the message and then hangs while SLOW exists.
STAND_IN = """#!/bin/sh
[ -e "{dir}/HANG" ] && sleep 30
[ -e "{dir}/FAIL" ] && {{ echo "stand-in failure" ; exit 75 ; }}
{{ echo "ARGV: $*"; cat; }} > "{dir}/out/.$$.tmp"
mv "{dir}/out/.$$.tmp" "{dir}/out/$(date +%s%N)-$$.eml"
[ -e "{dir}/SLOW" ] && sleep 30
exit 0
"""


@pytest.fixture
def mailbox(tmp_path: Path) -> Path:
    box = tmp_path / "sendmail"
    (box / "out").mkdir(parents=True)
    script = box / "sendmail.sh"
    script.write_text(STAND_IN.format(dir=box))
    script.chmod(0o755)
    return box


def sent(mailbox: Path) -> list[tuple[str, email.message.EmailMessage]]:
    """What the stand-in received, oldest first: (recipient, message)."""
    out = []
    for path in sorted((mailbox / "out").glob("*.eml")):
        argv, _, raw = path.read_bytes().partition(b"\n")
        assert argv.startswith(b"ARGV: -f root ") and argv.count(b" ") == 3, "one recipient, as an argument"
        out.append((argv.rpartition(b" ")[2].decode(), email.message_from_bytes(raw, policy=email.policy.default)))
    return out  # type: ignore[return-value]


def messages(mailbox: Path) -> list[email.message.EmailMessage]:
    """What the stand-in received, oldest first, all of it for the abuse desk."""
    out = sent(mailbox)
    assert [to for to, _ in out] == ["abuse@example.net"] * len(out)
    return [msg for _, msg in out]


# The Redis backend's tests need a real redis-server (see redis_server.py); CI installs
# it (install.sh --dev), so there they must run, never skip.
needs_redis = pytest.mark.skipif(not _CI and not os.path.exists(REDIS_SERVER), reason="needs redis-server")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session, started on first use and stopped by its pid."""
    if not _CI and not os.path.exists(REDIS_SERVER):
        pytest.skip("needs redis-server")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's redis-server, emptied for this test: its URL."""
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterNode]:
    """A one-node Redis Cluster for the session (redis_ha.py: TCP on 127.0.0.1, a free
    port), started on first use and stopped by its pid."""
    if not _CI and not os.path.exists(REDIS_SERVER):
        pytest.skip("needs redis-server")
    node = ClusterNode(tmp_path_factory.mktemp("redis-cluster")).start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: ClusterNode) -> str:
    """The session's one-node cluster, emptied for this test: the URL of its node."""
    with redis_cluster.client() as client:
        client.flushall()
    return redis_cluster.url
