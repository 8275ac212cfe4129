"""The daemon's wire format: every byte survives, anything malformed is a BadRequest."""

from __future__ import annotations

import binascii

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eximhook.errors import BadRequest
from eximhook.serve.protocol import encode, parse

# keys and values as Exim hands them over: any bytes, read with surrogateescape
any_text = st.binary(max_size=600).map(lambda b: b.decode("utf-8", "surrogateescape"))


def b64(raw: bytes) -> bytes:
    return binascii.b2a_base64(raw, newline=False)


@given(key=any_text.filter(bool), rcpt=any_text, ip=any_text)
def test_record_invalid_round_trips(key: str, rcpt: str, ip: str) -> None:
    line = encode("record-invalid", "auth", key, rcpt=rcpt, ip=ip)
    assert line.count(b"\n") == 1 and line.endswith(b"\n"), "one line, whatever the fields hold"
    req = parse(line[:-1])
    assert (req.op, req.ns, req.key, req.kind) == ("record-invalid", "auth", key, "invalid")
    assert req.fields == {"rcpt": rcpt, "ip": ip}


@pytest.mark.parametrize("byte", range(256))
def test_every_byte_value_in_a_key(byte: int) -> None:
    raw = b"a" + bytes([byte]) + b"z"
    req = parse(encode("check-blocked", "relay", raw.decode("utf-8", "surrogateescape"))[:-1])
    assert req.key.encode("utf-8", "surrogateescape") == raw


def test_kilobytes_of_key() -> None:
    key = "k" * 20000
    assert parse(encode("record", "relay", key, kind="invalid", evidence="x" * 17000)[:-1]).key == key


def test_generic_record_and_the_rest() -> None:
    req = parse(encode("record", "relay", "192.0.2.7", kind="invalid", evidence="n@x", ip="192.0.2.7")[:-1])
    assert (req.op, req.kind, req.ns, req.key, req.fields) == (
        "record", "invalid", "relay", "192.0.2.7", {"evidence": "n@x", "ip": "192.0.2.7"})
    assert parse(b"ping").op == "ping"
    assert parse(b"frozen auth " + b64(b"bob") + b" id=" + b64(b"1xVbMq-0004rw-1g")).fields == {
        "id": "1xVbMq-0004rw-1g"}
    assert parse(b"check-blocked auth " + b64(b"bob") + b"\r").key == "bob", "CR LF from a client"
    assert parse(b"record-invalid auth " + b64(b"bob") + b" rcpt= ip=").fields == {"rcpt": "", "ip": ""}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        pytest.param(b"", "unknown operation", id="empty"),
        pytest.param(b"launch auth Ym9i", "unknown operation", id="unknown-op"),
        pytest.param(b"ping extra", "unknown operation", id="ping-with-args"),
        pytest.param(b"check-blocked", "needs NS and KEY", id="no-subject"),
        pytest.param(b"check-blocked auth", "needs NS and KEY", id="no-key"),
        pytest.param(b"check-blocked smtp Ym9i", "unknown namespace", id="bad-ns"),
        pytest.param(b"check-blocked auth Ym9i!", "not base64", id="junk-in-key"),
        pytest.param(b"check-blocked auth Ym9", "not base64", id="truncated-base64"),
        pytest.param(b"check-blocked auth Y m9i", "not base64", id="space-in-key"),
        pytest.param(b"check-blocked auth Ym9i rcpt=eA==", "takes no argument", id="field-not-for-op"),
        pytest.param(b"record-invalid auth Ym9i rcpt", "takes no argument", id="field-without-value"),
        pytest.param(b"record-invalid auth Ym9i rcpt=eA== rcpt=eA==", "given twice", id="duplicate"),
        pytest.param(b"record-invalid auth Ym9i  rcpt=eA==", "takes no argument", id="double-space"),
        pytest.param(b"record auth Ym9i", "needs a kind", id="record-without-kind"),
        pytest.param(b"record volume auth Ym9i", "needs a kind", id="record-unknown-kind"),
        pytest.param(b"message auth Ym9i sender=eA==", "needs n=", id="message-without-n"),
        pytest.param(b"message auth Ym9i n=LTM=", "not a number of recipients", id="negative-n"),
        pytest.param(b"message auth Ym9i n=MQ== mid=eA== mid=eQ==", "given twice", id="mid-twice"),
        pytest.param(b"bounce", "needs SENDER", id="bounce-without-sender"),
        pytest.param(b"frozen auth Ym9i", "needs id=", id="frozen-without-id"),
        pytest.param(b"frozen auth Ym9i id=Li4vZXRj", "not an Exim message id", id="bad-message-id"),
    ],
)
def test_malformed(line: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse(line)


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_bad_request(line: bytes) -> None:
    try:
        req = parse(line)
    except BadRequest:
        return
    assert req.op in ("ping", "check-blocked", "record-invalid", "record", "frozen")
