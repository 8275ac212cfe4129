"""Logging for hooks and admin commands: syslog (facility mail) or a file.

Hooks must never write to stderr, because Exim merges it into ``$value``; and the
``logging`` package costs several ms to import, so this is a thin layer over the C
``syslog`` module, with an append-only file as the alternative (tests read it).
"""

from __future__ import annotations

import os
import syslog
import time

from .subjects import escape

_LEVELS = {"err": syslog.LOG_ERR, "warning": syslog.LOG_WARNING, "notice": syslog.LOG_NOTICE, "info": syslog.LOG_INFO}


class Logger:
    def __init__(self, file: str | None = None, ident: str = "eximhook") -> None:
        self.file = file
        self.ident = ident
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
            try:
                fd = os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o640)
                # 0640 whatever the umask (the hooks and the daemon run with 077): the
                # log's group (adm, from Debian's setgid /var/log/exim4) reads it
                os.fchmod(fd, 0o640)
            except FileExistsError:
                fd = os.open(self.file, os.O_WRONLY | os.O_APPEND)
        except OSError:
            syslog.syslog(_LEVELS[level], line)  # the log file is not ours to write: fall back
            return
        if os.geteuid() == 0 and os.fstat(fd).st_uid == 0:
            # an admin command created it: the hooks (the Exim user) must still append
            from ._perms import hand_over, resolve_owner

            hand_over([self.file], resolve_owner(None, os.path.dirname(self.file)))
        try:
            os.write(fd, data)  # one write() with O_APPEND: lines from many processes never interleave
        finally:
            os.close(fd)
