#!/usr/bin/env bash
# One-call GPU check (docs/benchmarks.md, "One-call GPU check"):
#   bash bench/gpu_check.sh OUTDIR            plugins, kernel tests, a short paper256 run and the speed tables on a GPU
#   bash bench/gpu_check.sh --smoke OUTDIR    the same steps on the CPU at tiny sizes, in a few minutes
# OUTDIR must be new or empty; the exit status is 0 when every step passed. Options: bench/gpu_check.py --help.
set -uo pipefail
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
exec "$PYTHON" "$(dirname "$0")/gpu_check.py" "$@"
