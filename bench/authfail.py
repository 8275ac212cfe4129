"""What counting failed SMTP AUTH costs inside a real Exim (acl-auth.conf, through `eximhook serve`).

Two Exim daemons side by side on 127.0.0.1, the same config but for the password-guessing guard:
  plain   no acl_smtp_auth/_quit/_notquit: Exim's AUTH alone
  guard   acl-auth.conf: a cdb lookup per AUTH, and one ${readsocket} to `eximhook serve` per failure
Each round, each variant (the order alternates) gets --sessions sessions from one client address of its own
(127.0.2.N: no address nears the limit, which is raised far above the load), each STARTTLS then --tries wrong
passwords (PLAIN) and QUIT. Measured: the time from the first AUTH to the last reply, per failed AUTH, and the
whole session (TLS handshake included), median over rounds; the guard's ratio to plain. At the end the guard's
store must hold every failure: sessions x tries per address (each attempt counts once).

    /opt/eximhook/bin/python bench/authfail.py [--rounds 7] [--sessions 20] [--tries 5] [--json FILE]

As root, with eximhook installed non-editable in /opt/eximhook and Exim 4.96.
"""

from __future__ import annotations

import argparse
import json
import smtplib
import sys
import time

import benchlib
from benchlib import median, no_panic, spread, table

from tests.support import harness as h


def session(exim: h.Exim, source: str, tries: int) -> tuple[float, float]:
    """One session: (seconds for the AUTHs, seconds in all)."""
    start = time.perf_counter()
    smtp = exim.connect(source)
    first = time.perf_counter()
    for i in range(tries):
        try:
            smtp.login("bob", f"wrong-{i}")
        except smtplib.SMTPAuthenticationError as exc:
            if exc.smtp_code != 535:
                raise SystemExit(f"{source}: AUTH answered {exc.smtp_code}, not 535: {exc}") from None
        else:
            raise SystemExit(f"{source}: a wrong password was accepted")
    auth = time.perf_counter() - first
    smtp.quit()
    return auth, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--json", metavar="FILE")
    opts = parser.parse_args()
    where, version = benchlib.start()
    print(f"eximhook {version} from {where}")
    settings = {"limits.ip.authfail.limit": 1_000_000, "limits.net.authfail.limit": 1_000_000}  # /24 is one net
    servers = {name: h.make(["bob"], serve=guard, auth_guard=guard, settings=settings)
               for name, guard in (("plain", False), ("guard", True))}
    per_auth: dict[str, list[float]] = {name: [] for name in servers}
    per_session: dict[str, list[float]] = {name: [] for name in servers}
    sources: dict[str, list[str]] = {name: [] for name in servers}
    try:
        for server in servers.values():
            server.setup().start()
        for r in range(opts.rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for name in order:
                source = f"127.0.2.{len(sources['plain']) + len(sources['guard']) + 1}"
                sources[name].append(source)
                timings = [session(servers[name], source, opts.tries) for _ in range(opts.sessions)]
                per_auth[name].append(sum(a for a, _ in timings) / (opts.sessions * opts.tries))
                per_session[name].append(sum(s for _, s in timings) / opts.sessions)
        guard = servers["guard"]
        expected = opts.sessions * opts.tries

        def counted() -> list[int]:
            out = []
            for source in sources["guard"]:
                shown = json.loads(guard.eximhook("show", "--json", "ip", source).stdout)
                out.append(int(shown["counters"]["authfail"]["total"]))
            return out
        h.wait_for("every failure counted", lambda: counted() == [expected] * len(sources["guard"]), 30)
        no_panic(servers)
    finally:
        for server in servers.values():
            h.cleanup(server)
    rows = []
    for name in servers:
        a, s = median(per_auth[name]), median(per_session[name])
        rows.append([name, f"{a * 1000:.3f}", spread(per_auth[name]), f"{s * 1000:.2f}",
                     f"{a / median(per_auth['plain']):.2f}", f"{(a - median(per_auth['plain'])) * 1000:+.3f}"])
    print(f"{opts.rounds} rounds x {opts.sessions} sessions x {opts.tries} failed AUTH (PLAIN after STARTTLS); "
          f"every failure counted ({expected} per address)")
    print(table(["variant", "ms/failed AUTH", "spread", "ms/session", "vs plain", "added ms"], rows))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"per_auth": per_auth, "per_session": per_session}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
