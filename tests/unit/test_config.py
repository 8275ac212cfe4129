from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from eximhook.config import ENV_VAR, hookcache, resolve_path
from eximhook.config.load import _SECTIONS, Config, load
from eximhook.errors import ConfigError
from eximhook.model.policy import Policy

from ..support.paths import ROOT

MINIMAL = """
[store]
path = "/var/spool/exim4/eximhook"
mirror_dir = "/var/spool/exim4"

[limits.auth]
limit = 100
period = "1h"

[notify]
to = "abuse@example.net"
from = "root"
sendmail = ["/usr/sbin/exim", "-f", "root"]
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "eximhook.toml"
    path.write_text(text)
    return str(path)


def test_minimal_config_from_the_issue(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, MINIMAL))
    assert cfg.store.path == "/var/spool/exim4/eximhook"
    assert cfg.policy("auth", "invalid") == Policy("invalid", ((100, 3600.0),), "enforce")
    assert cfg.policies["relay"] == Config().policies["relay"]  # defaults fill what is missing
    assert cfg.notify.sender == "root"
    assert cfg.notify.sendmail == ("/usr/sbin/exim", "-f", "root")
    assert cfg.hooks.check == "open"


def test_empty_file_gives_every_default(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, ""))
    assert cfg.store == Config().store
    assert cfg.exim.binary == "/usr/sbin/exim4"


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, MINIMAL))
    with pytest.raises(AttributeError):
        cfg.store.path = "/tmp"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[store]\npath = 'relative'\n", r"store\.path must be an absolute path", id="relative-path"),
        pytest.param("[limits.auth]\nlimit = 0\n", r"limits\.auth\.limit must be a whole number", id="zero-limit"),
        pytest.param("[limits.auth]\nlimit = true\n", r"limits\.auth\.limit", id="bool-limit"),
        pytest.param("[limits.auth]\nperiod = '1x'\n", r"limits\.auth\.period bad period", id="bad-period"),
        pytest.param("[limits.smtp]\nlimit = 3\n", r"unknown section \[limits\.smtp\]", id="unknown-ns"),
        pytest.param("[limits.auth.failrate]\nlimit = 100\n", r"failrate is a percentage, from 1 to 99",
                     id="ratio-over-100"),
        pytest.param("[limits.auth.failrate]\nminimum = 0\n", r"failrate\.minimum must be a whole number",
                     id="ratio-minimum"),
        pytest.param("[limits.auth.rcpts]\nminimum = 5\n", r"unknown key limits\.auth\.rcpts\.minimum",
                     id="minimum-not-a-ratio"),
        pytest.param("[notify]\nsendmail = 'exim'\n", r"notify\.sendmail must be a list", id="sendmail-string"),
        pytest.param("[notify]\nsendmail = ['exim']\n", r"notify\.sendmail must be an absolute", id="sendmail-rel"),
        pytest.param("[notify]\nwarnto = 'x'\n", r"unknown key notify\.warnto", id="unknown-key"),
        pytest.param("[hooks]\ncheck = 'maybe'\n", r'hooks\.check must be "open" or "closed"', id="bad-policy"),
        pytest.param("[relay]\nipv6_prefix = 129\n", r"relay\.ipv6_prefix", id="bad-prefix"),
        pytest.param("[expiry]\nafter = 'soon'\n", r"expiry\.after bad period", id="bad-expiry"),
        pytest.param("[expiry]\nescalate = 0.5\n", r"expiry\.escalate must be a number of at least 1", id="shrinking"),
        pytest.param("[bogus]\n", r"unknown section \[bogus\]", id="unknown-section"),
        pytest.param("[store]\nbackend = 'memcached'\n", r'store\.backend must be "lmdb" .* or "redis"',
                     id="bad-backend"),
        pytest.param("[store]\nredis_url = 'http://redis:6379'\n", r"store\.redis_url 'http://redis:6379' is not a "
                     r"redis://, rediss:// or unix:// URL", id="http-url"),
        pytest.param("[store]\nbackend = 'redis'\nredis_url = 'redis://'\n",
                     r"store\.redis_url 'redis://' names no host", id="no-host"),
        pytest.param("[store]\nredis_url = 'redis://h:99999'\n", r"store\.redis_url is not a URL \(Port out of range",
                     id="bad-port"),
        pytest.param("[store]\nredis_url = 'redis://h/zero'\n", r"the database must be a number", id="bad-db"),
        pytest.param("[store]\nredis_url = 'unix://run/redis.sock'\n", r"must name an absolute socket path",
                     id="relative-socket"),
        pytest.param("[store]\nredis_url = 'unix:///r.sock?db=x'\n", r"the database must be a number",
                     id="bad-socket-db"),
        pytest.param("[store]\nbackend = 'redis'\n", r'store\.redis_url must be set when store\.backend is "redis"',
                     id="redis-without-url"),
        pytest.param("[store]\nbackend = 'redis'\nredis_url = 'redis://h'\nredis_timeout = 1\n",
                     r"store\.redis_timeout 1s must be below serve\.timeout 1s", id="redis-slower-than-serve"),
        pytest.param("store = 1\n", r"store must be a table", id="not-a-table"),
        pytest.param("[store\n", r"invalid TOML", id="bad-toml"),
    ],
)
def test_invalid_config_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load(path)
    assert str(info.value).startswith(path)


def test_missing_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read config: No such file"):
        load(str(tmp_path / "nope.toml"))


def test_config_path_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_path(None) == "/etc/eximhook/eximhook.toml"
    monkeypatch.setenv(ENV_VAR, "/x/env.toml")
    assert resolve_path(None) == "/x/env.toml"
    assert resolve_path("/x/opt.toml") == "/x/opt.toml"


def _windows(view: hookcache.View) -> tuple[tuple[tuple[int, float], ...], str]:
    policy = view.policy("auth", "invalid")
    assert policy is not None
    return policy.windows, policy.mode


def test_hook_cache_follows_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    view, cached = hookcache.view(path)
    assert not cached and _windows(view) == (((100, 3600.0),), "enforce")
    again, cached = hookcache.view(path)
    assert cached and again.plain() == view.plain()
    write(tmp_path, MINIMAL.replace("limit = 100", "limit = 7"))  # the stamp changes: no stale read
    view, cached = hookcache.view(path)
    assert not cached and _windows(view) == (((7, 3600.0),), "enforce")


def test_hook_cache_garbage_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    Path(hookcache.cache_path(path)).write_bytes(b"\x00garbage")
    view, cached = hookcache.view(path)
    assert not cached and view.store == "/var/spool/exim4/eximhook"


def test_hook_cache_of_another_shape_is_stale(tmp_path: Path) -> None:
    """A cache a release with other fields wrote (same config file) is read again, not
    misread: the stamp holds the view's fields and the version."""
    import marshal

    path = write(tmp_path, MINIMAL)
    view, _ = hookcache.view(path)
    stamp = hookcache._stamp(path)
    older = {k: v for k, v in view.plain().items() if k != "hold"}
    Path(hookcache.cache_path(path)).write_bytes(marshal.dumps((("older", *stamp[1:]), older)))
    assert hookcache.view(path)[1] is False


def test_the_hooks_view_is_the_configs(tmp_path: Path) -> None:
    """What the hooks read from the cache is what the daemon builds from the config:
    every field, the policies and overrides as objects again."""
    path = write(tmp_path, MINIMAL + '\n[overrides.auth."bulk*".invalid]\nlimit = 5000\n'
                                      '[exempt]\nauth = ["ops@*"]\n[expiry]\nafter = "6h"\n'
                                      '[owner]\nnotify = true\npattern = {auth = "$key"}\n')
    cfg = load(path)
    direct = hookcache.View.of(cfg)
    assert not hookcache.view(path)[1]
    read, cached = hookcache.view(path)
    assert cached
    for name in hookcache.View.FIELDS:
        if name not in ("policies", "overrides"):
            assert getattr(read, name) == getattr(direct, name), name
    for key in ("bulk1", "bob"):
        want, got = cfg.policy("auth", "invalid", key), read.policy("auth", "invalid", key)
        assert want is not None and got is not None and (got.windows, got.mode) == (want.windows, want.mode)
    bulk = read.policy("auth", "invalid", "bulk1")
    assert bulk is not None and bulk.windows[0][0] == 5000


def test_example_config_shows_every_default(tmp_path: Path) -> None:
    path = ROOT / "contrib" / "eximhook.toml"
    example, text = load(str(path)), path.read_text()
    # as loading an empty file resolves them (defaults derived from others, such as
    # [relaytest] blocked_nets from [store] mirror_dir, included)
    defaults = load(write(tmp_path, ""))
    assert example.policies == defaults.policies and example.notify_shadow == defaults.notify_shadow
    for section, cls in _SECTIONS.items():
        assert getattr(example, section) == getattr(defaults, section), section
        assert f"[{section}]" in text
        for f in fields(cls):  # set, or shown commented out where the default is "unset"
            key = f.metadata["toml"] or f.name
            assert re.search(rf"^#? ?{key} = ", text, re.M), f"{section}.{key} missing from {path.name}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[store]\nmap_size = 12288\n", r"store\.map_size is 12288 bytes; it must be at least 1048576",
                     id="tiny-map"),
        pytest.param("[notify]\nstale_after = 60\n",
                     r"notify\.stale_after 60s is too short: one send may take 100s .* use at least 200s",
                     id="short-stale-after"),
        pytest.param("[store]\nowner = \"nosuchuser\"\n", r"store\.owner is 'nosuchuser', but there is no user",
                     id="owner-missing"),
        pytest.param("[store]\nowner = \"root:nosuchgroup\"\n", r"store\.owner .* there is no group 'nosuchgroup'",
                     id="owner-group-missing"),
        pytest.param("[notify]\nstale_after = 300\n[exim]\ntimeout = 60\n",
                     r"notify\.stale_after 300s is too short: one send may take 190s", id="slow-exim"),
    ],
)
def test_check_config_refuses_unsafe_values(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, text))


def test_named_counters_with_several_windows(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, """
[limits]
mode = "enforce"
[limits.auth]
limit = 7
[limits.auth.recipients]
windows = [{limit = 500, period = "1d"}, {limit = 100, period = "1h"}]
mode = "shadow"
[limits.sender.recipients]
limit = 50
period = "10m"
[limits.local.bounces]
windows = []
"""))
    assert cfg.policy("auth", "invalid") == Policy("invalid", ((7, 3600.0),), "enforce")
    assert cfg.policy("auth", "recipients") == Policy("recipients", ((100, 3600.0), (500, 86400.0)), "shadow")
    assert cfg.policy("sender", "recipients") == Policy("recipients", ((50, 600.0),), "enforce")
    assert cfg.policy("sender", "bounces") == Policy("bounces", ((100, 3600.0),), "enforce"), "the global mode"
    local = cfg.policy("local", "bounces")
    assert local is not None and local.windows == (), "windows = [] turns a counter off"


def test_new_counters_start_in_shadow_mode(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "[limits.auth.bounces]\nlimit = 20\nperiod = '1h'\n"))
    assert cfg.policy("auth", "bounces") == Policy("bounces", ((20, 3600.0),), "shadow")
    assert cfg.policy("auth", "invalid") is not None and cfg.policy("auth", "invalid").mode == "enforce"  # type: ignore[union-attr]


def test_the_global_mode_never_turns_off_the_invalid_counter(tmp_path: Path) -> None:
    """An admin who sets [limits] mode = "shadow" to measure the new counters keeps
    today's blocking; the invalid counter changes mode only in its own table."""
    cfg = load(write(tmp_path, "[limits]\nmode = 'shadow'\n[limits.auth]\nlimit = 50\nperiod = '1h'\n"))
    assert cfg.policy("auth", "invalid") == Policy("invalid", ((50, 3600.0),), "enforce")
    assert cfg.policy("relay", "invalid") == Policy("invalid", ((100, 3600.0),), "enforce")
    assert cfg.policy("auth", "recipients").mode == "shadow"  # type: ignore[union-attr]
    cfg = load(write(tmp_path, "[limits]\nmode = 'enforce'\n[limits.relay]\nmode = 'shadow'\n"))
    assert cfg.policy("relay", "invalid").mode == "shadow", "its own table does"  # type: ignore[union-attr]
    assert cfg.policy("relay", "bounces").mode == "enforce"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[limits.auth]\nlimit = 3\n[limits.auth.invalid]\nlimit = 4\n", r"same counter",
                     id="legacy-and-named"),
        pytest.param("[limits.auth.volume]\nlimit = 3\n", r"limits\.auth\.volume: counters are", id="unknown-counter"),
        pytest.param("[limits.auth.recipients]\nmode = 'warn'\n", r"limits\.auth\.recipients\.mode must be",
                     id="bad-mode"),
        pytest.param("[limits.sender.recipients]\nlimit = 3\n", r"needs a period", id="no-default-period"),
        pytest.param("[limits.auth.recipients]\nwindows = [{limit = 1, period = '1h'}, {limit = 2, period = '60m'}]\n",
                     r"two windows of the same period", id="same-period"),
        pytest.param("[limits.auth.recipients]\nwindows = [{limit = 0, period = '1h'}]\n",
                     r"windows\[0\]\.limit must be", id="zero-in-windows"),
        pytest.param("[limits.auth.recipients]\nwindows = 3\n", r"windows must be a list", id="windows-not-list"),
        pytest.param("[limits]\nmode = 1\n", r"limits\.mode must be", id="global-mode"),
    ],
)
def test_bad_counter_config(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "schedule"),
    [pytest.param("", None, id="default-off"), pytest.param("after = 0", None, id="zero"),
     pytest.param('after = "0"', None, id="zero-text"),
     pytest.param('after = "6h"\nmax = "1d"\nmanual = true', (21600.0, 2.0, 86400.0, 2592000.0, True), id="on")],
)
def test_expiry_schedule_reaches_the_hooks(tmp_path: Path, text: str, schedule: tuple[object, ...] | None) -> None:
    path = write(tmp_path, f"[expiry]\n{text}\n")
    assert load(path).expiry.schedule() == schedule
    assert hookcache.view(path)[0].expiry == schedule


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", id="tcp"),
        pytest.param("rediss://:s3cret@redis.example.net:6380/2", "rediss://:***@redis.example.net:6380/2", id="tls"),
        pytest.param("redis://eximhook:s3cret@[2001:db8::1]", "redis://eximhook:***@[2001:db8::1]", id="ipv6-user"),
        pytest.param("unix:///run/redis/redis.sock?db=3", "unix:///run/redis/redis.sock?db=3", id="socket"),
        pytest.param("unix://:s3cret@/run/redis/redis.sock", "unix://:***@/run/redis/redis.sock", id="socket-password"),
        pytest.param("unix:///run/redis/redis.sock?password=s3cret&db=0", "unix:///run/redis/redis.sock?password=***&db=0",
                     id="password-parameter"),
    ],
)
def test_redis_backend_urls(tmp_path: Path, url: str, shown: str) -> None:
    from eximhook.config.values import shown_url

    cfg = load(write(tmp_path, f"[store]\nbackend = 'redis'\nredis_url = '{url}'\n"))
    assert (cfg.store.backend, cfg.store.redis_url, cfg.store.redis_timeout) == ("redis", url, 0.5)
    assert shown_url(url) == shown and "s3cret" not in shown
