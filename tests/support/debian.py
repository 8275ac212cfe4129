"""Debian's exim4 configuration, for tests that change it: in a mount namespace of the
test's own (``unshare --mount``), a shell script starts with ``PRIVATE_CONFIG`` and
works on copies of /etc/exim4 and /var/lib/exim4 on tmpfs; the machine's stay as they
are, and nothing is left if the test is killed."""

from __future__ import annotations

PRIVATE_CONFIG = r"""
set -eu
for d in /etc/exim4 /var/lib/exim4; do
  copy=$(mktemp -d); cp -a "$d/." "$copy/"
  mount -t tmpfs -o mode=0755 eximhook-e2e "$d"
  cp -a "$copy/." "$d/"; rm -rf "$copy"
done
"""
