"""A real Exim on 127.0.0.1 with eximhook's snippets included verbatim.

The generated config only adds scaffolding around the snippets: a local domain with a
list of valid users, a plaintext authenticator with test users (TLS only, through the
snippet's macro), a throwaway self-signed certificate, local delivery to maildirs,
127.0.0.2 as a relay customer. Used by the e2e tests and by contrib/demo.py.

Exim reads the snippets from a copy in the test's own directory, through the macro
EXIMHOOK_SNIPPETS (``.include EXIMHOOK_SNIPPETS/acl-rcpt-relaytest.conf`` in a config
fragment a test passes): its delivery processes read the config again as the Exim
user, who may not enter the checkout (a clone under /root, mode 0700).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eximhook.exim.debian import AUTH_EVENT
from eximhook.model.subjects import lsearch_line

from .config import toml_value
from .daemon import Daemon
from .loopback import LoopbackServer
from .paths import EXIM, EXIM_USER, EXIMHOOK, EXIPICK, SNIPPETS
from .ports import free_port
from .redis_server import stop_process
from .waiting import wait_for

DOMAIN = "test.example"
REMOTE = "remote.example"  # routed to a closed port on 127.0.0.1: its mail defers and stays queued
DEAD = "dead.example"  # routed to a sink on 127.0.0.1 that takes RCPT and refuses the data: Exim bounces
FORWARD = "fwd"  # fwd@DOMAIN is forwarded (redirect router) to alice@DOMAIN
MAILBOXES = ("alice", "bob", "carol", "abuse", "postmaster")
PASSWORD = "secret"
RELAY_CLIENT = "127.0.0.2"


def exim_expand(expression: str) -> str:
    """Expand ``expression`` with the real Exim (``exim -be``)."""
    proc = subprocess.run([EXIM, "-be"], input=expression.encode() + b"\n", capture_output=True, check=True)
    # -be prints "> " before each result and once more at the end of its input
    return proc.stdout.decode("utf-8", "replace").split("\n")[0].removeprefix("> ")


def auth_event() -> bool:
    """Whether the Exim binary the tests run counts failed AUTH through the auth:fail
    event (4.97 and later): it defines the macro the snippets' .ifdef asks for (an empty
    config: the binary's own macros, whatever the machine's config says)."""
    return subprocess.run([EXIM, "-C", "/dev/null", "-bP", "macro", AUTH_EVENT], capture_output=True).returncode == 0


class Exim:
    """One Exim daemon with its own spool, log, mail and eximhook store in ``work``."""

    def __init__(self, work: Path, *, users: list[str], limit: int = 5, hook_cmd: str | None = None,
                 macros: dict[str, str] | None = None, serve: bool = False, rcpt_acl: str | None = None,
                 settings: dict[str, object] | None = None, eximhook_extra: str = "",
                 record_runs: bool = False, activated: bool = False, auth_guard: bool = True,
                 relay_hosts: tuple[str, ...] = (RELAY_CLIENT,), routers: str = "", transports: str = "",
                 main: str = "") -> None:
        self.work = work
        self.relay_hosts = relay_hosts  # customers: relay_from_hosts
        self.routers, self.transports = routers, transports  # inserted first in their sections
        self.main = main  # main-section options of the test's own (spamd_address), after the defaults
        self.port = free_port()
        self.closed_port = free_port()
        self.users = users
        self.limit = limit
        self.conf = work / "exim.conf"
        self.snippets = work / "exim-snippets"  # SNIPPETS copied where the Exim user can read them
        self.eximhook_conf = work / "eximhook.toml"
        self.spool = work / "spool"
        self.mail = work / "mail"
        self.hook_cmd = hook_cmd or f"{sys.executable} -IS {EXIMHOOK} --config {self.eximhook_conf}"
        self.runs = self.spool / "hook-runs"
        if record_runs:  # EXIMHOOK_CMD notes every ${run} in self.runs, then runs the hook
            self.hook_cmd = f"{work / 'recording-hook'} --config {self.eximhook_conf}"
        self.macros = dict(macros or {})  # defined before macros.conf, whose own are .ifndef-guarded
        self.run_dir = work / "run"  # like /run/eximhook: the daemon's socket, owned by the Exim user
        self.socket = self.run_dir / "eximhook.sock"
        self.serve = serve
        if serve:
            self.macros.setdefault("EXIMHOOK_SOCKET", str(self.socket))
        self.rcpt_acl = rcpt_acl  # replaces the snippets in acl_check_rcpt (the benchmark's baselines)
        self.settings = settings or {}  # "section.key": value, over the defaults below
        self.eximhook_extra = eximhook_extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.daemon: Daemon | None = None
        self.activated = activated  # the test holds the daemon's socket, as eximhook-serve.socket
        self.auth_guard = auth_guard  # acl-auth.conf in force (bench/authfail.py's baseline: not)
        self.held: socket.socket | None = None
        self.sink = RefusingSink()

    # -- set-up --------------------------------------------------------------------

    def setup(self) -> Exim:
        exim = pwd.getpwnam(EXIM_USER)
        self.work.chmod(0o755)  # mkdtemp makes 0700: the Exim user must get in
        shutil.copytree(SNIPPETS, self.snippets, dirs_exist_ok=True)
        self.snippets.chmod(0o755)  # whatever the checkout's umask made them
        for snippet in self.snippets.iterdir():
            snippet.chmod(0o644)
        for d in (self.spool, self.work / "log", self.mail, self.run_dir):
            d.mkdir(exist_ok=True)
            os.chown(d, exim.pw_uid, exim.pw_gid)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        "/CN=localhost", "-keyout", str(self.work / "key.pem"), "-out", str(self.work / "cert.pem")],
                       check=True, capture_output=True)
        (self.work / "key.pem").chmod(0o640)
        os.chown(self.work / "key.pem", 0, exim.pw_gid)
        passwd = b"".join((lsearch_line(u) or b"").rstrip(b"\n") + f": {PASSWORD}\n".encode() for u in self.users)
        (self.work / "passwd").write_bytes(passwd)
        (self.work / "passwd").chmod(0o644)
        if "recording-hook" in self.hook_cmd:
            wrapper = self.work / "recording-hook"
            wrapper.write_text(f'#!/bin/sh\necho "$@" >> {self.runs}\nexec {sys.executable} -IS {EXIMHOOK} "$@"\n')
            wrapper.chmod(0o755)
        self.eximhook_conf.write_text(self.eximhook_toml())
        self.eximhook_conf.chmod(0o644)
        self.conf.write_text(self.exim_conf())
        self.conf.chmod(0o644)
        # creates the store, the mirror files (lsearch on a missing file is a 451) and
        # the config cache the hooks read
        self.eximhook("export")
        return self

    def eximhook_toml(self) -> str:
        sections: dict[str, dict[str, object]] = {
            "store": {"path": f"{self.spool}/eximhook", "mirror_dir": str(self.spool)},
            "limits.auth": {"limit": self.limit, "period": "1h"},
            "limits.relay": {"limit": self.limit, "period": "1h"},
            "notify": {"to": f"abuse@{DOMAIN}", "sendmail": [EXIM, "-C", str(self.conf), "-f", "root"], "timeout": 10},
            "log": {"file": f"{self.spool}/eximhook.log"},
            "exim": {"binary": EXIM, "config": str(self.conf), "exipick": EXIPICK},
            "serve": {"socket": str(self.socket)},
        }
        for dotted, value in self.settings.items():
            section, _, key = dotted.rpartition(".")
            sections.setdefault(section, {})[key] = value
        return "".join(f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items()) + "\n"
                       for name, table in sections.items()) + self.eximhook_extra

    def exim_conf(self) -> str:
        s, w = "EXIMHOOK_SNIPPETS", self.work
        overrides = "".join(f"{name} = {value}\n" for name, value in self.macros.items())
        auth = "" if self.auth_guard else "# "
        return f"""
# scaffolding for eximhook's end-to-end tests; the snippets are included verbatim
{overrides}EXIMHOOK_SNIPPETS = {self.snippets}
EXIMHOOK_CMD = {self.hook_cmd}
EXIMHOOK_CDB = {self.spool}/blocked_subjects.cdb
.include {s}/macros.conf

primary_hostname = mx.{DOMAIN}
qualify_domain = {DOMAIN}
domainlist local_domains = {DOMAIN}
hostlist relay_from_hosts = {" : ".join(self.relay_hosts)}
spool_directory = {self.spool}
log_file_path = {w}/log/%slog
exim_user = {EXIM_USER}
exim_group = {EXIM_USER}
never_users = root
trusted_users = {EXIM_USER}
keep_environment =
deliver_drop_privilege = true
host_lookup =
rfc1413_hosts =
smtp_accept_queue_per_connection = 0
smtp_accept_max = 50
recipients_max = 5000
queue_run_in_order = false
log_selector = +subject +received_recipients
tls_certificate = {w}/cert.pem
tls_privatekey = {w}/key.pem
{self.main}
.include {s}/tls-auth.conf
acl_smtp_rcpt = acl_check_rcpt
acl_smtp_data = acl_check_data
acl_not_smtp = acl_check_not_smtp
{auth}acl_smtp_auth = acl_eximhook_auth
.ifdef {AUTH_EVENT}
{auth}event_action = EXIMHOOK_EVENT_ACTION
.else
{auth}acl_smtp_quit = acl_eximhook_quit
{auth}acl_smtp_notquit = acl_eximhook_notquit
.endif

begin acl
.include {s}/acl-auth.conf

acl_check_rcpt:
  accept  hosts = :
{self.rcpt_acl or self.snippet_acl()}
  require verify = recipient
  accept  domains = +local_domains

acl_check_data:
.include {s}/acl-data.conf
  accept

acl_check_not_smtp:
.include {s}/acl-not-smtp.conf
  accept

begin routers
{self.routers}
forward:
  driver = redirect
  domains = +local_domains
  local_parts = {FORWARD}
  data = alice@{DOMAIN}

mailboxes:
  driver = accept
  domains = +local_domains
  local_parts = {" : ".join(MAILBOXES)}
  transport = maildir

remote:
  driver = manualroute
  domains = {REMOTE}
  route_list = * 127.0.0.1
  self = send
  transport = closed_port

dead:
  driver = manualroute
  domains = {DEAD}
  route_list = * 127.0.0.1
  self = send
  transport = refusing_sink

begin transports
{self.transports}
refusing_sink:
  driver = smtp
  port = {self.sink.port}
  allow_localhost

maildir:
  driver = appendfile
  directory = {self.mail}/$local_part_data/Maildir
  maildir_format
  create_directory
  delivery_date_add
  envelope_to_add
  return_path_add
  user = {EXIM_USER}

closed_port:
  driver = smtp
  port = {self.closed_port}
  allow_localhost

begin retry
*   *   F,1h,5m

begin authenticators
plain:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = ${{if and{{{{bool{{EXIMHOOK_ALLOWED_PLAIN}}}}\
                              {{eq{{$auth3}}{{${{lookup{{$auth2}}lsearch{{{w}/passwd}}{{$value}}fail}}}}}}}}}}
  server_set_id = $auth2
  server_advertise_condition = EXIMHOOK_AUTH_ADVERTISE
"""

    @staticmethod
    def snippet_acl() -> str:
        return "\n".join(f".include EXIMHOOK_SNIPPETS/acl-rcpt-{part}.conf" for part in ("auth", "relay", "accept"))

    # -- running ---------------------------------------------------------------------

    def start_daemon(self) -> Daemon:
        """``eximhook serve`` as the Exim user, as the systemd unit runs it (with
        ``activated``, on the socket the test holds, as eximhook-serve.socket)."""
        if self.activated and self.held is None:
            exim = pwd.getpwnam(EXIM_USER)
            self.held = socket.socket(socket.AF_UNIX)
            self.held.bind(str(self.socket))
            os.chown(self.socket, exim.pw_uid, exim.pw_gid)
            os.chmod(self.socket, 0o600)
            self.held.listen(1024)
        self.daemon = Daemon(self.eximhook_conf, user=EXIM_USER, held=self.held).start()
        return self.daemon

    def stop_daemon(self, sig: int = signal.SIGTERM) -> int | None:
        daemon, self.daemon = self.daemon, None
        return None if daemon is None else daemon.stop(sig)

    def start(self) -> Exim:
        self.sink.start()
        if self.serve and self.daemon is None:
            self.start_daemon()
        listen = f"<; 127.0.0.1.{self.port} ; ::1.{self.port}"  # loopback only, as local_interfaces
        self.proc = subprocess.Popen([EXIM, "-C", str(self.conf), "-bdf", "-oX", listen,
                                      "-oP", str(self.work / "exim.pid")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def listening() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"exim exited {self.proc.returncode}: {err}{self.log('panic')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for("exim to listen", listening)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        self.stop_daemon()
        if self.held is not None:
            self.held.close()
            self.held = None
        self.sink.stop()

    def __enter__(self) -> Exim:
        return self.setup().start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- SMTP ------------------------------------------------------------------------

    def connect(self, source: str = "127.0.0.1", tls: bool = True) -> smtplib.SMTP:
        smtp = smtplib.SMTP("127.0.0.1", self.port, source_address=(source, 0), timeout=30)
        smtp.ehlo("client.example")
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            smtp.starttls(context=ctx)
            smtp.ehlo("client.example")
        return smtp

    def send(self, rcpts: list[str], *, user: str | None = None, source: str = "127.0.0.1",
             subject: str = "test", headers: str = "", sender: str | None = None) -> dict[str, tuple[int, bytes]]:
        """One message over one connection; returns the refused recipients."""
        with self.connect(source) as smtp:
            if user is not None:
                smtp.login(user, PASSWORD)
            msg = f"From: <{sender or 'bob@' + DOMAIN}>\r\nSubject: {subject}\r\n{headers}\r\nhello\r\n"
            return smtp.sendmail(sender or f"bob@{DOMAIN}", rcpts, msg.encode())

    # -- inspecting ------------------------------------------------------------------

    def exim(self, *args: str) -> str:
        return subprocess.run([EXIM, "-C", str(self.conf), *args], capture_output=True, text=True,
                              check=True).stdout

    def eximhook(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, EXIMHOOK, "--config", str(self.eximhook_conf), *args],
                              capture_output=True, text=True, check=False)

    def show(self, ns: str, key: str) -> dict[str, Any]:
        """``eximhook show --json``: what the admin sees of the subject."""
        result = self.eximhook("show", "--json", ns, key)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def settled(self, timeout: float = 30) -> None:
        """Wait until nothing more can arrive: eximhook's outbox has no notification
        queued, held or being sent, and Exim's queue no message that is not frozen
        (everything sent so far is delivered). Then "exactly one" can be asserted."""

        def done() -> bool:
            n = json.loads(self.eximhook("stats", "--json").stdout)["notifications"]
            return (n["queued"], n["held"], n["sending"]) == (0, 0, 0) and self.queue(frozen=False) == []

        wait_for("eximhook's outbox drained and Exim's queue delivered", done, timeout)

    def queue(self, frozen: bool | None = None) -> list[str]:
        flag = [] if frozen is None else ["-z" if frozen else "-x"]
        out = subprocess.run([EXIPICK, "-C", str(self.conf), "-i", *flag], capture_output=True, text=True,
                             check=True).stdout
        return out.split()

    def headers(self, msg_id: str) -> str:
        return self.exim("-Mvh", msg_id)

    def maildir(self, box: str) -> list[bytes]:
        new = self.mail / box / "Maildir" / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []

    def log(self, name: str = "main") -> str:
        path = self.work / "log" / f"{name}log"
        return path.read_text(errors="replace") if path.exists() else ""

    def hook_runs(self) -> list[str]:
        """The argument lists of the ${run} hooks Exim ran (with record_runs=True)."""
        return self.runs.read_text().splitlines() if self.runs.exists() else []

    def hook_log(self) -> str:
        path = self.spool / "eximhook.log"
        return path.read_text(errors="replace") if path.exists() else ""


class RefusingSink(LoopbackServer):
    """A remote MTA on 127.0.0.1 that takes every recipient and refuses the data with a
    550: Exim's callout verification passes, its delivery fails, and it bounces."""

    def __init__(self) -> None:
        super().__init__()
        self.messages = 0

    def _session(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 sink ESMTP\r\n")
            data = False
            for line in lines:
                if data:
                    if line.rstrip(b"\r\n") == b".":
                        data = False
                        self.messages += 1
                        conn.sendall(b"550 5.7.1 refused by the test sink\r\n")
                    continue
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    conn.sendall(b"250 sink\r\n")
                elif verb == b"DATA":
                    data = True
                    conn.sendall(b"354 go on\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")


def invalid(n: int, tag: str = "nobody") -> list[str]:
    """``n`` recipients in the local domain that do not exist."""
    return [f"{tag}{i}@{DOMAIN}" for i in range(n)]


def parallel_bot(server: Exim, user: str, connections: int = 10, each: int = 4) -> None:
    """A spambot on ``connections`` connections at once, ``each`` invalid recipients per
    message; fails if any connection saw an error (the bot must see success)."""
    at_once(connections, lambda n: server.send(invalid(each, f"c{n}x"), user=user, subject=f"spam {n}"))


def at_once(n: int, job: Callable[[int], object]) -> None:
    """``job(0)`` .. ``job(n - 1)``, each in its own thread; fails if any raised or hung."""
    import threading

    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            job(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and not any(t.is_alive() for t in threads), errors


def make(users: list[str], base: str | None = None, **kwargs: object) -> Exim:
    """An Exim in a new directory under ``base`` (default: the system's temp dir; the
    benchmark passes a tmpfs mount)."""
    work = Path(tempfile.mkdtemp(prefix="eximhook-e2e-", dir=base))
    return Exim(work, users=users, **kwargs)  # type: ignore[arg-type]


def cleanup(server: Exim) -> None:
    server.stop()
    # deliveries and queue runners the daemon forked outlive it, and would write into
    # the directory again after it is removed
    pattern = f"-C {server.conf} "  # "--": the pattern starts with a dash
    subprocess.run(["pkill", "-KILL", "-f", "--", pattern], check=False)
    wait_for("Exim's children to go",
             lambda: subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True).returncode == 1)
    shutil.rmtree(server.work, ignore_errors=True)
