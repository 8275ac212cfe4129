#!/usr/bin/env bash
# Build eximhook's Debian package on Debian 12 or 13, as root:
#   bash contrib/build-deb.sh [OUTDIR]      # default: dist/
# It installs the build dependencies debian/control names (from Debian's archive), builds
# in a copy of this tree (so the checkout gets no build files and dpkg-buildpackage's
# "../" is a temp dir), runs lintian, and leaves eximhook_VERSION_all.deb in OUTDIR (pure
# Python on Debian's own python3-* packages; build it on the release it is for).
# Install it with: apt install ./dist/eximhook_*_all.deb
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$here/dist}" && cd "${1:-$here/dist}" && pwd)
# Debian's tools and interpreter only: a python3 of one's own earlier on PATH (pyenv,
# a venv) would build against the wrong Python
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive

apt-get update -qq
apt-get build-dep -y -qq "$here" >/dev/null
apt-get install -y -qq --no-install-recommends lintian >/dev/null

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/eximhook"
# what git tracks (a checkout), else the tree without what builds and tests leave
if git -C "$here" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$here" ls-files -z --cached --others --exclude-standard \
        | tar -C "$here" --null -T - -cf - | tar -xf - -C "$work/eximhook"
else
    tar -C "$here" --exclude=./dist --exclude=./build --exclude='*.egg-info' --exclude=__pycache__ \
        --exclude=.pybuild --exclude=.hypothesis --exclude=.mypy_cache --exclude=.pytest_cache -cf - . \
        | tar -xf - -C "$work/eximhook"
fi
(cd "$work/eximhook" && dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) || { tail -40 "$work/build.log"; exit 1; }
version=$(dpkg-parsechangelog -l "$here/debian/changelog" -S Version)
lintian --display-info --fail-on error "$work/eximhook_${version}_all.deb"
mv "$work/eximhook_${version}_all.deb" "$out/"
echo "build-deb: $out/eximhook_${version}_all.deb"
