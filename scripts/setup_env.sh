#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install torchmali with the
# extras given as arguments. torch is pinned to the CPU build first: an unpinned torch would pull
# a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[${extras}]"
