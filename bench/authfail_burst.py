"""A password-guessing botnet spread over one IPv6 /48: how many block records, and how
many mails to the abuse desk within the first minute (issue 21, section 2)?

Starts `eximhook serve` on a config of its own in a temp dir and sends, from 8 threads,
--guesses failed AUTHs (`record authfail ip`, as acl-auth.conf does) from each of --nets
/64s of 2001:db8:1::/48, each /64 over its own limit (--ip-limit). The abuse desk is a
sendmail stand-in that notes the time of each mail. Then it waits until --watch seconds
after the start and prints the answers, the blocks per namespace, the mails within the
first minute and by the end, and the outbox.

    /opt/eximhook/bin/python bench/authfail_burst.py [--nets 10000] [--guesses 3] [--ip-limit 2]
        [--digest-after N] [--watch 70]

As root. --digest-after sets [notify] digest_after (leave it out for a version without
digests); [limits.net.authfail] and [notify] keep their defaults otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from benchlib import readsocket


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", type=int, default=10_000, help="/64s of the /48")
    ap.add_argument("--guesses", type=int, default=3, help="failed AUTHs from each /64")
    ap.add_argument("--ip-limit", type=int, default=2, help="[limits.ip.authfail] limit")
    ap.add_argument("--digest-after", type=int, default=None, help="[notify] digest_after")
    ap.add_argument("--watch", type=float, default=70.0, help="seconds after the start to count the mails")
    opts = ap.parse_args()
    from eximhook.serve.protocol import encode

    work = tempfile.mkdtemp(prefix="eximhook-burst-")
    mails, sendmail, sock = f"{work}/mails", f"{work}/sendmail.sh", f"{work}/serve.sock"
    with open(sendmail, "w") as f:
        f.write(f'#!/bin/sh\ncat > /dev/null\ndate +%s.%N >> "{mails}"\n')
    os.chmod(sendmail, 0o755)
    os.mkdir(f"{work}/mirror")
    conf = f"{work}/eximhook.toml"
    with open(conf, "w") as f:
        f.write(f'[store]\npath = "{work}/store"\nmirror_dir = "{work}/mirror"\n'
                f'[notify]\nto = "abuse@example.net"\nsendmail = ["{sendmail}"]\n'
                + (f"digest_after = {opts.digest_after}\n" if opts.digest_after is not None else "")
                + f'[serve]\nsocket = "{sock}"\n[log]\nfile = "{work}/eximhook.log"\n[exim]\nuser = "root"\n'
                f'[limits.ip.authfail]\nlimit = {opts.ip_limit}\nperiod = "1h"\n')
    eximhook = [sys.executable, "-IS", os.path.join(os.path.dirname(sys.executable), "eximhook"), "--config", conf]
    daemon = subprocess.Popen([*eximhook, "serve", "--allow-root"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL)
    try:
        while True:
            try:
                if readsocket(sock, b"ping\n", timeout=60) == b"pong":
                    break
            except OSError:
                time.sleep(0.05)
        start = time.time()

        def guesses(i: int) -> list[bytes]:
            key, ip = f"2001.0db8.0001.{i:04x}.0000.0000.0000.0000/64", f"2001:db8:1:{i:x}::1"
            line = encode("record", "ip", key, kind="authfail", evidence=f"user{i}", ip=ip)
            return [readsocket(sock, line, timeout=60) for _ in range(opts.guesses)]

        with ThreadPoolExecutor(8) as pool:
            answers = [a for batch in pool.map(guesses, range(opts.nets)) for a in batch]
        counted = time.time() - start
        time.sleep(max(0.0, opts.watch - (time.time() - start)))
    finally:
        daemon.terminate()
        daemon.wait()
    try:
        with open(mails) as f:
            sent = [float(t) for t in f.read().split()]
    except FileNotFoundError:
        sent = []
    blocks: dict[str, int] = {}
    for record in json.loads(subprocess.run([*eximhook, "list", "--json"], capture_output=True, check=True,
                                            text=True).stdout):
        blocks[record["ns"]] = blocks.get(record["ns"], 0) + 1
    stats = json.loads(subprocess.run([*eximhook, "stats", "--json"], capture_output=True, check=True,
                                      text=True).stdout)
    print(json.dumps({"requests": len(answers), "answered_1": answers.count(b"1"), "seconds_counting":
                      round(counted, 1), "blocks": blocks, "mails_within_60s": sum(t - start <= 60 for t in sent),
                      "mails_by_end": len(sent), "notifications": stats["notifications"]}, indent=1))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
