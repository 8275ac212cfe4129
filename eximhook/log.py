"""Logging for hooks and admin commands: syslog (facility mail) or a file.

Hooks must never write to stderr, because Exim merges it into ``$value``; and the
``logging`` package costs several ms to import, so this is a thin layer over the C
``syslog`` module, with an append-only file as the alternative (tests read it).
"""

from __future__ import annotations

import os
import syslog
import time

from .errors import UnsafePath
from .model.subjects import escape
from .perms import Dir

_LEVELS = {"err": syslog.LOG_ERR, "warning": syslog.LOG_WARNING, "notice": syslog.LOG_NOTICE, "info": syslog.LOG_INFO}


class Logger:
    def __init__(self, file: str | None = None, ident: str = "eximhook") -> None:
        self.file = file
        self.ident = ident
        self.refused = False  # said once in syslog why the file is not written
        if file is None:
            syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_MAIL)

    def log(self, level: str, message: str) -> None:
        # escape() keeps a hostile key from forging a second log line
        line = escape(message)
        if self.file is None:
            syslog.syslog(_LEVELS[level], line)
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        data = f"{stamp} {self.ident}[{os.getpid()}] {level}: {line}\n".encode("utf-8", "replace")
        try:
            # Not by path: the log's directory (Debian's /var/log/exim4) is the Exim user's,
            # who could make the name a link to a file of root's (Dir.open refuses that).
            # 0640 whatever the umask (the hooks and the daemon run with 077): the log's
            # group (adm, from Debian's setgid /var/log/exim4) reads it; root hands a log it
            # makes to the directory's owner, so that the hooks can still append
            with Dir(os.path.dirname(self.file) or ".") as d:
                fd = d.open(os.path.basename(self.file), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640,
                            (d.st.st_uid, d.st.st_gid))
        except (OSError, UnsafePath) as exc:
            if not self.refused:  # the log file is not ours to write: fall back, and say why once
                self.refused = True
                syslog.syslog(syslog.LOG_ERR, escape(f"not logging to {self.file} ([log] file): {exc}"))
            syslog.syslog(_LEVELS[level], line)
            return
        try:
            os.write(fd, data)  # one write() with O_APPEND: lines from many processes never interleave
        finally:
            os.close(fd)
