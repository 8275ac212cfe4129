"""Whether Exim's authenticators carry a login block (password spraying, docs/signals.md)
as it must be wired: ``EXIMHOOK_ALLOWED_PLAIN`` or ``_LOGIN`` beside the password
check. Alone in a plaintext authenticator's ``server_condition`` it *is* the check, and
any password logs in; in no authenticator, a login block refuses nothing. Neither shows
until someone tries, so ``eximhook check-config`` reads ``exim -bP authenticators``."""

from __future__ import annotations

# the login block's lookup, which every EXIMHOOK_ALLOWED_* expands to (macros.conf)
SIGNATURE = "${lookup{login:"
# drivers that check the password themselves, before server_condition (Exim's spec,
# "The dovecot authenticator", "The cyrus_sasl authenticator"): the macro alone is right
CHECKS_ITSELF = ("dovecot", "cyrus_sasl")
# server_* options that say nothing of whether the authenticator serves clients
_NOT_SERVING = ("server_advertise_condition", "server_debug_print", "server_mail_auth_condition", "server_prompts",
                "server_set_id")


def parse(text: str) -> dict[str, dict[str, str]]:
    """``exim -bP authenticators``: each authenticator's options by name (a boolean
    option as its name, or ``no_`` and its name, with an empty value)."""
    found: dict[str, dict[str, str]] = {}
    options: dict[str, str] = {}
    for line in text.splitlines():
        if line.endswith(" authenticator:") and " = " not in line:
            options = found.setdefault(line.removesuffix(" authenticator:"), {})
        elif line.strip():
            name, _, value = line.partition(" = ")
            options[name.strip()] = value.strip()
    return found


def serving(options: dict[str, str]) -> bool:
    """Does the authenticator serve clients (a server option set)?"""
    return any(value for name, value in options.items() if name.startswith("server_") and name not in _NOT_SERVING)


def problems(found: dict[str, dict[str, str]], allowed: set[str], login_enforced: bool) -> list[str]:
    """What is wrong with the wiring: an authenticator whose ``server_condition`` is one
    of the ``allowed`` macros' values alone, where its driver does not check the password
    itself; and, with the login limit enforced, no serving authenticator that checks it."""
    out = []
    for name, options in found.items():
        driver = options.get("driver", "")
        if driver not in CHECKS_ITSELF and options.get("server_condition", "") in allowed:
            out.append(f"warning: authenticator {name} ({driver}): its server_condition is EXIMHOOK_ALLOWED_PLAIN or "
                       "_LOGIN alone, which replaces its password check: ANY password logs in. Put it beside the "
                       "check: ${if and{{bool{EXIMHOOK_ALLOWED_PLAIN}}{YOUR CHECK}}{1}{0}} (docs/signals.md)")
    servers = [name for name, options in found.items() if serving(options)]
    if login_enforced and servers and not any(SIGNATURE in found[name].get("server_condition", "")
                                              for name in servers):
        out.append(f"warning: [limits.login.authfail] or [limits.all.authfail] is enforced, but no authenticator "
                   f"({', '.join(servers)}) checks EXIMHOOK_ALLOWED_PLAIN or _LOGIN: a login block refuses nothing "
                   "(docs/signals.md)")
    return out
