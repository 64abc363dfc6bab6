#!/usr/bin/env bash
# ncu pipe counters of the sparse decode split kernel (third launch of `kernel.bench_attention --profile-case`)
# for a few cases: instructions, shared-memory wavefronts and bank conflicts, issue and pipe utilisation, then the
# warp stall reasons (cycles per issued instruction). Usage (GPU machine): bash scripts/gpu_kernel_metrics.sh [shape:B:L:s ...]
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 MUSTAFAR_CACHE=/tmp/mc
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
python -c "from kernel import cuda_ext; cuda_ext.load(); print('built')" || exit 1
M=gpu__time_duration.sum,sm__cycles_elapsed.avg,smsp__inst_executed.sum,sm__inst_executed.avg.per_cycle_active,smsp__issue_active.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__throughput.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,smsp__inst_executed_op_shared_ld.sum,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active
S=""
for r in short_scoreboard mio_throttle long_scoreboard barrier wait math_pipe_throttle lg_throttle not_selected selected \
         dispatch_stall membar branch_resolving no_instruction drain sleeping tex_throttle imc_miss misc; do
  S="$S,smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio"
done
S=${S#,}
CASES=("$@")
[ ${#CASES[@]} -eq 0 ] && CASES=(smollm2:32:32768:0.7 llama3-8b:32:8192:0.7 smollm2:8:32768:0.7)
for c in "${CASES[@]}"; do
  echo "== $c"
  PROFILE_CASE=$c ncu --kernel-name regex:split_kernel --launch-skip 2 --launch-count 1 --metrics $M \
    python -m kernel.bench_attention --profile-case 2>&1 | grep -E "profile case|gpu__|sm__|smsp__|l1tex__|dram__"
  # stall reasons, warp cycles per issued instruction, largest first
  PROFILE_CASE=$c ncu --kernel-name regex:split_kernel --launch-skip 2 --launch-count 1 --metrics $S \
    python -m kernel.bench_attention --profile-case 2>&1 | grep -E "smsp__" | awk '{print $1, $NF}' |
    sed 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' | sort -k2 -g -r
done
