"""Named exceptions and the documented exit codes.

The exit codes are plain ints on purpose, not an ``IntEnum``: ``import enum`` costs
about 4 ms here, close to half of what a hook may add to the interpreter's start.
The values follow sysexits(3); none is 127, which Exim's ``${run}`` reserves for
"could not run the command".
"""

from __future__ import annotations


class Exit:
    """Exit codes of every ``eximhook`` command (docs/operations.md, "Exit codes")."""

    OK = 0  # done; a hook's token is a real answer
    FAILED = 1  # an admin command did not do what was asked (e.g. nothing to unblock)
    USAGE = 64  # bad command line
    DATAERR = 65  # bad namespace or key
    UNAVAILABLE = 69  # store, exim or exipick unusable; a hook printed its fallback token
    SOFTWARE = 70  # unexpected error (logged with a traceback)
    IOERR = 74  # a file could not be written or read (disk full, read-only, permissions)
    TEMPFAIL = 75  # hook watchdog fired, or notifications left queued for later
    CONFIG = 78  # config file missing, unreadable or invalid


class EximhookError(Exception):
    """Base of every error eximhook raises on purpose."""

    exit_code = Exit.SOFTWARE


class UsageError(EximhookError):
    """The command line is wrong."""

    exit_code = Exit.USAGE


class ConfigError(EximhookError):
    """The config file is missing, unreadable or invalid."""

    exit_code = Exit.CONFIG


class BadSubject(EximhookError):
    """A namespace or key that eximhook cannot store or mirror."""

    exit_code = Exit.DATAERR


class StoreUnavailable(EximhookError):
    """The LMDB store could not be opened or written."""

    exit_code = Exit.UNAVAILABLE


class FileError(EximhookError):
    """A file eximhook writes (a mirror file, a state file) could not be written."""

    exit_code = Exit.IOERR


class UnsafePath(FileError):
    """A path that would make root (or whoever runs eximhook) follow a symlink, or write
    a file that is not what it should be, in a directory another user can write."""


class BadMessageId(EximhookError):
    """Not an Exim message id."""

    exit_code = Exit.DATAERR


class NoSuchMessage(EximhookError):
    """The message is not (or no longer) in the queue."""

    exit_code = Exit.FAILED


class NotBlocked(EximhookError):
    """The subject has no block to lift."""

    exit_code = Exit.FAILED


class EximError(EximhookError):
    """exim or exipick is missing or failed."""

    exit_code = Exit.UNAVAILABLE


class BadRequest(EximhookError):
    """A request to the daemon that does not follow its protocol."""

    exit_code = Exit.DATAERR


class ServeError(EximhookError):
    """The daemon cannot listen on its socket, or does not answer on it."""

    exit_code = Exit.UNAVAILABLE


class SetupError(EximhookError):
    """setup-exim4: Debian's config cannot take eximhook as it is (a hook in use,
    update-exim4.conf or exim4 -bV failing); nothing is left changed."""

    exit_code = Exit.CONFIG


class SharedUnavailable(EximhookError):
    """The Redis the relays share (``[store] backend = "redis"``) did not answer."""

    exit_code = Exit.UNAVAILABLE
