"""How much disk a password guesser's failed AUTHs cost: the store and the counters grow by.

The proof of issue 21: `record authfail ip` requests through a live `eximhook serve`, --nets different IPv6
/64s with --tries guesses each (below the limit, 30 an hour: every answer 0), each with a user name of
--name-bytes bytes as its evidence. Measured: the size of the store's and the counters' data.mdb before the
first request and after the last (LMDB files grow as pages are used and never shrink), and what that makes
for one IPv6 /48 (65,536 /64s) at the same --tries. Each /64 is in a /48 of its own, so that no wider
network's limit trips: where the /48 is counted too, its counter is paid for once per /64 here (an upper
bound). Then one /64 guesses on to the limit: the size of its block record.

    /opt/eximhook/bin/python bench/authfail_growth.py [--nets 100] [--tries 10] [--name-bytes 12000] [--json FILE]

The daemon runs from the eximhook this python imports (PYTHONPATH=/tmp/before measures another checkout), in
a temporary directory, as the user running this (--allow-root for root). No Exim needed.
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
from pathlib import Path

from benchlib import readsocket as request

PER_48 = 1 << 16  # /64s in one /48


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nets", type=int, default=100)
    parser.add_argument("--tries", type=int, default=10)
    parser.add_argument("--name-bytes", type=int, default=12000)
    parser.add_argument("--json", metavar="FILE")
    opts = parser.parse_args()

    import eximhook
    from eximhook.serve.protocol import encode

    where = os.path.dirname(os.path.abspath(eximhook.__file__))
    tmp = Path(tempfile.mkdtemp(prefix="eximhook-growth-"))
    sock = str(tmp / "eximhook.sock")
    config = tmp / "eximhook.toml"
    config.write_text(f'[store]\npath = "{tmp}/store"\nmirror_dir = "{tmp}/mirror"\n'
                      f'[serve]\nsocket = "{sock}"\n[log]\nfile = "{tmp}/eximhook.log"\n'
                      '[notify]\nsendmail = ["/bin/true"]\n')
    (tmp / "mirror").mkdir()
    argv = [sys.executable, "-m", "eximhook", "--config", str(config), "serve"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    env = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
    daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env, cwd="/")
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if request(sock, b"ping\n") == b"pong":
                    break
            except OSError:
                pass
            if daemon.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"eximhook serve did not start (exit {daemon.poll()}); see {tmp}/eximhook.log")
            time.sleep(0.05)
        files = {"store": tmp / "store" / "data.mdb", "counters": tmp / "store" / "counters" / "data.mdb"}
        before = {name: size(path) for name, path in files.items()}
        answers: dict[bytes, int] = {}
        start = time.monotonic()
        for net in range(opts.nets):
            for i in range(opts.tries):
                name = f"guess{i}-".ljust(opts.name_bytes, "x")
                answer = request(sock, encode("record", "ip", f"2001:db8:{net:x}::{i + 1}", kind="authfail",
                                              evidence=name))
                answers[answer] = answers.get(answer, 0) + 1
        took = time.monotonic() - start
        grown = sum(size(path) for path in files.values()) - sum(before.values())
        last = "2001:db8:0::1"
        for i in range(opts.tries, 40):
            if request(sock, encode("record", "ip", last, kind="authfail", evidence=f"guess{i}-".ljust(
                    opts.name_bytes, "x"))) == b"1":
                break
    finally:
        daemon.terminate()
        daemon.wait()
    after = {name: size(path) for name, path in files.items()}
    from eximhook.storage.store import Store

    with Store(str(tmp / "store"), readonly=True) as store:
        records = [len(json.dumps(r)) for r in store.blocks("ip")]
    figures = {"eximhook": where, "nets": opts.nets, "tries": opts.tries, "name_bytes": opts.name_bytes,
               "answers": {k.decode(): v for k, v in answers.items()}, "seconds": round(took, 2),
               "before": before, "after": after, "grown_bytes": grown,
               "per_48_bytes": grown * PER_48 // max(opts.nets, 1), "block_record_bytes": records}
    print(f"eximhook from {where}")
    print(f"{opts.nets * opts.tries} requests ({opts.nets} /64s x {opts.tries}, {opts.name_bytes}-byte user names) "
          f"in {took:.1f}s, answers {figures['answers']}")
    for name in files:
        print(f"  {name:9} data.mdb {before[name]:>12,} -> {after[name]:>12,} bytes")
    print(f"  grown by {grown:,} bytes ({grown / 1e6:.2f} MB); one /48 at this rate: "
          f"{figures['per_48_bytes'] / 1e9:.2f} GB (before any budget)")
    print(f"  the block record of a /64 that guessed on to its limit: {', '.join(map(str, records))} bytes")
    if opts.json:
        Path(opts.json).write_text(json.dumps(figures, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
