#!/usr/bin/env bash
# Install Debian's chromium + chromedriver for the dashboard's browser test
# (tests/server/test_dashboard.py). Playwright's and Selenium's own browser downloads are not
# used: the test drives the system browser. Needs root or sudo; without either it only warns,
# and the browser test is skipped outside CI (in CI, where CI is set, it fails instead).
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "install_browser.sh: not root and no sudo: install chromium and chromium-driver yourself" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: no apt-get: install chromium and its chromedriver yourself" >&2
    exit 0
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
