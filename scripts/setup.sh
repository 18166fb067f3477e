#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for llmgw: system Lua, a Python >= 3.11 virtualenv
# in .venv with llmgw and the extras given as arguments (e.g. "test,real,lint").
# Sourced by demo.sh and test.sh; safe to run again (it only installs what is missing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${1:-}"

# pyenv machines: make every supported interpreter visible (tox runs all three).
if command -v pyenv >/dev/null 2>&1 && [ -z "${PYENV_VERSION:-}" ]; then
  versions=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.(11|12|13)\.[0-9]+$' | sort -V -r | awk -F. '!seen[$1"."$2]++' | sort -V | paste -sd: - || true)
  if [ -n "$versions" ]; then
    export PYENV_VERSION="$versions"
    # tox's interpreter discovery runs pyenv shims without PYENV_VERSION: put the real bin dirs first.
    for v in ${versions//:/ }; do PATH="$(pyenv root)/versions/$v/bin:$PATH"; done
    export PATH
  fi
fi

have_lua() {
  for l in lua5.4 lua5.5 lua5.3 lua lua5.2 lua5.1; do command -v "$l" >/dev/null 2>&1 && return 0; done
  return 1
}
if ! have_lua; then
  echo "llmgw setup: installing the system Lua (lua5.4) needed by python-lua-helper..."
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  if ! { command -v apt-get >/dev/null 2>&1 \
         && $SUDO apt-get update -qq >/dev/null \
         && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq lua5.4 >/dev/null; } || ! have_lua; then
    echo "llmgw setup: could not install Lua; install lua5.4 (or any Lua 5.1-5.5) with your package manager and run this again" >&2
    exit 1
  fi
fi

PY=""
for candidate in python3.13 python3.12 python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 \
     && "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    PY="$candidate"; break
  fi
done
if [ -z "$PY" ]; then
  echo "llmgw setup: Python 3.11 or newer is required (python3 --version says: $(python3 --version 2>&1))" >&2
  exit 1
fi

# python-lua-helper's build hook downloads Lua sources; with the hook off it uses the system Lua.
export HATCH_BUILD_NO_HOOKS=true
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
fi
"$ROOT/.venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
spec="$ROOT"; [ -n "$EXTRAS" ] && spec="$ROOT[$EXTRAS]"
"$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$spec"
