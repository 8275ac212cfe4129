"""What the open-relay check costs an honest RCPT inside a real Exim: `hosts = blocked.nets`, a file Exim
opens and scans on every RCPT (acl-rcpt-relaytest.conf), so that a host blocked mid-session is refused at
its very next RCPT.

Four Exim daemons side by side on 127.0.0.1, the shipped RCPT snippets in each:
  none     without the relay-test statement
  10       with it, blocked.nets holding 10 networks (none of them the client)
  1000     1,000 single hosts
  10000    10,000 single hosts (a list this long is what docs/relaytest.md advises against)
Each round, each variant (the order rotates) gets one session from a relay host (127.0.0.2), MAIL, then
--rcpts valid recipients one after another (no pipelining: each RCPT's reply is awaited), then RSET; the
time per RCPT is the median over --rounds rounds, with each variant's ratio to `none` and the time it adds.

    /opt/eximhook/bin/python bench/relaytest_rcpt.py [--rounds 7] [--rcpts 500] [--json FILE]

As root, with eximhook installed non-editable in /opt/eximhook and Exim 4.96.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import benchlib
from benchlib import median, no_panic, spread, table

from tests.support import harness as h

SIZES = {"none": None, "10": 10, "1000": 1000, "10000": 10000}


def nets_file(n: int) -> str:
    """``n`` entries none of which is 127.0.0.2: networks for a short list, hosts for a long one."""
    if n <= 10:
        return "".join(f"198.51.{i}.0/24\n" for i in range(n))
    return "".join(f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}\n" for i in range(n))


def session(exim: h.Exim, rcpts: int) -> float:
    """Seconds per RCPT of one session of ``rcpts`` valid recipients."""
    with exim.connect(h.RELAY_CLIENT, tls=False) as smtp:
        smtp.mail(f"shop@{h.DOMAIN}")
        start = time.perf_counter()
        for _ in range(rcpts):
            code, said = smtp.rcpt(f"alice@{h.DOMAIN}")
            if code != 250:
                raise SystemExit(f"RCPT answered {code} {said!r}")
        took = time.perf_counter() - start
        smtp.rset()
    return took / rcpts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--rcpts", type=int, default=500)
    parser.add_argument("--json", metavar="FILE")
    opts = parser.parse_args()
    where, version = benchlib.start()
    print(f"eximhook {version} from {where}")
    servers: dict[str, h.Exim] = {}
    per_rcpt: dict[str, list[float]] = {name: [] for name in SIZES}
    try:
        for name, size in SIZES.items():
            work = h.make(["alice"]).work
            nets = work / "blocked.nets"
            acl = h.Exim.snippet_acl()
            if size is not None:
                nets.write_text(nets_file(size))
                nets.chmod(0o644)
                acl = f".include EXIMHOOK_SNIPPETS/acl-rcpt-relaytest.conf\n{acl}"
            servers[name] = h.Exim(work, users=["alice"], rcpt_acl=acl, macros={"EXIMHOOK_NETS_FILE": str(nets)},
                                   settings={"limits.relay.recipients.windows": []})
            servers[name].setup().start()
        names = list(SIZES)
        for r in range(opts.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                per_rcpt[name].append(session(servers[name], opts.rcpts))
        no_panic(servers)
    finally:
        for server in servers.values():
            h.cleanup(server)
    base = median(per_rcpt["none"])
    rows = [[name, f"{median(v) * 1000:.3f}", spread(v), f"{base / median(v):.2f}", f"{(median(v) - base) * 1e6:+.0f}"]
            for name, v in per_rcpt.items()]
    print(f"{opts.rounds} rounds x {opts.rcpts} honest RCPTs from a relay host, one at a time")
    print(table(["blocked.nets", "ms/RCPT", "spread", "speed vs none", "added us/RCPT"], rows))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(per_rcpt, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
