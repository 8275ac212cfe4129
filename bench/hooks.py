"""How much a hook costs on top of starting Python, as Exim runs it.

Runs, interleaved round by round so machine noise hits all alike:
  baseline        python -I -S -c pass
  check-blocked   python -IS bin/eximhook --config C check-blocked auth KEY
  record-invalid  python -IS bin/eximhook --config C record-invalid auth KEY --rcpt ... --ip ...
and prints the median wall time of each and its ratio to the baseline. Goals (issue 2):
check-blocked <= 1.5x, record-invalid <= 2x.

    python bench/hooks.py [--rounds 300] [--python VENV/bin/python3]

The interpreter must be the one eximhook is installed in (default: this one), by a
regular `pip install .`: an editable install makes bin/eximhook fall back to the site
module, which is what Exim's -IS avoids.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--python", default=sys.executable)
    opts = parser.parse_args()
    script = shutil.which("eximhook", path=os.path.dirname(opts.python))
    if script is None:
        sys.exit(f"no eximhook next to {opts.python}: pip install . into that venv first")
    probe = [opts.python, "-I", "-c", "import eximhook, os; print(os.path.dirname(eximhook.__file__))"]
    where = subprocess.run(probe, capture_output=True, text=True, check=True, cwd="/").stdout.strip()
    if "site-packages" not in where:
        sys.exit(f"eximhook is imported from {where}: an editable install; run `pip install .` for the bench")
    tmp = tempfile.mkdtemp(prefix="eximhook-bench-")
    config = os.path.join(tmp, "eximhook.toml")
    with open(config, "w") as f:
        f.write(f'[store]\npath = "{tmp}/store"\nmirror_dir = "{tmp}"\n'
                f'[limits.auth]\nlimit = 1000000\nperiod = "1h"\n[log]\nfile = "{tmp}/log"\n')
    hook = [opts.python, "-IS", script, "--config", config]
    # builds the config cache
    subprocess.run([*hook, "check-blocked", "auth", "warmup"], check=False, stdout=subprocess.DEVNULL)
    cases = {
        "baseline (python -I -S -c pass)": lambda i: [opts.python, "-I", "-S", "-c", "pass"],
        "check-blocked": lambda i: [*hook, "check-blocked", "auth", f"user{i % 50}"],
        "record-invalid": lambda i: [*hook, "record-invalid", "auth", f"user{i % 50}",
                                     "--rcpt", f"nobody{i}@example.com", "--ip", "192.0.2.1"],
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(opts.rounds):
        for name, argv in cases.items():
            times[name].append(timed(argv(i)))
    base = statistics.median(next(iter(times.values())))
    print(f"{opts.rounds} rounds, medians; python {sys.version.split()[0]} at {opts.python}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:34s} {med * 1000:7.2f} ms  {med / base:5.2f}x baseline")
    shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
