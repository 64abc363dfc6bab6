#!/usr/bin/env bash
# Profile the sparse decode split kernel on one large case (llama3-8b layer, B=32, L=8192, 70 %):
# SASS of the split kernel, opcode histogram, ncu details and per-instruction source counters. Writes under $OUT.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 MUSTAFAR_CACHE=${MUSTAFAR_CACHE:-/tmp/mc}
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
python -c "from kernel import cuda_ext; cuda_ext.load(); print('built')" || exit 1
SO=$(ls $MUSTAFAR_CACHE/torch_ext/*/*.so | head -1)
cuobjdump -sass $SO | gzip > $OUT/sass_all.txt.gz  # every kernel of the extension
python -m kernel.bench_attention --sass "$SO" | head -60
ncu --kernel-name regex:split_kernel --launch-skip 2 --launch-count 1 --set full --import-source no \
    -o $OUT/prof -f python -m kernel.bench_attention --profile-case > $OUT/ncu_run.log 2>&1
tail -3 $OUT/ncu_run.log
ncu -i $OUT/prof.ncu-rep --page details > $OUT/details.txt 2>&1
ncu -i $OUT/prof.ncu-rep --page source --csv --print-source sass > $OUT/source_sass.csv 2>&1 || true
grep -E "Duration|Registers Per|Achieved Occupancy|Executed Ipc A|Issue Slots Busy|L1/TEX Hit|Shared Memory|Stall|Warp Cycles Per Issued|No Eligible|Theoretical Occ|Block Limit" $OUT/details.txt | head -60
ls -la $OUT
