#!/usr/bin/env bash
# On a fresh Debian 12 or 13 machine, as root: install eximhook and Exim, then run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash contrib/install.sh --dev
exec /opt/eximhook/bin/python contrib/demo.py
