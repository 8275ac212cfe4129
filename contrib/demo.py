"""eximhook against a real Exim on 127.0.0.1: a compromised account, caught.

Starts `eximhook serve` (as the Exim user) and Exim 4.96 with eximhook's snippets (the
e2e harness's config, EXIMHOOK_SOCKET defined), then: an honest user sends; a spambot
with a stolen password sends to a harvested list over parallel connections and sees
"250 OK" throughout; eximhook blocks it once, mails the abuse desk once (naming the
frozen spam), and freezes everything it sends from then on (a message the bot finished
before the limit was reached has left already), all without Exim starting a single
process; the admin looks, purges, unblocks.
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

from tests.e2e import harness as h

LIMIT = 10


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def run(exim: h.Exim, *args: str) -> str:
    print(f"$ eximhook {' '.join(args)}")
    result = exim.eximhook(*args)
    print((result.stdout + result.stderr).rstrip())
    return result.stdout


def main() -> int:
    exim = h.make(["alice", "bob"], limit=LIMIT, serve=True, record_runs=True)
    try:
        exim.setup().start()
        say(f"Exim {h.EXIM} listening on 127.0.0.1:{exim.port}; snippets from {h.SNIPPETS}")
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
        say("done; Exim stopped, temporary files removed")
        return 0
    finally:
        h.cleanup(exim)


if __name__ == "__main__":
    sys.exit(main())
