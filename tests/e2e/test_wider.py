"""Password guessing per wider network: the network key eximhook computes is what the
snippets compute with Exim's ${mask:}."""

from __future__ import annotations

import re

import pytest

from eximhook.config.load import Config
from eximhook.model.subjects import normalize

from ..support.harness import exim_expand
from ..support.marks import needs_exim
from ..support.paths import ROOT

MACROS = ROOT / "exim-snippets" / "macros.conf"
IP_LIMIT, NET_LIMIT = 1, 5  # each /64 blocks at its 2nd guess, the /48 at its 6th


def macro(name: str) -> str:
    """A macro's text as macros.conf defines it."""
    [text] = re.findall(rf"^{name} = (.*)$", MACROS.read_text(), re.M)
    return text


@needs_exim
@pytest.mark.parametrize("address", ["192.0.2.77", "10.1.2.3", "127.0.0.5", "2001:DB8:1:2::5",
                                     "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "fe80::1"])
def test_the_network_key_is_what_the_snippets_compute(address: str) -> None:
    """The daemon derives the net key from the ip key the snippets send; acl-auth.conf
    looks both up in the cdb file. The two must write one network alike, byte for byte."""
    ip_key = exim_expand(macro("EXIMHOOK_IP_KEY").replace("$sender_host_address", address))
    net_key = exim_expand(macro("EXIMHOOK_NET_KEY").replace("$sender_host_address", address))
    assert "/" in net_key and net_key != ip_key
    assert Config().wider("ip", normalize("ip", ip_key)) == ("net", net_key)
    assert normalize("net", net_key) == net_key, "an admin's `show net KEY` finds it as the daemon wrote it"
