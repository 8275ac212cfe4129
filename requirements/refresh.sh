#!/usr/bin/env bash
# Refresh the lock files from pyproject.toml (and build.in): the newest releases that fit
# pyproject's ranges, for every Python eximhook supports (--universal: markers kept),
# with the hash of every file PyPI has for each (wheels for 3.11 and 3.13, the sdist).
#   bash requirements/refresh.sh            # then review `git diff requirements/`, run the tests
#   bash requirements/refresh.sh --upgrade-package redis   # move one package, keep the rest
# uv resolves; pip installs (contrib/install.sh). tests/test_lock.py fails when pyproject
# and the locks disagree.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q "uv==0.13.9"
compile() {  # OUT [--extra NAME ...]
    local out=$1; shift
    "$tmp/venv/bin/uv" pip compile --quiet --universal --python-version 3.11 --generate-hashes \
        --custom-compile-command "bash requirements/refresh.sh" \
        "$@" pyproject.toml requirements/build.in -o "requirements/$out"
}
# no argument: everything to the newest release that fits (--upgrade); with
# --upgrade-package NAME, that package only, the other pins kept
[ $# -gt 0 ] || set -- --upgrade
compile runtime.lock "$@"
compile dev.lock --extra test --extra lint "$@"
echo "refresh: requirements/runtime.lock and requirements/dev.lock written"
