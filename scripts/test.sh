#!/usr/bin/env bash
# The test command: set up .venv, then lint and run the whole test suite.
# pytest's exit code is passed through untouched (5 = no test ran is a failure).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh "dev,peers"
. .venv/bin/activate
ruff check src tests benchmarks examples
python -m pytest -n 2 -q "$@"
