"""The configuration: ``load`` reads the TOML file into typed sections, ``hookcache`` is
the counting path's view of them. Here, what every command needs first, hooks included
(so it costs them no module of its own): where the file is, ``--config``, else
``$EXIMHOOK_CONFIG``, else the default."""

from __future__ import annotations

import os

DEFAULT_PATH = "/etc/eximhook/eximhook.toml"
ENV_VAR = "EXIMHOOK_CONFIG"


def resolve_path(option: str | None) -> str:
    """``--config``, else ``$EXIMHOOK_CONFIG``, else the default path."""
    return option or os.environ.get(ENV_VAR) or DEFAULT_PATH
