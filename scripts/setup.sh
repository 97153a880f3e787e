#!/usr/bin/env bash
# Installs everything the project needs on a fresh machine (idempotent, fast when already installed):
# torch/torchvision pinned as a pair first (see README), then the package with its dev extras, then
# Debian's chromium for the headless HTML-report checks (skipped where apt is unavailable).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e ".[dev]"
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "setup: chromium not installed; HTML screenshot tests will skip" >&2
fi
