#!/usr/bin/env bash
# The README's test command: install what is missing, lint (pyproject.toml's rules), then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest tests "$@"
