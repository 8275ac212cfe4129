"""A real rspamd for the tests and the benchmarks: its own process on 127.0.0.1, a config
of a dozen lines in a temp dir.

Never the system's service (the Debian package's unit stays stopped: install.sh installs
with policy-rc.d): each user starts one with ``-c`` on its own config, in the foreground
(``-f``), as root dropping to the package's user (``-u``/``-g``: rspamd refuses to run
its workers as root), and stops it by its pid. The config loads no Lua rules, so no
module, Redis or DNS lookup runs (the resolver points at a closed port on 127.0.0.1
all the same); what is left is rspamd's core, which knows GTUBE: a message holding it
gets the action "reject", and with ``enable_test_patterns`` its variants get "add
header", "rewrite subject" and "no action". Where rspamd is missing the tests that need
it skip, except under CI=true, where CI installs it (``install.sh --dev``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from .ports import free_port
from .redis_server import stop_process
from .waiting import wait_up

RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"
USER = "_rspamd"  # made by Debian's rspamd package
# GTUBE, and the test patterns rspamd adds to it (its src/libmime/message.c): one in a
# text part of at most 8 KiB decides the action, whatever else the message holds
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
GTUBE_ADD_HEADER = "Y" + GTUBE[1:]
GTUBE_NO_ACTION = "A" + GTUBE[1:]
CONFIG = """\
options {{
  pidfile = "{dir}/rspamd.pid";
  tempdir = "{dir}";
  hs_cache_dir = "{dir}";
  url_tld = "{dir}/tlds.dat";
  enable_test_patterns = true;
  dns {{ nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 0; }}
}}
logging {{ type = "file"; filename = "{dir}/rspamd.log"; level = "info"; }}
actions {{ reject = 15; add_header = 6; rewrite_subject = 8; greylist = 4; }}
worker "normal" {{ bind_socket = "127.0.0.1:{port}"; count = 1; }}
"""
# rules=True (bench/spam.py --rules): the package's own config and rule set, every Lua
# module it enables, with overrides in the temp dir (its LOCAL_CONFDIR): each worker on
# 127.0.0.1 on a port of its own, and the same dead resolver, so every RBL, SURBL,
# fuzzy or map lookup fails at once (the rules' CPU, without their lookups' latency)
PACKAGE_CONFIG = "/etc/rspamd/rspamd.conf"
OVERRIDES = {
    "options.inc": 'tempdir = "{dir}";\nhs_cache_dir = "{dir}";\n'
                   'dns {{ nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 0; }}\n',
    "logging.inc": 'type = "file";\nfilename = "{dir}/rspamd.log";\nlevel = "info";\n',
    "worker-normal.inc": 'bind_socket = "127.0.0.1:{port}";\ncount = 1;\n',
    "worker-controller.inc": 'bind_socket = "127.0.0.1:{controller}";\n',
    "worker-proxy.inc": 'bind_socket = "127.0.0.1:{proxy}";\n',
}


class RspamdServer:
    """``rspamd`` with its scanner on ``127.0.0.1:port`` (Exim's
    ``spamd_address = 127.0.0.1 PORT variant=rspamd``), until ``stop``; ``start`` may
    follow, on the same port. Its files live in a temp dir of its own, which the
    unprivileged user can enter (pytest's tmp_path is root's, 0700)."""

    def __init__(self, rules: bool = False) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ehrspamd-"))
        user = pwd.getpwnam(USER)
        os.chown(self.dir, user.pw_uid, user.pw_gid)
        self.dir.chmod(0o755)
        self.argv = [RSPAMD, "-f", "-u", USER, "-g", USER]
        if rules:
            (self.dir / "override.d").mkdir()
            ports = {"port": self.port, "controller": free_port(), "proxy": free_port()}
            for name, text in OVERRIDES.items():
                (self.dir / "override.d" / name).write_text(text.format(dir=self.dir, **ports))
            self.argv += ["-c", PACKAGE_CONFIG, *(f"--var={var}={self.dir}" for var in
                                                 ("LOCAL_CONFDIR", "DBDIR", "RUNDIR", "LOGDIR"))]
        else:
            (self.dir / "rspamd.conf").write_text(CONFIG.format(dir=self.dir, port=self.port))
            # the public suffixes rspamd finds URLs by: the package's 9,600 take it 1-15 s
            # to compile at every start; URLs play no part in a GTUBE verdict
            (self.dir / "tlds.dat").write_text("com\norg\nnet\nexample\n")
            self.argv += ["-c", str(self.dir / "rspamd.conf")]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """Exim's ``spamd_address`` for it."""
        return f"127.0.0.1 {self.port} variant=rspamd"

    def start(self, timeout: float = 60.0) -> RspamdServer:
        self.proc = subprocess.Popen(self.argv,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     cwd=str(self.dir), env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        wait_up(self.proc, f"rspamd to answer /ping on 127.0.0.1:{self.port}", self.ping, self.log, self.stop, timeout)
        return self

    def ping(self) -> bool:
        """Its scanner answers ``GET /ping`` with ``pong``: it takes messages."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
                answer = b""
                while chunk := s.recv(4096):
                    answer += chunk
                return answer.startswith(b"HTTP/1.") and b"pong" in answer
        except OSError:
            return False

    def log(self) -> str:
        path = self.dir / "rspamd.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM to our pid (its workers go with it; SIGKILL if it hangs), and wait."""
        stop_process(self.proc)
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()

    def close(self) -> None:
        """Stop, and remove its temp dir: nothing left behind."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
