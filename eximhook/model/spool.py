"""The spool-space guard's values (``[spool]``): where Exim's spool is, what a new block
records of its free space, and the threshold the mirror's cdb file holds for the ACL
snippets. What the guard does with them is ``engine.spool``."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # the hooks import this on a trip: typing costs ~10 ms
if TYPE_CHECKING:
    from typing import Any

# The cdb key of the threshold: no subject key has this namespace.
LOW_KEY = b"eximhook:spool-low"


class Guard:
    """``[spool]``: where Exim's spool is, and when a blocked subject's mail is refused."""

    __slots__ = ("directory", "floor", "fraction")

    def __init__(self, directory: str, floor: int, fraction: float) -> None:
        self.directory, self.floor, self.fraction = directory, floor, fraction

    def free(self) -> int | None:
        """Free space in KiB as Exim's ``$spool_space`` counts it (blocks available to
        unprivileged users); None if the directory cannot be read."""
        try:
            st = os.statvfs(self.directory)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize // 1024

    def at_block(self) -> dict[str, int | None]:
        """What a new block records: the free space now, and ``fraction`` of it, below
        which its mail is refused (the floor is the config's now: see ``threshold``)."""
        free = self.free()
        return {"spool_free": free, "spool_low": int(self.fraction * free) if free is not None else 0}


def threshold(blocks: list[dict[str, Any]], floor: int) -> int:
    """The free space (KiB) below which blocked subjects' mail is refused: ``floor``
    (``[spool] floor`` as the store last heard it: ``Store.set_spool_floor``), or the
    highest any current block recorded, whichever is higher."""
    return max([floor, *(int(b.get("spool_low") or 0) for b in blocks)])
