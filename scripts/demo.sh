#!/usr/bin/env bash
# The README's main-job command: install what is missing, then run the offline demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
