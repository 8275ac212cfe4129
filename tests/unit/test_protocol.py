"""The daemon's wire format: every byte survives, anything malformed is a BadRequest."""

from __future__ import annotations

import binascii

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eximhook.errors import BadRequest
from eximhook.model.evidence import CUT_END
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
        pytest.param(b"check-blocked auth Ym9i=", "not base64", id="padding-past-the-end"),
        pytest.param(b"check-blocked auth Ym9i====", "not base64", id="padding-quad"),
        pytest.param(b"check-blocked auth Ym9=", "not base64", id="spare-bits-set"),
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


LIMIT = 65536  # [serve] max_request: the connection hands parse the first LIMIT bytes


def cut(line: bytes) -> bytes:
    assert len(line) > LIMIT
    return line[:LIMIT]


def test_a_request_cut_in_its_evidence_is_counted_with_the_evidence_marked() -> None:
    failed = "gone@dead.example, " * 5000  # 95 KB: a bounce of a big spam run
    req = parse(cut(encode("bounce", key="bob@test.example", mid="<m1@bot>", failed=failed)), cut=True)
    assert (req.op, req.ns, req.key, req.fields["mid"]) == ("bounce", "sender", "bob@test.example", "<m1@bot>")
    kept = req.fields["failed"]
    assert kept.endswith(CUT_END) and failed.startswith(kept.removesuffix(CUT_END))
    assert len(kept) > LIMIT * 3 // 4 - 100, "as much as the limit holds"


def test_fields_after_the_cut_are_left_out_and_required_ones_refuse() -> None:
    mid = "<" + "m" * 70000 + "@bot>"
    req = parse(cut(encode("message", "auth", "bob", n="4", sender="bob@x", mid=mid, ip="192.0.2.1")), cut=True)
    assert set(req.fields) == {"n", "sender", "mid"} and req.fields["mid"].endswith(CUT_END)
    long_sender = "s" * 70000  # a subject is whole or left out, never cut
    req = parse(cut(encode("message", "auth", "bob", n="4", sender=long_sender)), cut=True)
    assert req.fields == {"n": "4"}
    with pytest.raises(BadRequest, match="needs id="):
        parse(cut(encode("frozen", "auth", "k" * 20000, id="1xVbMq-0004rw-1g" + "x" * 40000)), cut=True)
    half_a_name = b"record-invalid auth Ym9i ip=MTI3LjAuMC4x " + b"rcpt" * LIMIT  # cut before its "="
    assert parse(cut(half_a_name), cut=True).fields == {"ip": "127.0.0.1"}


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(encode("check-blocked", "auth", "k" * 50000), id="key"),
        pytest.param(encode("record", "relay", "k" * 50000, kind="invalid", evidence="x"), id="record-key"),
        pytest.param(encode("bounce", key="s" * 50000, failed="x"), id="bounce-sender"),
        pytest.param(b"x" * 70000, id="no-words"),
    ],
)
def test_a_request_cut_before_its_key_ends_is_refused(line: bytes) -> None:
    with pytest.raises(BadRequest, match="before its KEY ended"):
        parse(cut(line), cut=True)


@given(key=any_text.filter(bool), chunk=st.binary(min_size=1, max_size=300), kind=st.sampled_from(["rcpt", "evidence"]))
def test_any_cut_evidence_keeps_its_start(key: str, chunk: bytes, kind: str) -> None:
    evidence = chunk * (LIMIT // len(chunk) + 1)  # any bytes, longer than the limit
    text = evidence.decode("utf-8", "surrogateescape")
    op = "record-invalid" if kind == "rcpt" else "record"
    line = encode(op, "auth", key, kind="" if kind == "rcpt" else "invalid", ip="192.0.2.1", **{kind: text})
    req = parse(cut(line[:-1]), cut=True)
    assert req.key == key and req.fields["ip"] == "192.0.2.1"
    kept = req.fields[kind].removesuffix(CUT_END).encode("utf-8", "surrogateescape")
    assert req.fields[kind].endswith(CUT_END) and evidence.startswith(kept)
