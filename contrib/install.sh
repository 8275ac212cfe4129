#!/usr/bin/env bash
# Install eximhook on Debian 12 or 13 (as root) from this checkout, into a venv: for
# development and the tests (--dev), and for systems where the Debian package
# (contrib/build-deb.sh, docs/install.md) is not wanted. Not beside the package.
#   - exim4-daemon-heavy, python3-venv, openssl; no service is started
#     while installing (policy-rc.d), so a test machine stays quiet
#   - a venv at /opt/eximhook built from Debian's /usr/bin/python3: the Exim user runs
#     the hooks, so the interpreter must not live under /root
#   - eximhook into that venv, with the exact versions and hashes of requirements/*.lock
#     (pip as Debian ships it: no self-upgrade from the network); --dev adds the test
#     and lint tools (requirements/dev.lock)
#   - /usr/local/sbin/eximhook (a link into the venv: on root's PATH), the snippets in
#     /usr/share/eximhook/exim-snippets (replaced whole on every run: an upgrade brings
#     the new ones; their EXIMHOOK_CMD names the venv), /etc/logrotate.d/eximhook
#   - without --dev: /etc/eximhook/eximhook.toml (from contrib/eximhook.toml, if absent),
#     the store and the mirror files (eximhook export), and the systemd units
#     (eximhook-serve.socket/.service, eximhook-maintain.timer: the package's, from
#     debian/, naming the venv) in /etc/systemd/system, not enabled: docs/install.md says when
# Uninstall: docs/install.md.
#
# A mail server without access to PyPI: on a machine that has it (same Debian release
# and architecture),
#   bash contrib/install.sh --download DIR     # wheels of eximhook and its dependencies
# then copy DIR and this checkout over, and there
#   bash contrib/install.sh --offline DIR      # pip installs from DIR only, no index
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dev=false
wheels=""
case "${1:-}" in
    --dev) dev=true ;;
    --offline) wheels=$(cd "${2:?--offline needs the directory --download filled}" && pwd) ;;
    --download)
        out=${2:?--download needs a directory}
        mkdir -p "$out"
        tmp=$(mktemp -d)
        trap 'rm -rf "$tmp"' EXIT
        /usr/bin/python3 -m venv "$tmp/venv"
        # the locked files themselves (checked against their hashes), then eximhook's
        # own wheel, built with the locked setuptools
        "$tmp/venv/bin/pip" download -q --require-hashes -r "$here/requirements/runtime.lock" -d "$out"
        "$tmp/venv/bin/pip" install -q --require-hashes -r "$here/requirements/runtime.lock"
        "$tmp/venv/bin/pip" wheel -q --no-deps --no-build-isolation -w "$out" "$here"
        echo "install: the locked dependencies and eximhook's wheel in $out; install with --offline $out"
        exit 0 ;;
    "") ;;
    *) echo "usage: install.sh [--dev | --download DIR | --offline DIR]" >&2; exit 64 ;;
esac
venv=/opt/eximhook
if dpkg-query -W -f='${Status}\n' eximhook 2>/dev/null | grep -q 'ok installed'; then
    echo "install: the Debian package eximhook is installed: use it, or remove it first (apt remove eximhook)" >&2
    exit 1
fi

packages="exim4-daemon-heavy python3-venv openssl"
# strace: the crash tests kill hooks at chosen system calls; redis-server: the Redis
# backend's tests start their own (tests/support/redis_server.py), never the package's service;
# tinycdb: a cdb reader that is not eximhook's; groff-base: the man pages are checked;
# debootstrap: the trixie and package tests make Debian systems (tests/packaging);
# rspamd: the spam-verdict tests start their own (tests/support/rspamd_server.py)
had_redis=false had_rspamd=false
dpkg-query -W -f='${Status}\n' redis-server 2>/dev/null | grep -q 'ok installed' && had_redis=true
dpkg-query -W -f='${Status}\n' rspamd 2>/dev/null | grep -q 'ok installed' && had_rspamd=true
$dev && packages="$packages strace redis-server tinycdb groff-base debootstrap rspamd"
if [ "$(dpkg-query -W -f='${Status}\n' $packages 2>/dev/null | grep -c 'ok installed')" = "$(echo $packages | wc -w)" ]; then
    echo "install: Debian packages already there"
else
    # No service starts while installing. The guard lives only as long as this script:
    # left behind, it would stop every later apt-get upgrade from restarting services.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# eximhook install.sh: no service starts while it installs packages\nexit 101\n' \
            > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null
    # the packages enable their units (policy-rc.d only kept them from starting): a test
    # machine must not run a Redis or an rspamd nobody asked for; one installed before
    # stays as it was
    if $dev && ! $had_redis && command -v systemctl >/dev/null; then
        systemctl disable --now redis-server.service >/dev/null 2>&1 || true
    fi
    if $dev && ! $had_rspamd && command -v systemctl >/dev/null; then
        systemctl disable --now rspamd.service >/dev/null 2>&1 || true
    fi
fi

[ -x "$venv/bin/python3" ] || /usr/bin/python3 -m venv "$venv"
# Exactly the versions in the lock, each checked against its hash (docs/development.md,
# says how the lock is made and refreshed), then eximhook itself without dependencies,
# built with the locked setuptools: nothing is resolved on the day of the install.
lock="$here/requirements/runtime.lock"
$dev && lock="$here/requirements/dev.lock"
if [ -n "$wheels" ]; then
    "$venv/bin/pip" install -q --no-index --find-links "$wheels" --require-hashes -r "$lock"
    "$venv/bin/pip" install -q --no-index --no-deps --force-reinstall "$wheels"/eximhook-*.whl
else
    "$venv/bin/pip" install -q --require-hashes -r "$lock"
    "$venv/bin/pip" install -q --no-deps --no-build-isolation --force-reinstall "$here"
fi
chmod -R go+rX "$venv"
echo "install: eximhook $("$venv/bin/python3" -I -c 'import eximhook; print(eximhook.__version__)') in $venv"

ln -sfn "$venv/bin/eximhook" /usr/local/sbin/eximhook
share=/usr/share/eximhook
install -d -m 0755 "$share"
rm -rf "$share/exim-snippets.new"
cp -R "$here/exim-snippets" "$share/exim-snippets.new"
# the snippets' default EXIMHOOK_CMD is the package's interpreter and script: this venv's here
sed -i "s|^EXIMHOOK_CMD = /usr/bin/python3 -IS /usr/sbin/eximhook |EXIMHOOK_CMD = $venv/bin/python3 -IS $venv/bin/eximhook |" \
    "$share/exim-snippets.new/macros.conf"
chmod -R go+rX,go-w "$share/exim-snippets.new"
rm -rf "$share/exim-snippets"
mv "$share/exim-snippets.new" "$share/exim-snippets"
[ -d /etc/logrotate.d ] && install -m 0644 "$here/debian/eximhook.logrotate" /etc/logrotate.d/eximhook
echo "install: /usr/local/sbin/eximhook, snippets in $share/exim-snippets"

if ! $dev; then
    install -d -m 0755 /etc/eximhook
    # 0640 root:Debian-exim: it may hold the Redis password (redis_url); the daemon and the hooks read it
    [ -e /etc/eximhook/eximhook.toml ] || install -m 0640 -o root -g Debian-exim "$here/contrib/eximhook.toml" /etc/eximhook/eximhook.toml
    "$venv/bin/eximhook" check-config
    "$venv/bin/eximhook" export
    if [ -d /etc/systemd/system ]; then
        for unit in eximhook-serve.socket eximhook-serve.service eximhook-maintain.service eximhook-maintain.timer \
                eximhook-relaytest.service; do
            sed "s|^ExecStart=/usr/sbin/eximhook |ExecStart=$venv/bin/eximhook |" "$here/debian/eximhook.$unit" \
                > "/etc/systemd/system/$unit"
            chmod 0644 "/etc/systemd/system/$unit"
        done
        if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
        echo "install: systemd units in /etc/systemd/system: systemctl enable --now eximhook-serve.socket eximhook-serve.service eximhook-maintain.timer"
        echo "install: for open-relay probing ([relaytest]), also: systemctl enable --now eximhook-relaytest.service"
    fi
fi
