"""Keep files usable by the Exim user when root creates them.

Admin commands run as root, hooks as the Exim user. A store, lock or mirror file that
root creates would lock Exim out, so every file eximhook creates as root is handed to
the owner of the directory it lives in (the Exim spool belongs to the Exim user), or to
the ``store.owner`` setting.
"""

from __future__ import annotations

import os


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
