"""Open-relay probing of customer hosts (seed 003, Jim Segrave's design).

A customer host that sends through us is asked to relay a signed test message back to
our probe mailbox. Relayed back: the host is an open relay, BLOCK, listed in
``blocked.nets`` (which Exim's RCPT ACL reads natively on every RCPT), its postmaster
and the abuse desk are told. Refused or bounced: OK. Nothing heard for
``unknown_after``: OK (the host drops relay attempts).

``hosts`` (which addresses are customers, whom to tell), ``signing`` (the HMAC token),
``table`` (the relay-test records in the store), ``nets`` (``blocked.nets``),
``message`` (the probe and the customer's mail), ``probe`` (the SMTP client),
``receive`` (returned probes and bounces), ``checks`` (``check-config``); the mainlog
watcher that decides whom to probe: ``logline`` (a ``<=`` line's client address),
``follow`` (the log, across rotations and restarts), ``watch`` (the scheduler).
"""
