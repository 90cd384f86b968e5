#!/usr/bin/env bash
# Run every benchmark and write bench/results/*.json|md|png (17–30 minutes on 2 CPU cores).
#   bash bench/run_all.sh            # everything (the GPU benchmark prints "skipped" without CUDA)
#   bash bench/run_all.sh --quick    # smoke-test sizes of the CPU benchmarks only
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" -m bench "$@"
