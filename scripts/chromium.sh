#!/usr/bin/env bash
# Makes sure Debian's chromium and its chromedriver are installed, for the browser test (tox env "ui").
# Installs them with apt-get when missing (as root, or with sudo); says why in one line if it cannot.
set -euo pipefail
have() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }
if have; then exit 0; fi
echo "llmgw setup: installing chromium and chromium-driver for the browser test..."
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
if ! { command -v apt-get >/dev/null 2>&1 \
       && $SUDO apt-get update -qq >/dev/null \
       && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; } || ! have; then
  echo "llmgw setup: could not install chromium and chromium-driver; install them with your package manager (Debian: apt-get install chromium chromium-driver) and run this again" >&2
  exit 1
fi
