"""Admin commands run as root; hooks as the Exim user, umask 077, no environment,
cwd = spool. Whatever root creates must stay usable by the hooks."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from eximhook.backends.connect import _older_than
from eximhook.errors import ConfigError

from ..support.config import write_config
from ..support.fixtures import Run
from ..support.marks import needs_redis, needs_root
from ..support.paths import EXIM_USER, EXIMHOOK
from ..support.redis_server import RedisServer

pytestmark = needs_root


@pytest.fixture
def spool() -> Iterator[Path]:
    # pytest's tmp_path is 0700 under root's tree: the Exim user could not enter it
    top = Path(tempfile.mkdtemp(prefix="eximhook-perm-"))
    top.chmod(0o755)
    spool = top / "spool"
    spool.mkdir()
    exim = pwd.getpwnam(EXIM_USER)
    os.chown(spool, exim.pw_uid, exim.pw_gid)
    yield top
    shutil.rmtree(top)


def as_exim(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["setpriv", f"--reuid={EXIM_USER}", f"--regid={EXIM_USER}", "--init-groups",
         sys.executable, "-IS", EXIMHOOK, "--config", str(config), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={}, cwd="/", umask=0o077, check=False)


def test_hooks_use_what_root_created(spool: Path) -> None:
    config = write_config(spool, limit=1).rename(spool / "eximhook.toml")
    config.write_text(config.read_text().replace(str(spool / "store"), str(spool / "spool/eximhook"))
                      .replace(str(spool / "mirror"), str(spool / "spool"))
                      .replace(str(spool / "eximhook.log"), str(spool / "spool/eximhook.log")))
    config.chmod(0o644)
    root = subprocess.run([sys.executable, EXIMHOOK, "--config", str(config), "block", "auth", "root-made",
                           "--no-notify"], capture_output=True, check=False)
    assert root.returncode == 0, root.stderr
    assert as_exim(config, "check-blocked", "auth", "root-made").stdout == b"1"
    assert as_exim(config, "record-invalid", "auth", "bob").stdout == b"0"
    proc = as_exim(config, "record-invalid", "auth", "bob")  # trips: rewrites the mirrors as the Exim user
    assert (proc.returncode, proc.stdout) == (0, b"1")
    assert b'"bob"' in (spool / "spool/blocked_authenticated_users").read_bytes()
    exim_uid = pwd.getpwnam(EXIM_USER).pw_uid
    made = [spool / "spool/eximhook" / f for f in ("data.mdb", "lock.mdb", "mirror.lock")]
    made += [spool / "spool" / f for f in ("blocked_authenticated_users", "blocked_relay_users",
                                           "blocked_subjects.cdb")]
    assert {p.name: p.stat().st_uid for p in made} == {p.name: exim_uid for p in made}
    root = subprocess.run([sys.executable, EXIMHOOK, "--config", str(config), "unblock", "auth", "bob"],
                          capture_output=True, check=False)
    assert root.returncode == 0, root.stderr
    assert as_exim(config, "check-blocked", "auth", "bob").stdout == b"0"
    assert (spool / "spool/blocked_authenticated_users").stat().st_uid == exim_uid


def test_log_file_root_creates_stays_writable_for_hooks(spool: Path) -> None:
    from eximhook.log import Logger

    log = spool / "spool" / "eximhook.log"
    Logger(str(log)).log("notice", "written by root")
    assert log.stat().st_uid == pwd.getpwnam(EXIM_USER).pw_uid
    proc = subprocess.run(["setpriv", f"--reuid={EXIM_USER}", f"--regid={EXIM_USER}", "--init-groups",
                           sys.executable, "-I", "-c",
                           f"import sys; sys.path[:0] = {sys.path!r}\n"
                           f"from eximhook.log import Logger; Logger({str(log)!r}).log('notice', 'by the hook')"],
                          capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().count("\n") == 2 and "by the hook" in log.read_text()


def test_a_hook_makes_the_log_file_readable_by_its_group(spool: Path) -> None:
    """A hook or the daemon (umask 077) that creates [log] file makes it 0640, so the
    group of Debian's /var/log/exim4 (adm) can read it, as logrotate's entry recreates it."""
    config = write_config(spool).rename(spool / "eximhook.toml")
    log = spool / "spool" / "hooks.log"
    config.write_text(config.read_text().replace(str(spool / "eximhook.log"), str(log)))
    config.chmod(0o644)
    assert as_exim(config, "record-invalid", "auth", "--bad-key-is-fine", "--nonsense").stdout == b"0"
    assert log.exists() and oct(log.stat().st_mode & 0o777) == oct(0o640)
    assert log.stat().st_uid == pwd.getpwnam(EXIM_USER).pw_uid


# -- the Redis password (issue 21) ------------------------------------------------


def test_a_password_every_local_user_can_read_is_warned(tmp_path: Path, cli: Run) -> None:
    """A config that holds the Redis password (redis_url), or a password file, that the
    "other" bits let every local user read: check-config and status say so, once each."""
    secret = tmp_path / "redis.pass"
    secret.write_text("s3cret\n")
    config = write_config(tmp_path, settings={"store.backend": "redis",
                                              "store.redis_url": "unix://:s3cret@/nonexistent/redis.sock"})
    for mode, warned in ((0o644, True), (0o640, False)):
        config.chmod(mode)
        code, out, _ = cli("check-config", config_path=config)
        assert code == 0 and (f"warning: {config} holds the Redis password" in out) == warned, out
        _, out, _ = cli("status", config_path=config)
        assert (f"secrets {config} holds the Redis password" in out) == warned, out
        assert "s3cret" not in out
    config = write_config(tmp_path, settings={"store.backend": "redis", "store.redis_url": "unix:///nonexistent/r.sock",
                                              "store.redis_password_file": str(secret)})
    config.chmod(0o644)  # holds no secret now: fine
    for mode, warned in ((0o644, True), (0o640, False)):
        secret.chmod(mode)
        code, out, _ = cli("check-config", config_path=config)
        warning = f"warning: {secret} (store.redis_password_file): every local user can read"
        assert code == 0 and (warning in out) == warned, out
        assert str(config) not in out.split("ok\n", 1)[1]


def test_a_password_file_that_is_missing_or_unreadable_for_exim(tmp_path: Path, cli: Run) -> None:
    secret = tmp_path / "redis.pass"
    config = write_config(tmp_path, settings={"store.backend": "redis", "store.redis_url": "unix:///nonexistent/r.sock",
                                              "store.redis_password_file": str(secret),
                                              "exim.user": EXIM_USER})
    code, _, err = cli("check-config", config_path=config)
    assert code == 78 and f"{secret}: cannot read store.redis_password_file: No such file" in err, err
    secret.write_text("s3cret\n")
    secret.chmod(0o600)  # root's alone: the daemon, as the Exim user, could not log in
    code, out, _ = cli("check-config", config_path=config)
    assert code == 0 and f"note: {secret} (store.redis_password_file) is not readable by [exim] user" in out, out
    os.chown(secret, 0, pwd.getpwnam(EXIM_USER).pw_gid)
    secret.chmod(0o640)
    code, out, _ = cli("check-config", config_path=config)
    assert code == 0 and "redis_password_file" not in out.replace(f"(password in {secret})", ""), out


def test_a_password_in_the_url_and_a_password_file_exclude_each_other(tmp_path: Path) -> None:
    from eximhook.config.load import load

    for url in ("redis://:s3cret@127.0.0.1:6379/0", "unix:///run/redis/redis.sock?password=s3cret"):
        config = write_config(tmp_path, settings={"store.backend": "redis", "store.redis_url": url,
                                                  "store.redis_password_file": str(tmp_path / "redis.pass")})
        with pytest.raises(ConfigError, match=r"holds a password and store\.redis_password_file names a file"):
            load(str(config))


@needs_redis
@pytest.mark.parametrize("changed", [
    pytest.param(False, id="read"),
    # redis-py before 4.4 (Debian 12 ships 4.3.4) has no credential providers: there
    # eximhook reads the file when it makes the client, and a new password takes a restart
    pytest.param(True, id="read-at-each-connect", marks=pytest.mark.skipif(
        _older_than(4, 4), reason="redis-py < 4.4 reads the password file once")),
])
def test_the_password_file_is_read_at_each_connect(tmp_path: Path, changed: bool) -> None:
    """A real redis-server with requirepass: the client logs in with the file's password
    (its trailing newline stripped), and a new password in the file reaches a new
    connection without a restart; an unreadable file is a connection error naming it."""
    import redis

    from eximhook.backends.connect import client
    from eximhook.config.load import load

    server = RedisServer(tmp_path / "r", password="first-s3cret").start()
    try:
        secret = tmp_path / "redis.pass"
        secret.write_text("first-s3cret\n")
        config = write_config(tmp_path, settings={"store.backend": "redis", "store.redis_url": server.url,
                                                  "store.redis_password_file": str(secret)})
        with redis.Redis.from_url(server.url) as anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()  # the server does want the password
        store = load(str(config)).store
        conn = client(store)
        conn.set(b"k", b"v")
        if changed:
            conn.config_set("requirepass", "second-s3cret")
            secret.write_text("second-s3cret\r\n")
            conn.connection_pool.disconnect()  # as after a Redis restart: the next call connects anew
        assert conn.get(b"k") == b"v"
        conn.close()
        secret.unlink()
        with pytest.raises(redis.ConnectionError, match=f"cannot read \\[store\\] redis_password_file {secret}"):
            client(store).ping()  # when it connects, or (redis-py < 4.4) when the client is made
    finally:
        server.close()


@needs_root
def test_a_config_another_user_can_change_or_exim_cannot_read_is_warned(tmp_path: Path, cli: Run) -> None:
    """Root runs the commands the config names ([notify] sendmail) for every admin
    command: a config the Exim user can change (a group-writable one) hands it root, and
    one it cannot read stops the hooks and the daemon."""
    import grp

    config = write_config(tmp_path, settings={"exim.user": EXIM_USER})
    exim_gid = grp.getgrnam(EXIM_USER).gr_gid
    changed = f"warning: {config} can be changed by another user than root"
    unread = f"warning: [exim] user {EXIM_USER} cannot read {config}"
    for mode, gid, warned, unreadable in ((0o640, exim_gid, False, False), (0o660, exim_gid, True, False),
                                          (0o646, 0, True, False), (0o600, 0, False, True)):
        os.chown(config, 0, gid)
        config.chmod(mode)
        code, out, _ = cli("check-config", config_path=config)
        assert code == 0 and (changed in out, unread in out) == (warned, unreadable), (oct(mode), out)
        code, out, _ = cli("status", config_path=config)
        assert ("config " + changed.removeprefix("warning: ") in out) == warned, out
    os.chown(config, 0, exim_gid)
    config.chmod(0o640)
    tmp_path.chmod(0o770)
    _, out, _ = cli("check-config", config_path=config)
    assert f"warning: {tmp_path} can be changed by another user than root" in out, "a rename in its directory"
    tmp_path.chmod(0o700)
