"""The owner's notification ([owner]): one mail per block beside the abuse desk's, none
for a would-block or without an address; the lookup file read back for any key, and no
key from a client able to add a header or make a sendmail option."""

from __future__ import annotations

import email
import email.policy
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eximhook.engine import owner
from eximhook.errors import BadSubject, Exit
from eximhook.model.subjects import normalize, quote
from eximhook.notify import send as notify
from eximhook.serve.protocol import encode

from ..support.config import write_config
from ..support.fixtures import Run, Serve
from ..support.mailbox import sent
from ..support.marks import needs_exim
from ..support.paths import EXIM_USER, ROOT
from ..support.waiting import wait_for

BLOCK = {"ns": "auth", "key": "bob@example.com", "since": 1700000000.0, "by": "eximhook", "reason": "limit",
         "note": None, "counter": "invalid", "limit": 5, "period": 3600.0, "period_text": "1h", "count": 6, "total": 7,
         "ips": ["192.0.2.1"], "rcpts": ["n0@example.com"]}
# what a mail may carry, and nothing else: a key can add no header
OWNER_HEADERS = ["Subject", "From", "To", "Date", "Message-ID", "Auto-Submitted", "Reply-To", "Content-Type",
                 "Content-Transfer-Encoding", "MIME-Version"]
PLAIN = re.compile(r"(?!-)[a-z0-9._+=-]+@[a-z0-9.-]+", re.I)  # no option, list, quote, pipe or path


def owner_config(tmp_path: Path, mailbox: Path, **extra: object) -> Path:
    lookup = tmp_path / "owners"
    lookup.write_bytes(b"# who owns what\nauth:carol   carol.private@example.org\n"
                       b"auth:bob@example.com  bob@home.example\n")
    return write_config(tmp_path, sendmail=f'"{mailbox}/sendmail.sh", "-f", "root"', settings={
        "owner.notify": True, "owner.lookup": str(lookup), "owner.pattern": {"auth": "$key"}, **extra})


@pytest.fixture
def config(tmp_path: Path, mailbox: Path) -> Path:
    return owner_config(tmp_path, mailbox)


def trip(cli: Run, key: str, n: int = 6) -> None:
    for i in range(n):
        cli("record-invalid", "auth", key, "--rcpt", f"n{i}@example.com", "--ip", "192.0.2.1")


def events(cli: Run, key: str) -> list[dict[str, object]]:
    return list(json.loads(cli("history", "--json", "auth", key)[1]))


def test_the_owner_gets_one_mail_per_block(cli: Run, mailbox: Path) -> None:
    trip(cli, "dave@example.com")
    assert cli("notify") == (0, "2", "")
    trip(cli, "dave@example.com")  # blocked already: no second block, no second mail
    assert cli("notify") == (0, "0", "")
    [(desk, abuse), (to, mail)] = sent(mailbox)
    assert (desk, to) == ("abuse@example.net", "dave@example.com"), "the pattern $key"
    assert abuse["Subject"] == "user dave@example.com blocked"
    assert mail["Subject"] == "Outgoing mail stopped: user dave@example.com"
    assert (mail["To"], mail["Reply-To"], mail["Auto-Submitted"]) == (to, "abuse@example.net", "auto-generated")
    assert mail["Message-ID"] != abuse["Message-ID"] and mail["Date"] == abuse["Date"]
    body = mail.get_content()
    assert "because it has sent mail to 6 invalid recipients during 1h (limit 5)." in body
    for private in ("purge", "eximhook", "n5@example.com", "192.0.2.1", "Frozen"):
        assert private not in body, f"the owner's mail shows no {private!r}"
    assert [(e["event"], e.get("to")) for e in events(cli, "dave@example.com")] == [
        ("blocked", None), ("notified", "abuse@example.net"), ("notified", "dave@example.com")]


def test_the_lookup_file_wins_over_the_pattern(cli: Run, mailbox: Path) -> None:
    trip(cli, "carol")  # no address: the pattern gives nothing
    trip(cli, "Bob@Example.com")  # folded, as subjects are
    assert cli("notify")[1] == "4"
    assert sorted(to for to, _ in sent(mailbox)) == ["abuse@example.net", "abuse@example.net", "bob@home.example",
                                                     "carol.private@example.org"]


def test_no_owner_address_mails_the_abuse_desk_alone(cli: Run, mailbox: Path, tmp_path: Path) -> None:
    trip(cli, "erin")
    assert cli("notify") == (0, "1", "")
    assert [to for to, _ in sent(mailbox)] == ["abuse@example.net"]
    assert [e["event"] for e in events(cli, "erin")] == ["blocked", "owner-unknown", "notified"]
    assert "no owner address for auth erin" in (tmp_path / "eximhook.log").read_text()


def test_a_would_block_never_mails_the_owner(tmp_path: Path, mailbox: Path, cli: Run) -> None:
    config = owner_config(tmp_path, mailbox, **{"limits.auth.mode": "shadow", "limits.notify_shadow": True})
    for i in range(6):
        cli("record-invalid", "auth", "dave@example.com", "--rcpt", f"n{i}@example.com", config_path=config)
    assert cli("notify", config_path=config) == (0, "1", "")
    [(to, msg)] = sent(mailbox)
    assert to == "abuse@example.net" and msg["Subject"] == "user dave@example.com would be blocked (shadow mode)"


@pytest.mark.parametrize("manual", [False, True])
def test_a_block_by_hand_mails_the_owner_only_if_configured(tmp_path: Path, mailbox: Path, cli: Run,
                                                            manual: bool) -> None:
    config = owner_config(tmp_path, mailbox, **{"owner.manual": manual})
    code, out, _ = cli("block", "auth", "carol", "--reason", "phished", config_path=config)
    assert code == 0
    assert ("the owner's notification goes to carol.private@example.org" in out) == manual
    assert [to for to, _ in sent(mailbox)] == ["abuse@example.net", *(["carol.private@example.org"] * manual)]
    assert "phished" not in "".join(m.as_string() for to, m in sent(mailbox) if to != "abuse@example.net")
    cli("block", "auth", "gary@example.com", "--no-notify", config_path=config)
    assert len(sent(mailbox)) == 1 + manual, "--no-notify tells nobody"


def test_the_daemon_mails_the_owner_once_under_a_bot(tmp_path: Path, mailbox: Path, cli: Run, serve: Serve) -> None:
    config = owner_config(tmp_path, mailbox, **{"notify.hold": 0.5, "exim.freeze_queued": False})
    daemon = serve(config)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: daemon.request(encode("record-invalid", "auth", "dave@example.com",
                                                      rcpt=f"n{i}@example.com")), range(64)))
    def both_sent() -> bool:
        # the mail is in the mailbox a moment before the outbox marks it sent
        shown = json.loads(cli("show", "--json", "auth", "dave@example.com", config_path=config)[1])
        return shown["owner_notification"] is None and shown["notification"] is None

    wait_for("both notifications sent", both_sent, 10)
    # nothing is left to send, so a copy, if any, is in the mailbox by now
    assert sorted(to for to, _ in sent(mailbox)) == ["abuse@example.net", "dave@example.com"]


def test_show_lists_the_owners_notification_while_pending(cli: Run, mailbox: Path) -> None:
    (mailbox / "FAIL").touch()
    trip(cli, "dave@example.com")
    assert cli("notify")[0] == Exit.TEMPFAIL
    out = cli("show", "auth", "dave@example.com")[1]
    assert "  owner's notification to dave@example.com: queued since " in out and "stand-in failure" in out


def test_check_config_reads_the_lookup_file(tmp_path: Path, cli: Run, config: Path) -> None:
    code, out, _ = cli("check-config")
    assert code == 0 and f"  owner lookup {tmp_path / 'owners'}: 2 subject(s)\n" in out
    assert "  owner notification on (pattern: auth = '$key'; blocks by hand not)\n" in out
    (tmp_path / "owners").write_bytes(b'auth:bob  bob@example.org\nauth:"unterminated  x@example.org\n'
                                      b"auth:Bob  other@example.org\nrelay:192.0.2.1 not-an-address\n"
                                      b'bob x@example.org\nauth:"a\\qb" x@example.org\nauth:nobody\n')
    code, _, err = cli("check-config")
    assert code == Exit.CONFIG
    assert err == (f"eximhook: error: {tmp_path / 'owners'}: line 2: the quoted key has no closing double quote; "
                   "line 3: auth bob is on line 1 already (the first one counts); line 4: 'not-an-address' is not a "
                   "plain address (user@domain: letters, digits, . _ + = -); line 5: not 'NS:KEY ADDRESS' with NS one "
                   "of auth, relay, sender, local, ip, net, login, customer, all; line 6: bad escape at byte 3 of the "
                   "quoted key: use \\\\, \\\" or \\xNN; line 7: no address after the key (NS:KEY ADDRESS)\n")
    (tmp_path / "owners").unlink()
    code, _, err = cli("check-config")
    assert code == Exit.CONFIG and "cannot read the [owner] lookup: No such file or directory" in err
    bare = write_config(tmp_path, settings={"owner.notify": True})
    assert "note: [owner] notify is on, but neither lookup nor pattern" in cli("check-config", config_path=bare)[1]


@needs_exim  # which makes the Exim user
def test_check_config_notes_a_lookup_file_the_exim_user_cannot_read(tmp_path: Path, mailbox: Path, cli: Run) -> None:
    config = owner_config(tmp_path, mailbox, **{"exim.user": EXIM_USER})
    (tmp_path / "owners").chmod(0o600)
    code, out, _ = cli("check-config", config_path=config)
    assert code == 0 and f"  note: {tmp_path / 'owners'} is not readable by [exim] user {EXIM_USER}" in out
    (tmp_path / "owners").chmod(0o644)
    assert "not readable" not in cli("check-config", config_path=config)[1]


def test_a_broken_lookup_file_is_logged_and_the_rest_still_counts(cli: Run, mailbox: Path, tmp_path: Path) -> None:
    (tmp_path / "owners").write_bytes(b"auth:carol carol@home.example\nauth:bad-line\n")
    trip(cli, "carol")
    assert cli("notify")[1] == "2"
    assert "[owner] lookup" in (tmp_path / "eximhook.log").read_text()
    (tmp_path / "owners").unlink()
    trip(cli, "dave@example.com")  # the pattern still applies
    assert cli("notify")[1] == "2"
    assert "cannot read it: No such file or directory" in (tmp_path / "eximhook.log").read_text()


def test_the_documented_example_lookup_parses(tmp_path: Path) -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    [example] = re.findall(r"```\n(# /etc/eximhook/owners.*?)```", docs, re.S)
    (tmp_path / "owners").write_text(example)
    entries, problems = owner.read(str(tmp_path / "owners"), 64)
    assert problems == [] and len(entries) == 4
    assert entries["relay", "2001.0db8.0000.0001.0000.0000.0000.0000/64"] == "noc@customer.example"


keys = st.binary(min_size=1, max_size=3000).filter(lambda b: b"\0" not in b)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=keys)
def test_any_key_reads_back_from_the_lookup_file(tmp_path: Path, raw: bytes) -> None:
    key = normalize("auth", raw.decode("utf-8", "surrogateescape"))
    path = tmp_path / "owners"
    path.write_bytes(b"auth:" + quote(key) + b"\towner@example.org\nauth:" + quote(key + "x") + b" x@example.org\n")
    entries, problems = owner.read(str(path), 64)
    assert problems == [] and entries == {("auth", key): "owner@example.org", ("auth", key + "x"): "x@example.org"}


@settings(max_examples=300)
@given(raw=keys, pattern=st.sampled_from(["$key", "postmaster@$domain", "$local@example.com", "${key}.x@example.com"]))
def test_a_key_from_a_client_makes_a_plain_address_or_none(raw: bytes, pattern: str) -> None:
    found = owner.from_pattern(pattern, raw.decode("utf-8", "surrogateescape"))
    assert found is None or (PLAIN.fullmatch(found) and not found.startswith("-")), found


@settings(max_examples=200, deadline=None)
@given(raw=keys, evidence=st.lists(st.text(max_size=300), max_size=5))
def test_a_key_from_a_client_adds_no_header(raw: bytes, evidence: list[str]) -> None:
    try:
        key = normalize("auth", raw.decode("utf-8", "surrogateescape"))
    except BadSubject:
        return
    block = dict(BLOCK, key=key, rcpts=evidence, ips=evidence)
    to = owner.from_pattern("$key", key) or "owner@example.org"
    mails = [(notify.compose_owner(block, to=to, sender="root", abuse="abuse@example.net"), OWNER_HEADERS),
             (notify.compose(block, to="abuse@example.net", sender="root", command=["eximhook"]),
              [h for h in OWNER_HEADERS if h != "Reply-To"])]
    for msg, headers in mails:
        raw_mail = msg.as_bytes()
        head = raw_mail.partition(b"\n\n")[0]
        assert all(line[:1] in (b" ", b"\t") or line.split(b":")[0].decode() in headers for line in head.split(b"\n"))
        parsed = email.message_from_bytes(raw_mail, policy=email.policy.default)
        assert list(parsed.keys()) == [h for h in OWNER_HEADERS if h in headers]
        assert parsed["To"] in (to, "abuse@example.net")
        assert "." not in parsed.get_content().split("\n"), "no line that ends sendmail's input"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        pytest.param('{mail = "$key"}', r"owner\.pattern has 'mail', which is not a namespace", id="namespace"),
        pytest.param('{auth = "$user@example.com"}', r"owner\.pattern auth: unknown placeholder \$user; known: "
                     r"\$domain, \$key, \$local", id="placeholder"),
        pytest.param('{auth = ""}', r"owner\.pattern auth must be a non-empty string", id="empty"),
        pytest.param('"$key"', r"owner\.pattern must be a table", id="not-a-table"),
    ],
)
def test_a_bad_pattern_is_a_config_error(tmp_path: Path, pattern: str, message: str) -> None:
    from eximhook.config.load import load
    from eximhook.errors import ConfigError

    path = tmp_path / "eximhook.toml"
    path.write_text(f"[owner]\nnotify = true\npattern = {pattern}\n")
    with pytest.raises(ConfigError, match=message):
        load(str(path))
