"""Storage backends behind one interface (``base.Backend``): ``lmdb`` (embedded, the
default) and ``redis`` (several relays sharing counters and blocks, issue 13)."""
