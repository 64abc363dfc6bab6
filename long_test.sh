#!/usr/bin/env bash
# Usage: bash long_test.sh K_SPARSITY V_SPARSITY [MODEL] [MODE] [extra pred_long_bench.py args...]
#   MODEL defaults to smollm2 (packaged offline model), MODE to mustafar
#   (mustafar | mustafar-mistral | dense | kernel).
# Runs pred_long_bench.py, then eval_long_bench.py on the run directory it produced.
set -euo pipefail

if [ "$#" -lt 2 ]; then
    echo "usage: bash long_test.sh K_SPARSITY V_SPARSITY [MODEL] [MODE] [extra pred args...]" >&2
    exit 2
fi
K_SPARSITY="$1"
V_SPARSITY="$2"
MODEL="${3:-smollm2}"
MODE="${4:-mustafar}"
shift $(( $# < 4 ? $# : 4 ))

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"

E_FLAG=()
for arg in "$@"; do
    if [ "$arg" = "--e" ]; then E_FLAG=(--e); fi
done

LOG="$(mktemp "${TMPDIR:-/tmp}/long_test.XXXXXX")"
trap 'rm -f "$LOG"' EXIT

"$PYTHON" "$HERE/pred_long_bench.py" \
    --model_name_or_path "$MODEL" --k_sparsity "$K_SPARSITY" --v_sparsity "$V_SPARSITY" \
    --mode "$MODE" "$@" | tee "$LOG"

RUN_DIR="$(grep '^RUN_DIR=' "$LOG" | tail -n 1 | cut -d= -f2-)"
if [ -z "$RUN_DIR" ]; then
    echo "long_test.sh: pred_long_bench.py did not report RUN_DIR" >&2
    exit 1
fi

"$PYTHON" "$HERE/eval_long_bench.py" --model "$RUN_DIR" "${E_FLAG[@]+"${E_FLAG[@]}"}"
