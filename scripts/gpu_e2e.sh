#!/usr/bin/env bash
# One GPU session: GPU cache tests, prune+compress + prefill overhead, end-to-end decode (equal batch and equal
# memory) on a random-initialised Llama-3-8B shape. Results go to ${OUT:-results}.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'triton', triton.__version__)"
python3 -m pytest -q tests/test_gpu_cache.py --tb=line 2>&1 | grep -E "passed|failed|Error|assert" | tail -12
[ -n "${SKIP_COMPRESS:-}" ] || python3 mem_spd_test.py --mode compress --model random:llama3-8b --ttft_len 8192 --out_dir "$OUT" --tag _gpu --no_plots 2>&1 | grep -v Warning | tail -8
python3 mem_spd_test.py --mode e2e --model random:llama3-8b --batch_sizes ${BATCHES:-1,16} --prompt_lens ${LENS:-4096,16384} \
  --gen_len 40 --steps 24 --mem_budget_gb ${BUDGET:-64} --out_dir "$OUT" --tag _gpu 2>&1 | grep -v Warning | tail -30
