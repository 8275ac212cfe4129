"""What counting invalid recipients costs inside a real Exim: eximhook against the seed recipe.

One command starts five Exim daemons side by side on 127.0.0.1, one per variant of acl_check_rcpt:
  a   plain          only the final accepts (exim-snippets/acl-rcpt-accept.conf)
  a2  plain+verify   a + the one `!verify = recipient/defer_ok/callout=...` the method needs (warn statements)
  b   seed           Lena's recipe (seed 001): lsearch of the empty blocked_*_users files, native
                     ratelimit per_rcpt (never tripping) and its ${run} of /bin/sh on the trip, then a's accepts
  c   eximhook run   the shipped snippets, record-invalid through ${run} of the Python hook
  d   eximhook serve the shipped snippets, record-invalid through ${readsocket} to `eximhook serve`
and drives each with three workloads, for authenticated senders (127.0.0.1, STARTTLS + AUTH) and for relay
hosts (127.0.1.x in relay_from_hosts, STARTTLS, no AUTH):
  honest   messages of --rcpts valid recipients, MAIL + RCPTs pipelined, then RSET: RCPT/s
  invalid  messages of invalid recipients, pipelined: ms per invalid RCPT (--invalid a round; --invalid-run for
           c, whose ${run} costs ~15 ms each)
  mix      --messages messages of 1-5 recipients (seeded), ~2 % invalid, 2 KB bodies through DATA:
           messages/s, and the MAIL+RCPT time per message (MAIL sent to last RCPT reply), which the
           messages/s hide: Exim's message-id clock caps one connection at ~200 messages/s; and the DATA
           time per message (DATA sent to the final reply), where d counts each message's recipients
           (seed 004's volume: one ${readsocket} per message; c and b count no volume).
Each round opens one session per variant and workload and side, and sends each workload in --slices slices,
variant after variant (the order rotates each round): this machine has slow spells of ~0.1-1 s in which Exim
needs up to 1.6x the CPU for the same work, and slices spread them over all variants. The tables show the
median over rounds, the spread (max-min)/median, each variant's speed relative to a, a2 and b (below 1:
slower), and the time it adds to a2 per RCPT or message. Every reply code is checked, and at the end so is
the work: c and d must have counted every invalid recipient sent to them (the store's counters), d every
mix message's recipients, b must have
ratelimit records, and no Exim may have written to its paniclog.
The Exims run with queue_only (no deliveries racing the next variant's measurement). The limits are the
production default, 100 invalid recipients an hour (eximhook's exact window keeps up to LIMIT timestamps per
subject, so a huge benchmark-only limit would measure a state no server has), and no subject ever gets near
them: each slice of each round is a session of its own, of a subject of its own (user u<N>, or relay host
127.0.1.<N>), with at most MAX_PER_SUBJECT invalid recipients.

    /opt/eximhook/bin/python bench/exim_compare.py [--rounds 9] [--tmpfs] [--json FILE]

With --ab PYTHON SNIPPETS, an A/B of two installs in one run instead: a2 against
  d0  eximhook serve of another install (PYTHON: its venv's interpreter, the launcher beside it; SNIPPETS: its
      snippets, e.g. an older checkout's exim-snippets), its store made by its own `eximhook export`
  d   eximhook serve of this one (this python, this checkout's snippets)
  d+  d with the combined score and per-customer totals enforced (users and relay hosts in CUSTOMERS customers,
      huge customer limits), the volume enforced beside the invalid recipients (the score then counts on every
      message): what the counting path costs when an admin turns them on
with the speed relative to a2 and d0.

As root, with eximhook installed non-editable in /opt/eximhook and Exim 4.96. --tmpfs puts every spool,
store and socket on a tmpfs mounted for the run (unmounted at the end): no fsync costs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib
from benchlib import median, spread, table
from smtpload import Session

from tests.support import harness as h

LIM = 100  # the production default
MAX_PER_SUBJECT = 90  # invalid recipients a subject gets in the whole run: below LIM, so nothing trips
SUBJECTS = 254  # per side: users u1..u254, relay hosts 127.0.1.1..254
VERIFY = "!verify = recipient/defer_ok/callout=10s,defer_ok,use_sender"
ACCEPT = ".include EXIMHOOK_SNIPPETS/acl-rcpt-accept.conf"  # the server's copy of the snippets
PLAIN_VERIFY = f"""  warn    authenticated = *
          {VERIFY}
  warn    !authenticated = *
          hosts = !@[] : +relay_from_hosts
          {VERIFY}
{ACCEPT}"""
# seed 001 as posted, LIM/PERIOD/SHELL/EXIMBINARY/WARNTO being her macros
SEED = r"""
  accept authenticated = *
        set acl_m_user = $authenticated_id
        condition = ${if exists{$spool_directory/blocked_authenticated_users}}
        condition = ${lookup{$acl_m_user}lsearch\
                    {$spool_directory/blocked_authenticated_users}{1}{0}}
        control = freeze/no_tell
        control = submission/domain=
        add_header = X-Authenticated-As: $acl_m_user

  accept authenticated = *
        !verify = recipient/defer_ok/callout=10s,defer_ok,use_sender
        ratelimit = LIM / PERIOD / per_rcpt / user-$acl_m_user
        continue = ${run{SHELL -c "echo $acl_m_user \
           >>$spool_directory/blocked_authenticated_users; \
           \N{\N echo Subject: user $acl_m_user blocked; echo; echo because \
           has sent mail to LIM invalid recipients during PERIOD.; \
           \N}\N | EXIMBINARY WARNTO"}}
        control = freeze/no_tell
        control = submission/domain=
        add_header = X-Authenticated-As: $acl_m_user

  accept hosts = !@[] : +relay_from_hosts
        set acl_m_user = $sender_host_address
        condition = ${if exists{$spool_directory/blocked_relay_users}}
        condition = ${lookup{$acl_m_user}lsearch\
                    {$spool_directory/blocked_relay_users}{1}{0}}
        control = freeze/no_tell
        control = submission/domain=
        add_header = X-Relayed-From: $acl_m_user

  accept hosts = !@[] : +relay_from_hosts
        !verify = recipient/defer_ok/callout=10s,defer_ok,use_sender
        ratelimit = LIM / PERIOD / per_rcpt / relayuser-$acl_m_user
        continue = ${run{SHELL -c "echo $acl_m_user \
           >>$spool_directory/blocked_relay_users; \
           \N{\N echo Subject: relay user $acl_m_user blocked; echo; echo \
           because has sent mail to LIM invalid recipients during PERIOD.; \
           \N}\N | EXIMBINARY WARNTO"}}
        control = freeze/no_tell
        control = submission/domain=
        add_header = X-Relayed-From: $acl_m_user
""" + ACCEPT
SEED_MACROS = {"LIM": str(LIM), "PERIOD": "1h", "SHELL": "/bin/sh", "EXIMBINARY": f"{h.EXIM} -f root",
               "WARNTO": f"abuse@{h.DOMAIN}"}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {  # name: (label, make() keywords)
    "a": ("plain", {"rcpt_acl": ACCEPT}),
    "a2": ("plain+verify", {"rcpt_acl": PLAIN_VERIFY}),
    "b": ("seed (Lena)", {"rcpt_acl": SEED, "macros": SEED_MACROS}),
    "c": ("eximhook ${run}", {}),
    "d": ("eximhook serve", {"serve": True}),
}
BASES = ("a", "a2", "b")
CUSTOMERS = 25  # d+: u<N> and 127.0.1.<N> are customer c<N % CUSTOMERS>'s
AB = {  # --ab's variants (d0's install and snippets come from the command line)
    "a2": VARIANTS["a2"],
    "d0": ("eximhook serve, --ab", {"serve": True}),
    "d": ("eximhook serve", {"serve": True}),
    "d+": ("serve, score+customers", {"serve": True}),
}
AB_BASES = ("a2", "d0")


@dataclass(frozen=True)
class Side:
    name: str  # the namespace eximhook counts in
    auth: bool

    def subject(self, n: int) -> tuple[str, str | None, str]:
        """The n-th subject of this side: (source address, AUTH user, the key eximhook counts)."""
        if self.auth:
            return "127.0.0.1", f"u{n}", f"u{n}"
        return f"127.0.1.{n}", None, f"127.0.1.{n}"


SIDES = (Side("auth", True), Side("relay", False))
SENDER = f"bob@{h.DOMAIN}"
VALID = [f"{u}@{h.DOMAIN}" for u in ("alice", "bob", "carol")]
BODY = (f"From: <bob@{h.DOMAIN}>\r\nTo: <alice@{h.DOMAIN}>\r\nSubject: bench\r\n\r\n".encode()
        + b"".join(b"line %02d " % i + b"x" * 64 + b"\r\n" for i in range(27)))  # ~2 KB


class BenchExim(h.Exim):
    """The e2e harness's Exim, with queue_only: deliveries would race the next variant's measurement.
    With ``python`` and ``snippets``, another install's eximhook (its daemon, its ${run} hook, its export) and
    snippets (--ab's d0)."""

    def __init__(self, work: Path, *, python: str | None = None, snippets: Path | None = None,
                 **kwargs: Any) -> None:
        super().__init__(work, **kwargs)
        self.python, self.snippets_from = python, snippets
        if python:
            self.hook_cmd = f"{python} -IS {launcher(python)} --config {self.eximhook_conf}"
            # the harness's authenticator asks the newer snippets' macro; older ones have no such check
            self.macros.setdefault("EXIMHOOK_ALLOWED_PLAIN", "yes")

    def setup(self) -> h.Exim:
        super().setup()  # its export already the other install's (eximhook below)
        if self.snippets_from:
            shutil.rmtree(self.snippets)
            shutil.copytree(self.snippets_from, self.snippets)
            for snippet in self.snippets.iterdir():
                snippet.chmod(0o644)
        return self

    def eximhook(self, *args: str) -> subprocess.CompletedProcess[str]:
        if not self.python:
            return super().eximhook(*args)
        return subprocess.run([self.python, launcher(self.python), "--config", str(self.eximhook_conf), *args],
                              capture_output=True, text=True, check=False)

    def start_daemon(self) -> h.Daemon:
        if not self.python:
            return super().start_daemon()
        self.daemon = h.Daemon(self.eximhook_conf, user=h.EXIM_USER, python=self.python).start()
        return self.daemon

    def exim_conf(self) -> str:
        conf = super().exim_conf()
        relay = f"hostlist relay_from_hosts = {h.RELAY_CLIENT}\n"
        assert "\nacl_smtp_rcpt =" in conf and relay in conf, "the harness's config changed: adapt BenchExim"
        conf = conf.replace(relay, f"hostlist relay_from_hosts = {h.RELAY_CLIENT} : 127.0.1.0/24\n")
        return conf.replace("\nacl_smtp_rcpt =", "\nqueue_only = true\nacl_smtp_rcpt =", 1)


def launcher(python: str) -> str:
    return os.path.join(os.path.dirname(python), "eximhook")


def score_config(work: Path) -> str:
    """d+'s eximhook.toml additions (docs/signals.md): huge limits, nothing trips."""
    members = work / "customers"
    members.write_text("".join(f"auth:u{n} c{n % CUSTOMERS}\nrelay:127.0.1.{n} c{n % CUSTOMERS}\n"
                               for n in range(1, SUBJECTS + 1)))
    members.chmod(0o644)
    huge = 10**9
    return ("[limits.auth.recipients]\nmode = \"enforce\"\n[limits.relay.recipients]\nmode = \"enforce\"\n"
            "[limits.auth.score]\nlimit = 150\nmode = \"enforce\"\n[limits.relay.score]\nlimit = 150\n"
            f'mode = "enforce"\n[customers]\nlookup = "{members}"\nby_domain = false\n'
            f'[limits.customer]\nlimit = {huge}\nperiod = "1h"\nmode = "enforce"\n'
            f'[limits.customer.recipients]\nlimit = {huge}\nperiod = "1h"\nmode = "enforce"\n')


def start(name: str, base: str | None, ab: list[str] | None = None) -> h.Exim:
    kwargs: dict[str, Any] = dict((AB if ab else VARIANTS)[name][1])
    work = Path(tempfile.mkdtemp(prefix=f"eximhook-bench-{name}-", dir=base))
    if name == "d0" and ab:
        kwargs.update(python=ab[0], snippets=Path(ab[1]))
    if name == "d+":
        kwargs["eximhook_extra"] = score_config(work)
    ex = BenchExim(work, users=["bob", "alice", *(f"u{n}" for n in range(1, SUBJECTS + 1))], limit=LIM, **kwargs)
    try:
        ex.setup()
        if name == "b":  # the seed's lsearch files, empty (export wrote eximhook's mirror there)
            for f in ("blocked_authenticated_users", "blocked_relay_users"):
                (ex.spool / f).write_bytes(b"")
        return ex.start()
    except BaseException:
        h.cleanup(ex)
        raise


def session(ex: h.Exim, side: Side, n: int) -> Session:
    source, user, _ = side.subject(n)
    s = Session(ex.port, source=source, user=user, tls=True)
    s.envelope(SENDER, VALID[:1])  # warm-up: the session's first lookups
    s.command(b"RSET", b"250")
    return s


def expect(what: str, codes: list[bytes], want: bytes = b"250") -> None:
    bad = [c for c in codes if c != want]
    if bad:
        raise AssertionError(f"{what}: {len(bad)} of {len(codes)} replies not {want.decode()}: {sorted(set(bad))}")


@dataclass
class Tally:
    units: int = 0  # RCPTs or messages
    seconds: float = 0.0  # the wall time they took
    envelopes: float = 0.0  # mix: MAIL sent to last RCPT reply, summed
    datas: float = 0.0  # mix: DATA sent to the final reply, summed


def envelope(s: Session, rcpts: list[str]) -> float:
    """One pipelined MAIL + RCPTs, every reply checked (authenticated and relay senders get 250 for invalid
    recipients too: the bounce comes later); the seconds from MAIL sent to the last RCPT reply."""
    elapsed, codes = s.timed_envelope(SENDER, rcpts)
    expect("RCPT", codes)
    return elapsed


def interleaved(servers: dict[str, h.Exim], order: list[str], side: Side, subjects: list[int],
                work: Callable[[str, Session, int, Tally], None]) -> dict[str, Tally]:
    """Slice by slice, variant after variant, each slice a session of its own subject, so the machine's
    slow spells (they last ~0.1-1 s here and slow Exim by up to 1.6x) hit every variant alike."""
    tallies = {v: Tally() for v in order}
    for i, n in enumerate(subjects):
        for v in order:
            s = session(servers[v], side, n)
            try:
                work(v, s, i, tallies[v])
            finally:
                s.close()
    return tallies


def mix_plan(rng: random.Random, messages: int, tag: str) -> list[list[str]]:
    return [[f"nobody-{tag}-{m}-{k}@{h.DOMAIN}" if rng.random() < 0.02 else rng.choice(VALID)
             for k in range(rng.randint(1, 5))] for m in range(messages)]


Results = dict[str, dict[str, dict[str, list[float]]]]  # metric -> side -> variant -> one value per round


Sent = dict[tuple[str, str, str, str], int]  # (variant, side, key, counter) -> invalid recipients or all sent


def one_round(servers: dict[str, h.Exim], order: list[str], side: Side, rnd: int, opts: argparse.Namespace,
              res: Results, sent: Sent, subjects: Callable[[], list[int]]) -> None:
    slices = opts.slices

    def honest(v: str, s: Session, i: int, tally: Tally) -> None:
        tally.seconds += envelope(s, [VALID[0]] * opts.rcpts)
        tally.units += opts.rcpts
        s.command(b"RSET", b"250")

    def counted(v: str, n: int, k: int, counter: str = "invalid") -> None:
        at = (v, side.name, side.subject(n)[2], counter)
        sent[at] = sent.get(at, 0) + k

    def invalid(v: str, s: Session, i: int, tally: Tally) -> None:
        k = max(1, min(MAX_PER_SUBJECT, (opts.invalid_run if v == "c" else opts.invalid) // slices))
        tally.seconds += envelope(s, [f"nobody-{v}-{rnd}-{i}-{j}@{h.DOMAIN}" for j in range(k)])
        tally.units += k
        s.command(b"RSET", b"250")
        counted(v, invalid_subjects[i], k)

    plan = mix_plan(random.Random(opts.seed * 1000 + rnd), opts.messages, f"r{rnd}")

    def mix(v: str, s: Session, i: int, tally: Tally) -> None:
        begin = time.perf_counter()
        for rcpts in plan[i * len(plan) // slices:(i + 1) * len(plan) // slices]:
            tally.envelopes += envelope(s, rcpts)
            elapsed, code = s.timed_data(BODY)
            expect("DATA", [code])
            tally.datas += elapsed
            tally.units += 1
            counted(v, mix_subjects[i], sum(r.startswith("nobody") for r in rcpts))
            counted(v, mix_subjects[i], len(rcpts), "recipients")
        tally.seconds += time.perf_counter() - begin

    for v, t in interleaved(servers, order, side, [1] * slices, honest).items():  # valid only: nothing counted
        res["honest"][side.name][v].append(t.units / t.seconds)
    invalid_subjects = subjects()
    for v, t in interleaved(servers, order, side, invalid_subjects, invalid).items():
        res["invalid"][side.name][v].append(t.seconds / t.units)
    mix_subjects = subjects()
    for v, t in interleaved(servers, order, side, mix_subjects, mix).items():
        res["mix_rate"][side.name][v].append(t.units / t.seconds)
        res["mix_env"][side.name][v].append(t.envelopes / t.units)
        res["mix_data"][side.name][v].append(t.datas / t.units)


def run(servers: dict[str, h.Exim], opts: argparse.Namespace, sent: Sent) -> tuple[Results, int]:
    metrics = ("honest", "invalid", "mix_rate", "mix_env", "mix_data")
    res: Results = {m: {s.name: {v: [] for v in servers} for s in SIDES} for m in metrics}
    names, began, done = list(servers), time.monotonic(), 0
    used = {side.name: 1 for side in SIDES}  # subject 1 sends only valid recipients (honest)
    for rnd in range(opts.rounds):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for side in SIDES:
            def subjects(side: Side = side) -> list[int]:
                first = used[side.name] + 1
                used[side.name] += opts.slices
                if used[side.name] > SUBJECTS:
                    sys.exit(f"more than {SUBJECTS} subjects needed: fewer --rounds or --slices")
                return list(range(first, first + opts.slices))

            one_round(servers, order, side, rnd, opts, res, sent, subjects)
        done += 1
        elapsed = time.monotonic() - began
        print(f"  round {done}/{opts.rounds} done, {elapsed:.0f}s", file=sys.stderr, flush=True)
        if elapsed > opts.budget and done < opts.rounds:
            print(f"  stopping after {done} rounds: --budget {opts.budget:g}s spent", file=sys.stderr)
            break
    return res, done


# The totals of counters, read by the install that wrote them (--ab: stores of two versions)
TOTALS = ("import json, sys\nfrom eximhook.storage.counters import Counters\nwith Counters(sys.argv[1]) as c:\n"
          "    print(json.dumps([c.get(*at).total for at in json.load(sys.stdin)]))")


def verify(servers: dict[str, h.Exim], sent: Sent) -> list[str]:
    """Did every variant do its work? Counters, ratelimit records, paniclogs, eximhook's logs."""
    problems = []
    for v, ex in servers.items():
        if ex.log("panic"):
            problems.append(f"{v}: paniclog: {ex.log('panic')[:300]}")
        if v[0] in "cd":
            # volume: the daemon's only
            checked = [(at[1:], n) for at, n in sent.items() if at[0] == v and (at[3] != "recipients" or v[0] == "d")]
            python = getattr(ex, "python", None) or sys.executable
            totals = json.loads(subprocess.run([python, "-I", "-c", TOTALS, str(ex.spool / "eximhook")], text=True,
                                               input=json.dumps([at for at, _ in checked]), capture_output=True,
                                               check=True).stdout)
            for ((ns, key, counter), n), total in zip(checked, totals, strict=True):
                if total != n:
                    problems.append(f"{v}: {ns} {key}: counted {total} {counter}, sent {n}")
            errors = [line for line in ex.hook_log().splitlines() if " err:" in line or " warning:" in line]
            if errors:
                problems.append(f"{v}: {len(errors)} err/warning lines in eximhook's log, e.g. {errors[0][:200]}")
        if v == "b":
            dump = subprocess.run(["/usr/sbin/exim_dumpdb", str(ex.spool), "ratelimit"], capture_output=True,
                                  text=True, check=False).stdout
            for (variant, ns, key, counter), n in sent.items():
                record = f"{'user' if ns == 'auth' else 'relayuser'}-{key}"
                if variant == "b" and counter == "invalid" and n and record not in dump:
                    problems.append(f"b: no ratelimit record for {record}")
    return problems


Row = tuple[str, Callable[[float], str], bool]  # header, format, higher is better
METRICS: dict[str, tuple[str, list[Row]]] = {
    "honest": ("honest: messages of valid RCPTs", [("RCPT/s", lambda x: f"{x:,.0f}", True)]),
    "invalid": ("invalid: messages of invalid RCPTs", [("ms/RCPT", lambda x: f"{x * 1e3:.3f}", False)]),
    "mix_rate": ("mix: messages of 1-5 RCPTs, 2% invalid, 2 KB DATA", [("msgs/s", lambda x: f"{x:,.1f}", True)]),
    "mix_env": ("mix: MAIL+RCPT time per message", [("ms/msg", lambda x: f"{x * 1e3:.3f}", False)]),
    "mix_data": ("mix: DATA time per message (d counts its volume here)",
                 [("ms/msg", lambda x: f"{x * 1e3:.3f}", False)]),
}


def report(res: Results, rounds: int, bases: tuple[str, ...] = BASES,
           labels: dict[str, tuple[str, dict[str, Any]]] = VARIANTS) -> str:
    out = []
    for metric, (title, ((unit, fmt, higher),)) in METRICS.items():
        for side in SIDES:
            meds = {v: median(vals) for v, vals in res[metric][side.name].items()}
            rows = []
            for v, m in meds.items():
                speed = [(m / meds[b] if higher else meds[b] / m) for b in bases]
                added = (1 / m - 1 / meds["a2"]) * 1e6 if higher else (m - meds["a2"]) * 1e6
                rows.append([f"{v:3s}{labels[v][0]}", fmt(m), spread(res[metric][side.name][v]),
                             *(f"{x:.2f}" for x in speed), f"{added:+,.1f}"])
            per = "per RCPT" if metric in ("honest", "invalid") else "per msg"
            out.append(f"{title} -- {side.name}, median of {rounds} rounds")
            out.append(table(["variant", unit, "spread", *(f"x {b}" for b in bases), f"us {per} vs a2"], rows))
            out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    parser.add_argument("--rcpts", type=int, default=3000, help="valid RCPTs per honest message (max 5000)")
    parser.add_argument("--slices", type=int, default=5, help="slices per workload and round (default 5)")
    parser.add_argument("--invalid", type=int, default=500, help="invalid RCPTs per round (a, a2, b, d)")
    parser.add_argument("--invalid-run", type=int, default=40, help="invalid RCPTs per round for c (~15 ms each)")
    parser.add_argument("--messages", type=int, default=100, help="messages in the mix session")
    parser.add_argument("--seed", type=int, default=1, help="seed of the mix's recipients")
    parser.add_argument("--tmpfs", action="store_true", help="spools, stores and sockets on a tmpfs")
    parser.add_argument("--budget", type=float, default=900, help="start no new round after this many seconds")
    parser.add_argument("--ab", nargs=2, metavar=("PYTHON", "SNIPPETS"), help="instead: a2, another install's "
                        "daemon and snippets (d0), this one's (d), and this one's with the score and customers (d+)")
    parser.add_argument("--json", metavar="FILE", help="also write the per-round values and medians here")
    opts = parser.parse_args()
    counts = (opts.rounds, opts.slices, opts.invalid, opts.invalid_run, opts.messages)
    if not 1 <= opts.rcpts <= 5000 or min(counts) < 1:
        parser.error("--rcpts must be 1..5000 (recipients_max); the other counts >= 1")
    if opts.ab and not (os.access(launcher(opts.ab[0]), os.X_OK) and os.path.isfile(f"{opts.ab[1]}/macros.conf")):
        parser.error("--ab needs a venv's python with eximhook beside it, and a directory of snippets")
    variants, bases = (AB, AB_BASES) if opts.ab else (VARIANTS, BASES)
    where, version = benchlib.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    servers: dict[str, h.Exim] = {}
    sent: Sent = {}
    with benchlib.tmpfs(opts.tmpfs) as base:
        try:
            for name in variants:
                servers[name] = start(name, base, opts.ab)
            spools = f"tmpfs {base}" if base else f"disk ({tempfile.gettempdir()})"
            print(f"Exim {h.EXIM}, {len(variants)} variants, spools on {spools}; {opts.rounds} rounds", file=sys.stderr)
            res, rounds = run(servers, opts, sent)
            problems = verify(servers, sent)
        finally:
            for ex in servers.values():
                h.cleanup(ex)
    after = benchlib.fingerprint(where)
    print(f"eximhook {version}" + ("" if after == version else f"; CHANGED during the run to {after}"))
    print(f"exim_compare: spools on {'tmpfs' if opts.tmpfs else 'disk'}; honest {opts.rcpts} RCPTs; invalid "
          f"{opts.invalid} ({opts.invalid_run} for c); mix {opts.messages} messages; x = speed vs that variant "
          "(below 1: slower)\n")
    if opts.ab:
        print(f"d0: {' '.join(opts.ab)}; d, d+: {sys.executable}, {h.SNIPPETS}\n")
    print(report(res, rounds, bases, variants))
    if opts.json:
        medians = {m: {s: {v: median(x) for v, x in by_v.items()} for s, by_v in by_s.items()}
                   for m, by_s in res.items()}
        with open(opts.json, "w") as f:
            json.dump({"eximhook": version, "tmpfs": opts.tmpfs, "rounds": rounds, "medians": medians, "values": res,
                       "labels": {v: label for v, (label, _) in variants.items()}, "problems": problems}, f, indent=1)
    for p in problems:
        print(f"PROBLEM: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
