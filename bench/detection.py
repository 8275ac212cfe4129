"""What eximhook's signals catch: a simulated population against a real Exim.

A real Exim on 127.0.0.1 with the shipped snippets (tests/support/harness.py) and
`eximhook serve`, every counter enforced at the production limits of model/policy.py,
scaled to a compressed clock; loopback MTAs play the internet (bench/population/
internet.py: unknown users refused at RCPT, spam refused after DATA, some mail
deferred). Honest senders (population/honest.py) and bots (population/bots.py) send
and guess on a schedule; at the end Exim's main log says what left the server and
eximhook's store who was blocked, when, and by which counter. The table is Markdown.

    /opt/eximhook/bin/python bench/detection.py [--signals before|after] [--side-by-side] [--quick]
        [--hour SECONDS] [--hours N] [--divide N] [--honest-divide N] [--weak-rank N] [--tmpfs]
        [--json FILE] [--keep]

--signals before: today's counters (invalid, bounces, recipients, authfail per address
and network); after: every counter the installed eximhook knows (rcpts, networks,
failures, failrate, spam, authfail per account, score, ...: the report says which
counted nothing) and per-customer totals (population/scale.py: CUSTOMER_SIZE). A
production hour lasts --hour seconds (default 30; --quick 12), the run --hours
production hours (default 3; --quick 2). The bots' mail limits and volumes are divided
by --divide (default 10; --quick 20; population/scale.py says why and what is not); the
honest senders' by --honest-divide (default 1: production's volumes, against
production's limits, given them as per-subject limits; --quick: --divide). --weak-rank:
where the spray's list holds the weak account's password (population/bots.py). As
root, with eximhook installed non-editable in /opt/eximhook, Exim 4.96, aiosmtpd (the
venv has it) and, for the spam counter, Debian's rspamd (optional).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import benchlib
from population import bots, honest, internet, outcome, report
from population.actors import SENDER_ROUTER, Actor, Plan
from population.scale import BEFORE, Scale, adds, production, settings
from population.scale import signals as signals_of
from population.traffic import Player, Schedule

from eximhook.model.subjects import lsearch_line
from tests.support import harness as h
from tests.support.ports import free_port
from tests.support.rspamd_server import RSPAMD, RspamdServer
from tests.support.rspamd_server import USER as RSPAMD_USER
from tests.support.waiting import wait_for

# No reverse DNS: the spam condition sends rspamd the client's host name, and expanding
# $sender_host_name looks it up (host_lookup = none notwithstanding) through the system's
# resolver, off loopback; bursts of such lookups time out there (5 s each), and stall
# every DATA. An empty lookup order fails each lookup at once ("no host name found").
NO_NAME_LOOKUP = "host_lookup_order =\n"
# seconds the schedule may fall behind before the report warns: a quiet 2-core machine
# stays under a second at the default size
STALL = 1.0


@dataclass
class Run:
    signals: str
    results: list[outcome.Result]
    seconds: float  # the schedule's length
    took: float  # how long playing it took
    late: tuple[float, float]  # how late steps started, 95th percentile and the latest (the machine falling behind)
    steps: int
    counted: dict[str, int]  # per counter in force, how many subjects it counted anything for
    scanned: bool  # rspamd scanned the mail


def population(weak_rank: int) -> list[Actor]:
    return honest.population() + bots.population(weak_rank)


def set_passwords(exim: h.Exim, accounts: dict[str, str]) -> None:
    """The harness gives every user its one password: the password bots attack
    accounts with passwords of their own, so the authenticator's file is rewritten."""
    (exim.work / "passwd").write_bytes(b"".join((lsearch_line(user) or b"").rstrip(b"\n") + f": {pw}\n".encode()
                                                for user, pw in accounts.items()))


def locked_inodes() -> set[int]:
    """The inodes of files that hold a POSIX lock now (/proc/locks): Exim locks a
    message's -D file while a process delivers it."""
    inodes = set()
    with open("/proc/locks") as f:
        for line in f:
            for token in line.split():
                if token.count(":") == 2 and token.rpartition(":")[2].isdigit():
                    inodes.add(int(token.rpartition(":")[2]))
                    break
    return inodes


def settle(exim: h.Exim, timeout: float = 300) -> None:
    """Wait until every message Exim took is delivered, failed, frozen, or deferred by
    its provider with no process still delivering it: the log then holds the run's
    every delivery."""

    def done() -> bool:
        pending = exim.queue(frozen=False)
        if not pending:
            return True
        deferred, locked = outcome.deferred_ids(exim.log()), locked_inodes()
        for mid in pending:
            if mid not in deferred:
                return False
            try:
                if os.stat(exim.spool / "input" / f"{mid}-D").st_ino in locked:
                    return False
            except FileNotFoundError:  # delivered meanwhile
                pass
        return True

    wait_for("every message delivered, failed, frozen or deferred", done, timeout)


def teardown(exim: h.Exim, keep: bool) -> None:
    """Exim and the daemon stopped by their pids; the deliveries they forked end by
    themselves (waited for, by pid), and are killed only when they do not. The
    directory goes unless ``keep``."""
    exim.stop()
    marker = f"-C\0{exim.conf}\0".encode()

    def ours() -> list[int]:
        pids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(int(pid))
            except OSError:
                pass
        return pids

    try:
        wait_for("Exim's deliveries to end", lambda: not ours(), 30)
    except AssertionError:
        for pid in ours():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if keep:
        print(f"kept {exim.work} (Exim's logs in log/, eximhook's store in spool/)", file=sys.stderr)
    else:
        shutil.rmtree(exim.work, ignore_errors=True)


def rspamd() -> RspamdServer | None:
    """rspamd for the spam counter, where Debian's package is installed (its binary and
    its user): its own process on loopback, as the tests start it."""
    try:
        pwd.getpwnam(RSPAMD_USER)
    except KeyError:
        return None
    return RspamdServer() if shutil.which(RSPAMD) else None


def run(signals: str, scale: Scale, honest_scale: Scale, hours: float, workers: int, base: str | None, seed: int,
        keep: bool, scan: bool, weak_rank: int) -> Run:
    """One run of the population against a new Exim: ``signals`` "after" also reports
    each remote recipient's outcome (failures, failrate) and, with ``scan``, has rspamd
    scan the mail (spam). The honest senders play at ``honest_scale``, with limits of
    their own to match, and the limits an admin tuned for them."""
    after = signals == "after"
    on = signals_of(signals)
    plans = {False: Plan(scale, hours, on, seed), True: Plan(honest_scale, hours, on, seed)}
    actors = population(weak_rank)
    tuned = tuple(t for a in actors for t in a.tuned())
    honest_subjects = tuple(s for a in actors if a.honest for s in a.subjects())
    accounts = {user: pw for a in actors for user, pw in a.accounts().items()}
    port = free_port()
    scanner = rspamd() if after and scan else None
    main = NO_NAME_LOOKUP + (f"spamd_address = {scanner.address} tmo=10s\n" if scanner else "")
    spam = {"macros": {"EXIMHOOK_SPAM_SCAN": "yes"}} if scanner else {}
    exim = h.make(list(accounts), base, serve=True, settings=settings(scale, on, honest_scale, honest_subjects, tuned),
                  relay_hosts=tuple(host for a in actors for host in a.relay_hosts()), main=main,
                  routers=SENDER_ROUTER + internet.router(), transports=internet.transport(port, after), **spam)
    net = internet.Internet(port, exim.work / "internet.log")
    try:
        if scanner:
            scanner.start()
        net.start()
        exim.setup()
        set_passwords(exim, accounts)
        exim.start()
        player = Player(exim.port, 0.0)
        schedule = Schedule(player, workers)
        first: dict[str, float] = {}
        for actor in actors:
            for at, step in actor.steps(plans[actor.honest]):
                schedule.add(at, actor.name, step, actor.tally)
                first[actor.name] = min(at, first.get(actor.name, at))
        steps = len(schedule)
        player.start = time.time()
        length = plans[False].length
        print(f"[{signals}] {steps} sessions over {length:.0f} s ({hours:g} production hours)", file=sys.stderr,
              flush=True)
        cpu = time.process_time()
        schedule.run()
        took = time.time() - player.start
        print(f"[{signals}] played in {took:.0f} s; the clients' CPU: {time.process_time() - cpu:.0f} s",
              file=sys.stderr)
        settle(exim)
        mails = outcome.mail(exim.log())
        held = outcome.held(exim.eximhook, tuple(sorted({c for _, c in on if adds(c) != "score"})))  # top: no score
        starts = {name: player.start + at for name, at in first.items()}
        if exim.log("panic"):
            print(f"[{signals}] Exim's paniclog: {exim.log('panic')[-2000:]}", file=sys.stderr)
        return Run(signals, outcome.results(actors, mails, held, starts), length, took,
                   (benchlib.percentile(schedule.lateness, 95), max(schedule.lateness, default=0.0)), steps,
                   held.counted, scanner is not None)
    finally:
        teardown(exim, keep)
        net.stop()
        if scanner:
            scanner.close()


def describe(runs: list[Run], scale: Scale, honest_scale: Scale, hours: float) -> str:
    from eximhook.periods import format_period

    honest = "the honest senders' too" if honest_scale == scale else \
        f"the honest senders' by {honest_scale.divide}, with limits of their own to match ([overrides])"
    lines = [f"A production hour lasts {scale.hour:g} s, {hours:g} production hours. The bots' mail limits and "
             f"volumes divided by {scale.divide}; {honest}. Limits (production -> the bots' in the run), all "
             "enforced:", ""]
    on = {pair for r in runs for pair in signals_of(r.signals)}
    for (ns, counter), windows in production().items():
        if (ns, counter) in on:
            limit, period = windows[0]
            kind = adds(counter)
            new = "" if (ns, counter) in BEFORE else " (after)"
            if kind == "score":
                lines.append(f"- {ns} {counter}{new}: over {limit} % of the enforced counters' limits, added up")
                continue
            unit = " %" if kind == "ratio" else ""
            lines.append(f"- {ns} {counter}{new}: {limit}{unit}/{format_period(period)} -> "
                         f"{scale.count(counter, limit)}{unit}/{scale.seconds(period):g}s")
    for ns, key, counter, windows in (t for res in runs[0].results for t in res.actor.tuned()):
        if (ns, counter) in on:
            limit, period = windows[0]
            lines.append(f"- tuned by the admin, [overrides.{ns}.\"{key}\".{counter}]: {limit}/{format_period(period)} "
                         f"-> {honest_scale.count(counter, limit)}/{honest_scale.seconds(period):g}s")
    lines.append("")
    for r in runs:
        idle = [c for c, n in r.counted.items() if not n]
        p95, latest = r.late
        lines.append(f"- `{r.signals}`: {r.steps} sessions scheduled over {r.seconds:.0f} s, played in {r.took:.0f} s; "
                     f"95 % started within {p95:.1f} s of their time, the latest {latest:.1f} s late "
                     f"({report.duration(scale.production(latest))} of production time)"
                     + (f"; counted nothing: {', '.join(idle)}" if idle else ""))
        if latest > STALL:
            lines.append("  - the machine fell behind: mail due during the stall arrived bunched, so a window may have "
                         "held more than a sender's pace puts in it; a sender paced near a limit can be blocked by "
                         "that alone (see the blocks' times; run it again on a quieter machine)")
        if r.signals == "after" and not r.scanned:
            lines.append("  - spam: rspamd did not scan (not installed, or --no-rspamd): the counter saw nothing")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--signals", choices=("before", "after"), default="before")
    parser.add_argument("--side-by-side", action="store_true", help="run before, then after, one table")
    parser.add_argument("--quick", action="store_true", help="a smoke run under a minute (coarser figures)")
    parser.add_argument("--hour", type=float, help="seconds a production hour lasts (default 30; --quick 12)")
    parser.add_argument("--divide", type=int, help="the bots' mail limits and volumes divided by this "
                        "(default 10; --quick 20)")
    parser.add_argument("--honest-divide", type=int, help="the honest senders' (default 1: production's; "
                        "--quick: --divide)")
    parser.add_argument("--hours", type=float, help="production hours the run lasts (default 3; --quick 2)")
    parser.add_argument("--workers", type=int, default=24, help="SMTP sessions at once at most")
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument("--tmpfs", action="store_true", help="Exim's spool and eximhook's store on a tmpfs")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep each run's directory (logs, store) for a look")
    parser.add_argument("--no-rspamd", action="store_true", help="after: no spam scanning, even with rspamd installed")
    parser.add_argument("--weak-rank", type=int, default=bots.WEAK_RANK,
                        help=f"the rank of the weak password in the spray's list of {len(bots.COMMON)} "
                        f"(default {bots.WEAK_RANK})")
    opts = parser.parse_args()
    hour = opts.hour or (12.0 if opts.quick else 30.0)
    divide = opts.divide or (20 if opts.quick else 10)
    hours = opts.hours or (2.0 if opts.quick else 3.0)
    scale = Scale(hour, divide)
    honest_scale = Scale(hour, opts.honest_divide or (divide if opts.quick else 1))
    where, version = benchlib.start()
    print(f"eximhook {version} from {where}", file=sys.stderr)
    signals = ["before", "after"] if opts.side_by_side else [opts.signals]
    began = time.time()
    with benchlib.tmpfs(opts.tmpfs) as base:
        runs = [run(s, scale, honest_scale, hours, opts.workers, base, opts.seed, opts.keep and not opts.tmpfs,
                    not opts.no_rspamd, opts.weak_rank) for s in signals]
    print(report.table([f"`{r.signals}`" for r in runs], [r.results for r in runs], scale))
    print()
    print(describe(runs, scale, honest_scale, hours))
    print(f"\n(the whole benchmark took {time.time() - began:.0f} s)")
    if benchlib.fingerprint(where) != version:
        print("warning: eximhook was reinstalled during the run; the figures may mix two versions", file=sys.stderr)
    for r in runs:
        for res in r.results:
            if res.errors:
                print(f"[{r.signals}] {res.actor.name}: {res.actor.tally.counts['session_errors']} sessions failed, "
                      f"e.g. {res.errors[0]}", file=sys.stderr)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"scale": {"hour": hour, "divide": divide, "honest_divide": honest_scale.divide, "hours": hours},
                       "runs": [{"signals": r.signals, "took": r.took, "late": list(r.late), "actors": [
                           {"name": res.actor.name, "honest": res.actor.honest, "blocks": res.blocks,
                            "would_block": res.would, "blocked_after": res.blocked_after,
                            "closest": list(res.closest), "mail": vars(res.mail),
                            "guesses": {**vars(res.guesses),
                                        "found": [[t - res.start, user] for t, user in res.guesses.found]},
                            "client": dict(res.actor.tally.counts)}
                           for res in r.results]} for r in runs]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
