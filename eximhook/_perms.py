"""Keep files usable by the Exim user when root creates them.

Admin commands run as root, hooks as the Exim user. A store, lock or mirror file that
root creates would lock Exim out, so every file eximhook creates as root is handed to
the owner of the directory it lives in (the Exim spool belongs to the Exim user), or to
the ``store.owner`` setting. ``replace_files`` writes files other processes read (the
mirror, the counters' boot stamp, the health state) so that they are never seen half
written, and hands them over on the way.
"""

from __future__ import annotations

import os

TMP = ".tmp."  # PATH.tmp.PID: replace_files' temp files, which mirror.temp_files recognises


def resolve_owner(spec: str | None, directory: str) -> tuple[int, int]:
    """(uid, gid) from ``user[:group]``, else from ``directory`` or its parent."""
    if spec:
        import grp
        import pwd

        user, _, group = spec.partition(":")
        pw = pwd.getpwnam(user)
        return pw.pw_uid, grp.getgrnam(group).gr_gid if group else pw.pw_gid
    path = directory
    while not os.path.isdir(path):
        path = os.path.dirname(path) or "."
    st = os.stat(path)
    return st.st_uid, st.st_gid


def hand_over(paths: list[str], owner: tuple[int, int]) -> None:
    """chown ``paths`` to ``owner`` when running as root; no-op for anyone else."""
    if os.geteuid() != 0:
        return
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if (st.st_uid, st.st_gid) != owner:
            os.lchown(path, *owner)


def replace_files(files: list[tuple[str, bytes]], owner: tuple[int, int] | None = None,
                  mode: int | None = None) -> None:
    """Write every file to a temp file (``PATH.tmp.PID``) and fsync it, then rename them
    all, one right after the other: a reader sees the files change as close to together
    as renames allow, and never half a file. Root hands each to ``owner`` first; ``mode``,
    if given, is set whatever the umask; on a failure no temp file is left."""
    temps: list[str] = []
    try:
        for path, data in files:
            tmp = f"{path}{TMP}{os.getpid()}"
            temps.append(tmp)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
            if mode is not None:
                os.fchmod(fd, mode)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:  # a write error names no file: name the one it was
                raise OSError(exc.errno, exc.strerror, path) from exc
            if owner is not None:
                hand_over([tmp], owner)
        for tmp, (path, _) in zip(temps, files, strict=True):
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise
