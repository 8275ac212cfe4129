"""A count is never lost to the size of its evidence, against a real Exim: a Message-ID
or an X-Failed-Recipients header too big for one daemon request is cut by the snippets
(macros.conf, EXIMHOOK_EVIDENCE_MAX) and marked; the event is counted, blocks at the
limit, and a bounce still finds the message it reports. A request the daemon answers E
is counted by the ${run} hook instead."""

from __future__ import annotations

import base64
import email
import email.policy
from collections.abc import Iterator

import pytest

from eximhook.model.evidence import CUT_END, CUT_START

from ..support import harness as h
from ..support.marks import needs_exim, needs_root

pytestmark = [pytest.mark.e2e, needs_exim, needs_root]

MAX_REQUEST = 65536  # [serve] max_request's default
EVIDENCE_MAX = 1000  # EXIMHOOK_EVIDENCE_MAX's default


@pytest.fixture
def exim(request: pytest.FixtureRequest) -> Iterator[h.Exim]:
    settings, macros = getattr(request, "param", ({}, {}))
    server = h.make(["bob", "alice", "carol"], limit=50, serve=True, record_runs=True, settings=settings,
                    macros=macros)
    try:
        server.setup().start()
        yield server
    finally:
        h.cleanup(server)


def bounces(exim: h.Exim, box: str) -> list[bytes]:
    return [m for m in exim.maildir(box) if b"report-type=delivery-status" in m]


def huge_message_id(tag: str) -> str:
    """49,204 bytes, as in the report: ${base64:$h_message-id:} is 65,608 bytes, more
    than the daemon reads of a request (Exim takes it: header_line_maxsize is 0)."""
    mid = f"<{tag}" + "m" * (49204 - len(tag) - 14) + "@bot.example>"
    assert len(mid) == 49204 and len(base64.b64encode(mid.encode())) == 65608
    return mid


VOLUME = {"limits.auth.recipients.limit": 10, "limits.auth.recipients.mode": "enforce"}


@pytest.mark.parametrize("exim", [(VOLUME, {})], indirect=True)
def test_a_huge_message_id_is_counted_blocks_at_the_limit_and_its_bounce_still_counts(exim: h.Exim) -> None:
    rcpts = [f"alice@{h.DOMAIN}", f"carol@{h.DOMAIN}", f"postmaster@{h.DOMAIN}", f"gone@{h.DEAD}"]
    mids = [huge_message_id(f"run{n}.") for n in range(3)]
    for n in range(2):
        assert exim.send(rcpts, user="bob", subject=f"spam {n}", headers=f"Message-ID: {mids[n]}\r\n") == {}
    assert exim.queue(frozen=True) == [] and exim.show("auth", "bob")["block"] is None, "8 of 10: not yet"
    assert exim.send(rcpts, user="bob", subject="spam 2", headers=f"Message-ID: {mids[2]}\r\n") == {}
    [frozen] = exim.queue(frozen=True)
    assert "Subject: spam 2" in exim.headers(frozen)
    block = exim.show("auth", "bob")["block"]
    assert (block["counter"], block["count"], block["limit"]) == ("recipients", 12, 10), "blocked at 12, as ever"
    # the two messages delivered bounced for gone@: Exim's bounce names the huge id in
    # References; both cut to the same last EVIDENCE_MAX bytes, they still match
    h.wait_for("the two bounces to count against bob",
               lambda: exim.show("auth", "bob")["counters"].get("bounces", {}).get("total") == 2)
    assert exim.hook_runs() == [], "all through the daemon: nothing it had to refuse"
    assert "answered E" not in exim.hook_log()


BOUNCES = {"limits.auth.bounces.limit": 1, "limits.auth.bounces.period": "1h", "limits.auth.bounces.mode": "enforce"}


@pytest.mark.parametrize("exim", [(BOUNCES, {"EXIMHOOK_VERIFY": "recipient"})], indirect=True)
def test_the_bounce_of_a_big_spam_run_is_counted_with_its_failed_recipients_cut(exim: h.Exim) -> None:
    assert exim.send([f"gone@{h.DEAD}"], user="bob", subject="run 1", headers="Message-ID: <run1@bot>\r\n") == {}
    h.wait_for("the first bounce", lambda: bounces(exim, "bob"))
    spam = [f"spam{i:04d}@{h.DEAD}" for i in range(2500)]
    assert exim.send(spam, user="bob", subject="run 2", headers="Message-ID: <run2@bot>\r\n") == {}
    h.wait_for("the second bounce", lambda: len(bounces(exim, "bob")) == 2, timeout=60)
    # the maildir lists its files in no particular order: the report on run 2 names it
    [report] = [r for r in (email.message_from_bytes(b, policy=email.policy.compat32) for b in bounces(exim, "bob"))
                if "<run2@bot>" in str(r["References"])]
    # Exim writes 50 addresses per X-Failed-Recipients line; $h_ joins the 50 lines
    failed = " ".join(" ".join(report.get_all("X-Failed-Recipients")).split())
    assert failed.count("@") == 2500 and len(base64.b64encode(failed.encode())) > MAX_REQUEST, \
        "too big for one request, as in the report"
    block = h.wait_for("the block", lambda: exim.show("auth", "bob")["block"])
    assert (block["counter"], block["count"], block["limit"]) == ("bounces", 2, 1)  # type: ignore[index]
    evidence = exim.show("auth", "bob")["counters"]["bounces"]["evidence"][-1]
    assert evidence.endswith(CUT_END) and failed.startswith(evidence.removesuffix(CUT_END)), "cut, marked as cut"
    assert "spam" in evidence and len(evidence) <= EVIDENCE_MAX + len(CUT_END)
    sender = exim.show("sender", f"bob@{h.DOMAIN}")["counters"]["bounces"]
    assert sender["total"] == 2, "and against the address, as every bounce"
    assert exim.hook_runs() == []


@pytest.mark.parametrize("exim", [({"serve.max_request": 16}, {})], indirect=True)
def test_a_request_the_daemon_answers_E_is_counted_by_the_hook(exim: h.Exim) -> None:
    """A daemon that refuses every request (16 bytes hold no KEY): E is not "not
    blocked", the ${run} hook counts the event."""
    assert exim.send([*h.invalid(2), f"alice@{h.DOMAIN}"], user="bob", subject="refused") == {}
    runs = exim.hook_runs()
    assert sum(r.startswith("--config") and " record-invalid auth bob " in r for r in runs) == 2, runs
    assert sum(" record-message auth bob " in r for r in runs) == 1, runs
    counters = exim.show("auth", "bob")["counters"]
    assert counters["invalid"]["total"] == 2 and counters["recipients"]["total"] == 3
    assert "before its KEY ended; answered E" in exim.hook_log()


def test_the_snippets_mark_what_the_daemon_marks() -> None:
    """One marker for a cut, whoever cut: macros.conf writes evidence's."""
    text = (h.SNIPPETS / "macros.conf").read_text()
    # every value cut at its end (the recipients, the failed recipients, a refusal, ...) is marked alike
    assert text.count("{\\$1") == text.count(f"{{\\$1{CUT_END}}}") >= 3 and text.count(f"{{{CUT_START}\\$1}}") == 2
