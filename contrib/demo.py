"""eximhook against a real Exim on 127.0.0.1: a compromised account, caught.

Starts `eximhook serve` (as the Exim user) and Exim 4.96 with eximhook's snippets (the
e2e harness's config, EXIMHOOK_SOCKET defined), then: an honest user sends; a spambot
with a stolen password sends to a harvested list over parallel connections and sees
"250 OK" throughout; eximhook blocks it once, mails the abuse desk once (naming the
frozen spam), and freezes everything it sends from then on (a message the bot finished
before the limit was reached has left already), all without Exim starting a single
process; the admin looks, purges, unblocks. Then seed 004: a bulk run from another
account trips its volume limit (an hourly and a daily window) at the message that
crosses it, and bounces are measured in shadow mode, which blocks nobody.
Run as root after `bash contrib/install.sh --dev`:  /opt/eximhook/bin/python contrib/demo.py
"""

from __future__ import annotations

import email
import email.policy
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import harness as h

LIMIT = 10
VOLUME = 12  # recipients per hour (and 30 per day) before an account is blocked; production default 1000
SEED_004 = {
    "limits.auth.recipients.windows": [{"limit": VOLUME, "period": "1h"}, {"limit": 30, "period": "1d"}],
    "limits.auth.recipients.mode": "enforce",
    "limits.auth.bounces.limit": 1,  # shadow mode (the default for the new counters): measured, never blocks
}


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def run(exim: h.Exim, *args: str) -> str:
    print(f"$ eximhook {' '.join(args)}")
    result = exim.eximhook(*args)
    print((result.stdout + result.stderr).rstrip())
    return result.stdout


def main() -> int:
    exim = h.make(["alice", "bob", "carol"], limit=LIMIT, serve=True, record_runs=True, settings=SEED_004)
    try:
        exim.setup().start()
        say(f"Exim {h.EXIM} listening on 127.0.0.1:{exim.port}; snippets from {h.SNIPPETS} (a copy in {exim.snippets})")
        run(exim, "serve", "--check")
        print(f"limit: more than {LIMIT} invalid recipients in 1h blocks a sender (production default: 100)")
        with exim.connect(tls=False) as smtp:
            print(f"AUTH offered before STARTTLS: {'auth' in smtp.esmtp_features}")

        say("alice, an honest user, sends to a colleague")
        print("refused:", exim.send([f"bob@{h.DOMAIN}"], user="alice", subject="lunch?") or "none")

        say("a spambot logs in as bob (stolen password) and mails a harvested list, 4 connections at once")
        harvested = [f"user{i}@{h.DOMAIN}" for i in range(24)] + [f"alice@{h.DOMAIN}"]
        refused: list[dict[str, tuple[int, bytes]]] = []
        threads = [threading.Thread(target=lambda n=n: refused.append(exim.send(
            harvested[n::4], user="bob", subject=f"CHEAP PILLS {n}"))) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"recipients refused by the server: {sum(len(r) for r in refused)} (the bot sees success)")
        print(f"processes Exim started for {len(harvested) - 1} invalid recipients: {len(exim.hook_runs())} "
              "(each was one ${readsocket} round trip to eximhook serve)")
        h.wait_for("the notification", lambda: exim.maildir("abuse"))
        time.sleep(0.5)

        say("the abuse desk's mailbox")
        notes = exim.maildir("abuse")
        print(f"{len(notes)} notification(s)")
        msg = email.message_from_bytes(notes[0], policy=email.policy.default)
        print(f"Subject: {msg['Subject']}\n")
        print(msg.get_content().rstrip())  # type: ignore[attr-defined]

        say("what the admin sees")
        run(exim, "list")
        run(exim, "show", "auth", "bob")
        run(exim, "frozen", "auth", "bob")

        say("the bot keeps sending: accepted and frozen, nothing leaves")
        exim.send([f"alice@{h.DOMAIN}"], user="bob", subject="MORE PILLS")
        print(f"frozen messages in the queue: {len(exim.queue(frozen=True))}")
        ids = exim.queue(frozen=True)
        print(f"$ eximhook view {ids[0]}  (first lines)")
        print("\n".join(exim.eximhook("view", ids[0], "--lines", "3").stdout.splitlines()[-12:]))

        say("spam, so: purge the evidence once the fine is paid, then give bob his account back")
        run(exim, "purge", "--dry-run", "auth", "bob")
        run(exim, "purge", "--unblock", "auth", "bob")
        run(exim, "history", "auth", "bob")

        say("bob (with a new password) sends again: delivered, not frozen")
        exim.send([f"alice@{h.DOMAIN}"], user="bob", subject="sorry about that")
        h.wait_for("delivery", lambda: [m for m in exim.maildir("alice") if b"sorry about that" in m])
        print(f"alice's mailbox: {len(exim.maildir('alice'))} message(s); frozen in queue: "
              f"{len(exim.queue(frozen=True))}")
        seed_004(exim)
        say("done; Exim stopped, temporary files removed")
        return 0
    finally:
        h.cleanup(exim)


def seed_004(exim: h.Exim) -> None:
    say(f"seed 004, volume: carol's account sends a bulk run, 5 recipients a message "
        f"(limit: more than {VOLUME} per hour, or 30 per day)")
    rcpts = [f"{u}@{h.DOMAIN}" for u in ("alice", "bob", "postmaster")] + [f"list{i}@{h.REMOTE}" for i in range(2)]
    frozen: set[str] = set()
    for n in range(1, 5):
        exim.send(rcpts, user="carol", subject=f"offer {n}")
        now = {m for m in exim.queue(frozen=True) if f"Subject: offer {n}" in exim.headers(m)}
        print(f"message {n}: {5 * n} recipients so far: {'frozen' if now - frozen else 'accepted'}")
        frozen |= now
    h.wait_for("the notification", lambda: len(exim.maildir("abuse")) == 2)
    msg = email.message_from_bytes(exim.maildir("abuse")[-1], policy=email.policy.default)
    print(f"the abuse desk's second notification: {msg['Subject']}")
    run(exim, "list")
    print("\n".join(run_quiet(exim, "show", "auth", "carol").splitlines()[:12]))
    run(exim, "frozen", "auth", "carol")
    print("(messages 1 and 2 had left for alice, bob and postmaster; their copies for remote.example, still "
          "queued, were frozen before the notification went out)")

    say("seed 004, bounces in shadow mode: alice mails two dead addresses; Exim bounces both")
    for n in range(2):
        exim.send([f"gone{n}@{h.DEAD}"], user="alice", subject=f"typo {n}",
                  headers=f"Message-ID: <typo{n}@demo.example>\r\n")
    h.wait_for("two bounces", lambda: sum(b"delivery-status" in m for m in exim.maildir("alice")) == 2)
    h.wait_for("the would-block record", lambda: "alice" in exim.eximhook("list", "--would-block").stdout)
    run(exim, "top", "bounces")
    run(exim, "list", "--would-block")
    print(f"alice blocked: {exim.eximhook('check-blocked', 'auth', 'alice').stdout} (shadow mode only records)")


def run_quiet(exim: h.Exim, *args: str) -> str:
    print(f"$ eximhook {' '.join(args)}  (first lines)")
    return exim.eximhook(*args).stdout


if __name__ == "__main__":
    sys.exit(main())
