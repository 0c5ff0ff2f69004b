#!/usr/bin/env bash
# Every GPU figure in one call, on a bare GPU machine (issue 14):
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--budget-s S] [--reference-steps N]
#
# Installs the wheels of .whl/ (made here by `make gpu-wheels`, listed in
# benchmarks/gpu_wheels.txt) into /tmp/site without touching the machine's torch
# (--no-deps --target), then runs benchmarks/gpu_check.py with the repository on
# PYTHONPATH. DIR defaults to $OUT, else ./gpu-results. --dry-run installs nothing and
# runs nothing heavy: it checks the commands and the wheel folder (see gpu_check.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
SITE=${E4E_GPU_SITE:-/tmp/site}
WHEELS=.whl

dry_run=0
for arg in "$@"; do
    [[ $arg == --dry-run ]] && dry_run=1
    [[ $arg == --wheels=* ]] && WHEELS=${arg#--wheels=}
done

install=("$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir
         --upgrade --target "$SITE")
if (( dry_run )); then
    echo "[gpu_check.sh] would run: ${install[*]} $WHEELS/*.whl"
else
    shopt -s nullglob
    wheels=("$WHEELS"/*.whl)
    if (( ${#wheels[@]} == 0 )); then
        echo "[gpu_check.sh] error: no wheels in $WHEELS: run 'make gpu-wheels' first" >&2
        exit 2
    fi
    "${install[@]}" "${wheels[@]}"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
