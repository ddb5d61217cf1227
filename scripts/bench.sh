#!/usr/bin/env bash
# The benchmark command: set up .venv with the experiment and peer extras, then run
# `torchmali bench` with the arguments given (e.g. --quick, --device cuda, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh "experiments,peers"
. .venv/bin/activate
exec torchmali bench "$@"
