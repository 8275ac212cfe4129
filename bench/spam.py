"""What scanning outgoing mail with rspamd costs per message inside a real Exim (EXIMHOOK_SPAM_SCAN).

Two Exim daemons side by side on 127.0.0.1, both with the shipped snippets and `eximhook serve` (each message
counted for volume, one ${readsocket}), queue_only (no deliveries racing the measurement):
  off   no scanning
  scan  EXIMHOOK_SPAM_SCAN and spamd_address: each message scanned by one rspamd (Exim's spam condition,
        variant=rspamd), and a spam verdict counted against the sender (a second ${readsocket})
rspamd is the test suite's (tests/support/rspamd_server.py), Debian's package: by default with a minimal
config and no Lua rules, the floor of what a scan costs (Exim spooling the message to a file for it, the
connection, rspamd's MIME parsing and verdict); with --rules, the package's own config and every module it
enables, with a resolver that answers nothing, so no DNS, RBL, fuzzy or map lookup leaves the machine:
the rules' CPU without their lookups' latency, which a production server adds on top.
Each round, per kind of mail and variant (the order of the variants alternates), authenticated sessions
(STARTTLS, AUTH PLAIN) send --messages messages of one recipient: honest ones (~2 KB of text; rspamd: "no
action", nothing counted), then as many holding GTUBE (rspamd: "reject", each counted; the limit is raised
far above the load, shadow mode). Measured:
  ms/DATA     one session, paced: DATA sent to the final reply (the DATA ACL, the scan, the spool write),
              median per round. Paced, because Exim waits for its message-id clock to tick (5 ms) before
              each message of a connection: unpaced, that wait swallows up to 5 ms of the work measured
  messages/s  --sessions sessions at once, unpaced: the messages they sent in all per second (what the
              scan costs in CPU, Exim's and rspamd's, when the machine is busy)
median over rounds, with the spread (max-min)/median, scan's difference from off and its ratio to it. At the
end the scanning Exim's store must hold every spam message sent to it, and off's none.

    /opt/eximhook/bin/python bench/spam.py [--rounds 5] [--messages 100] [--sessions 4] [--rules] [--tmpfs]
                                           [--json FILE]

As root, with eximhook installed non-editable in /opt/eximhook, Exim 4.96 and rspamd (Debian's package).
--tmpfs puts every spool, store and socket on a tmpfs mounted for the run: no fsync costs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import benchlib
from benchlib import median, no_panic, spread, table
from smtpload import Session

from tests.support import harness as h
from tests.support.rspamd_server import GTUBE, RspamdServer

RCPT = f"alice@{h.DOMAIN}"
TICK = 0.006  # Exim's message-id clock: 5 ms
LINE = "Meeting notes for Thursday: the budget review moves to room 4, bring the quarterly figures.\r\n"
HONEST = LINE * 22  # ~2 KB
KINDS = {"honest": HONEST, "spam": GTUBE + "\r\n" + HONEST}
# No deliveries; and no reverse DNS of the client: the spam condition sends rspamd the client's host name,
# which makes Exim look it up where host_lookup did not (here a lookup that times out, again per message)
MAIN = "queue_only = true\nhost_lookup_order ="
# The RCPT snippets, then Debian's accept for authenticated senders (sender_retain: MAIL FROM stays the
# envelope sender). acl-rcpt-accept.conf's submission/domain= makes it the bare id ("bob"), which rspamd's
# rules read as a broken envelope (BROKEN_HEADERS: every message "add header"; docs/signals.md)
RCPT_ACL = """.include EXIMHOOK_SNIPPETS/acl-rcpt-auth.conf
.include EXIMHOOK_SNIPPETS/acl-rcpt-relay.conf
  accept  authenticated = *
          control = submission/sender_retain"""


def message(n: int, body: str) -> bytes:
    return (f"From: <bob@{h.DOMAIN}>\r\nTo: <{RCPT}>\r\nSubject: report {n}\r\nMessage-ID: <bench.{n}@{h.DOMAIN}>"
            f"\r\n\r\n{body}").encode()


def session(exim: h.Exim, body: str, messages: int, pace: bool) -> tuple[list[float], float]:
    """One session of ``messages`` messages: (each one's DATA seconds, messages per second). ``pace``: wait
    out Exim's message-id clock tick (5 ms) after each message, as Exim would before the next one's DATA, so
    the DATA time is the message's own (unpaced, a session's DATA times hide up to 5 ms of work)."""
    s = Session(exim.port, user="bob")
    try:
        data: list[float] = []
        start = time.perf_counter()
        for n in range(messages):
            if s.envelope(f"bob@{h.DOMAIN}", [RCPT]) != [b"250"]:
                raise SystemExit("RCPT refused")
            took, code = s.timed_data(message(n, body))
            if code != b"250":
                raise SystemExit(f"DATA answered {code!r}")
            data.append(took)
            if pace:
                time.sleep(TICK)
        return data, messages / (time.perf_counter() - start)
    finally:
        s.close()


def burst(exim: h.Exim, body: str, messages: int, sessions: int) -> float:
    """``sessions`` sessions at once, ``messages`` each, unpaced: messages per second in all."""
    start = time.perf_counter()
    h.at_once(sessions, lambda _: session(exim, body, messages, pace=False))
    return sessions * messages / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=100, help="per session")
    parser.add_argument("--sessions", type=int, default=4, help="at once, in the burst")
    parser.add_argument("--rules", action="store_true", help="rspamd with the package's config and rule set")
    parser.add_argument("--tmpfs", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    opts = parser.parse_args()
    where, version = benchlib.start()
    print(f"eximhook {version} from {where}")
    rspamd = RspamdServer(rules=opts.rules)
    with benchlib.tmpfs(opts.tmpfs) as base:
        settings = {"limits.auth.spam.limit": 1_000_000, "limits.auth.recipients.limit": 1_000_000}
        servers = {
            "off": h.make(["bob"], base, serve=True, settings=settings, main=MAIN, rcpt_acl=RCPT_ACL),
            "scan": h.make(["bob"], base, serve=True, settings=settings, main=f"{MAIN}\nspamd_address = "
                           f"{rspamd.address} tmo=10s", rcpt_acl=RCPT_ACL, macros={"EXIMHOOK_SPAM_SCAN": "yes"}),
        }
        per_data: dict[str, dict[str, list[float]]] = {k: {n: [] for n in servers} for k in KINDS}
        rates: dict[str, dict[str, list[float]]] = {k: {n: [] for n in servers} for k in KINDS}
        try:
            rspamd.start(timeout=300)  # --rules: the rule set's regexps and 9,600 public suffixes compile first
            for server in servers.values():
                server.setup().start()
            for name in servers:  # a warm-up session each: rspamd's first scan loads what it needs
                session(servers[name], HONEST, 5, pace=False)
            for r in range(opts.rounds):
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                for kind, body in KINDS.items():
                    for name in order:
                        per_data[kind][name].append(median(session(servers[name], body, opts.messages, True)[0]))
                        rates[kind][name].append(burst(servers[name], body, opts.messages, opts.sessions))
            counted = {name: int(server.show("auth", "bob")["counters"]["spam"]["total"])
                       for name, server in servers.items()}
            expected = {"off": 0, "scan": opts.rounds * opts.messages * (1 + opts.sessions)}
            if counted != expected:
                raise SystemExit(f"spam counted {counted}, expected {expected}")
            no_panic(servers)
        finally:
            for server in servers.values():
                h.cleanup(server)
            rspamd.close()
    print(f"rspamd {'with the package config and rules' if opts.rules else 'with a minimal config (core only)'}")
    print(f"{opts.rounds} rounds; each: per kind and variant, one paced session of {opts.messages} messages "
          f"(ms/DATA), then {opts.sessions} sessions of {opts.messages} at once (messages/s); every spam message "
          f"counted ({expected['scan']}), none without scanning")
    rows = []
    for kind in KINDS:
        base_data, base_rate = median(per_data[kind]["off"]), median(rates[kind]["off"])
        for name in servers:
            d, m = median(per_data[kind][name]), median(rates[kind][name])
            rows.append([f"{kind} {name}", f"{d * 1000:.2f}", spread(per_data[kind][name]),
                         f"{(d - base_data) * 1000:+.2f}", f"{m:.0f}", spread(rates[kind][name]),
                         f"{m / base_rate:.2f}"])
    print(table(["mail, variant", "ms/DATA", "spread", "added ms", "messages/s", "spread", "vs off"], rows))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"data_seconds": per_data, "messages_per_second": rates}, f, indent=2)

if __name__ == "__main__":
    sys.exit(main())
