"""The spool -H parser on files as Exim 4.96 writes them (taken from the e2e Exim), message
ids, printable text, and missing binaries as clear errors. (The queue listed by the real
Exim: e2e/test_exim.py.)"""

from __future__ import annotations

import pytest

from eximhook.errors import EximError
from eximhook.exim.queue import MESSAGE_ID, Exim, parse_header_file, printable

HEADER_FILE = (
    b"1xVbMq-0004rw-1g-H\nDebian-exim 102 105\n<bob>\n1795468468 0\n-received_time_usec .522770\n"
    b"--helo_name client.example\n-host_address [127.0.0.1]:37997\n-host_auth plain\n"
    b"-aclc _eximhook_auth 1\n1\n--aclc _auth 10\n-aclm _x 4\n"
    b"-aclm _ns 4\nauth\n-aclm _eximhook 6\nfrozen\n--aclm _user 10\nb\nob\n-aclm\n-body_linecount 1\n"
    b"--auth_id bob\n-deliver_firsttime\n-frozen 1795468468\n"
    b"-tls_ourcert -----BEGIN CERTIFICATE-----\\nMIID\\n-----END CERTIFICATE-----\\n\n-tls_ver TLS1.3\n"
    b"NN alice@test.example\n2\nalice@test.example\ncarol@test.example 3,1#1\n\n"
    b"025F From: <bob@test.example>\n011  Subject: x\n013* Subject: old\n024  X-Authenticated-As: bob\n"
)


def test_parse_header_file() -> None:
    m = parse_header_file("1xVbMq-0004rw-1g", HEADER_FILE, data_size=100)
    assert (m.sender, m.received, m.frozen) == ("bob", 1795468468.0, True)
    assert m.acl_m == {"_ns": b"auth", "_eximhook": b"frozen", "_user": b"b\nob\n-aclm"}, (
        "values carry newlines; connection variables (-aclc, as acl-auth.conf sets) are skipped whole")
    assert m.of("auth", "b\nob\n-aclm") and not m.of("auth", "bob") and not m.of("relay", "b\nob\n-aclm")
    assert m.frozen_by_us
    assert m.recipients == ["alice@test.example", "carol@test.example"]
    assert m.subject == "x", "a header Exim removed ('*') is not the subject"
    assert m.size == 25 + 11 + 24 + 100


def test_a_sender_subject_is_the_envelope_sender_as_exim_would_qualify_it() -> None:
    m = parse_header_file("1xVbMq-0004rw-1g", HEADER_FILE)  # <bob>: submission mode left it unqualified
    assert m.of("sender", "bob@test.example", "test.example"), "whoever sent it, by its envelope sender"
    assert not m.of("sender", "bob@other.example", "test.example")
    quoted = parse_header_file("1xVbMq-0004rw-1g", HEADER_FILE.replace(b"<bob>", b'<"Odd Q"@Test.Example>'))
    assert quoted.of("sender", '"odd q"@test.example', "test.example"), "keys are folded to lower case"


def test_parse_rejects_a_foreign_file() -> None:
    with pytest.raises(EximError, match="does not start with its name"):
        parse_header_file("1xVbMq-0004rw-1g", b"other-H\n")


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        pytest.param("1xVbMq-0004rw-1g", True, id="4.96"),
        pytest.param("1qP5ju-00000001qXt-0bEt", True, id="4.97"),
        pytest.param("1xVbMq-0004rw-1g; rm", False, id="suffix"),
        pytest.param("../../etc/passwd", False, id="path"),
        pytest.param("-Mrm", False, id="option"),
        pytest.param("1xVbMq-0004rw-1g\n", False, id="trailing-newline"),
    ],
)
def test_message_ids(text: str, ok: bool) -> None:
    assert bool(MESSAGE_ID.match(text.encode())) is ok


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("Subject: \x1b]0;owned\x07\x1b[2J", "Subject: \\x1b]0;owned\\x07\\x1b[2J", id="escapes"),
        pytest.param("a\tb\nc\r\n", "a\tb\nc\\r\n", id="tab-and-newline-stay"),
        pytest.param("back\\slash", "back\\\\slash", id="backslash-doubled"),
        pytest.param("\u202egnp.exe \udcff é", "\\u202egnp.exe \\xff é", id="bidi-and-bad-bytes"),
    ],
)
def test_printable_shows_what_a_spammer_wrote_without_running_it(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_missing_binaries_are_clear_errors() -> None:
    exim = Exim("/nonexistent/exim", None, "/nonexistent/exipick", 5)
    with pytest.raises(EximError, match="/nonexistent/exim not found"):
        exim.ids(frozen=True)
    # a binary that names no version (it says nothing) is taken for one without -bpi
    with pytest.raises(EximError, match="/nonexistent/exipick not found"):
        Exim("/bin/true", None, "/nonexistent/exipick", 5).queued(frozen=True)
    with pytest.raises(EximError, match="not message ids"):
        exim.act("-Mrm", ["-Mrm", "x"])
