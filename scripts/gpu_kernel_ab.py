"""A/B timing of the sparse decode kernel on a few cases (one process = one build/env setting).

Usage: python scripts/gpu_kernel_ab.py LABEL  -> prints one line per case: label, case, sparse us, dense us.
Dense SDPA is timed in the same process (same inputs) so lines from different processes can be compared by ratio.
"""
import os
import sys

import torch
import torch.nn.functional as F

from kernel.bench_attention import SHAPES, WINDOW, Timer, build_fixed_case, plan_info, rel_err
from kernel.format import Chunk

CASES = [("llama3-8b", 32, 8192, 0.7), ("llama3-8b", 32, 8192, 0.5), ("llama2-7b", 8, 8192, 0.7),
         ("smollm2", 8, 32768, 0.7), ("llama3-8b", 1, 4096, 0.7), ("llama3-8b", 1, 131072, 0.7)]
if os.environ.get("AB_CASES"):  # e.g. "llama3-8b:8:32768:0.7:10,llama2-7b:1:131072:0.7:20:2" (then: splits, stages;
    # 0 or absent = automatic)
    CASES = [tuple(f(x) for f, x in zip((str, int, int, float, int, int), c.split(":")))
             for c in os.environ["AB_CASES"].split(",")]


def main():
    from kernel.attention import _cuda_attention, torch_sparse_decode_attention

    def _rows(ch):  # batch row 0 of a chunk, values as float32
        return Chunk(ch.bitmap[:1], ch.values[:1].float(), None if ch.offsets is None else ch.offsets[:1], ch.k)

    label = sys.argv[1] if len(sys.argv) > 1 else "run"
    timer = Timer(reps=30)
    for case in CASES:
        shape, b, l, s = case[:4]
        splits = case[4] if len(case) > 4 else 0
        stages = case[5] if len(case) > 5 else 0
        c = build_fixed_case(shape, b, l, s)
        hq, h, d = SHAPES[shape]
        t = timer.median_us(lambda: _cuda_attention(c["q"], c["k_chunk"], c["v_chunk"], c["k_win"], c["v_win"],
                                                    WINDOW, c["scale"], num_splits=splits, num_stages=stages))
        out = _cuda_attention(c["q"], c["k_chunk"], c["v_chunk"], c["k_win"], c["v_win"], WINDOW, c["scale"],
                              num_splits=splits, num_stages=stages)
        ref = torch_sparse_decode_attention(c["q"][:1].float(), _rows(c["k_chunk"]), _rows(c["v_chunk"]),
                                            c["k_win"][:1].float(), c["v_win"][:1].float(), WINDOW, c["scale"])[0]
        err = rel_err(out[:1].float(), ref)
        q4 = c["q"].unsqueeze(2)
        td = timer.median_us(lambda: F.scaled_dot_product_attention(q4, c["K"], c["V"], scale=c["scale"],
                                                                    enable_gqa=True))
        print(f"AB {label:12s} {shape:10s} B={b:<3d} L={l:<7d} s={s} sparse {t:8.1f} us dense {td:8.1f} us "
              f"speedup {td / t:5.2f} err {err:.1e} plan {plan_info(c['q'], c['k_chunk'], splits, stages)}", flush=True)
        del c
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
