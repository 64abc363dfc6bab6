"""How the L2 flush before each timed call changes the attention timings (one process, same inputs).

Usage: AB_CASES="smollm2:8:32768:0.7,llama3-8b:1:4096:0.7" python scripts/gpu_flush_ab.py [MODES]

MODES (comma list, default all):
  write      fill a 256 MB buffer (the benchmark's flush up to 2026-11-26): leaves up to one L2 of dirty lines,
             and a tiny kernel, so the timed kernel's code stays in the SMs' instruction caches
  read       read the buffer with a reduction (the benchmark's flush since then): clean L2, and the reduction's code
             replaces the timed kernel's in the instruction caches, as other kernels of a decode step would
  read+warm  read flush, then one call of the same op on a small case of the same shape: data cold, code warm
Per case and mode: sparse kernel, dense SDPA and a plain streaming read of the sparse bytes (torch.amax), in us
(kernel.bench_attention.Timer, whose flush this compares).
"""
import os
import sys

import torch
import torch.nn.functional as F

from kernel.attention import _cuda_attention
from kernel.bench_attention import WINDOW, Timer, build_fixed_case

MODES = ("write", "read", "read+warm")


class WarmTimer(Timer):
    """Read flush, then one call of `warm` (outside the timed region)."""

    def __init__(self, warm):
        super().__init__(flush="read")
        self.warm = warm

    def flush_l2(self, i: int = 0) -> None:
        super().flush_l2(i)
        self.warm()


def main():
    cases = [tuple(f(x) for f, x in zip((str, int, int, float), c.split(":")))
             for c in os.environ.get("AB_CASES", "smollm2:8:32768:0.7,smollm2:1:4096:0.7").split(",")]
    modes = sys.argv[1].split(",") if len(sys.argv) > 1 else MODES
    plain = {m: Timer(flush=m) for m in ("write", "read") if m in modes}
    warm = {}  # shape -> WarmTimer
    for shape, b, l, s in cases:
        timers = dict(plain)
        if "read+warm" in modes:
            if shape not in warm:
                w = build_fixed_case(shape, 1, 1024, s)
                warm[shape] = WarmTimer(lambda w=w: _cuda_attention(w["q"], w["k_chunk"], w["v_chunk"], w["k_win"],
                                                                     w["v_win"], WINDOW, w["scale"]))
            timers["read+warm"] = warm[shape]
        c = build_fixed_case(shape, b, l, s)
        q4 = c["q"].unsqueeze(2)
        sparse = lambda: _cuda_attention(c["q"], c["k_chunk"], c["v_chunk"], c["k_win"], c["v_win"],  # noqa: E731
                                         WINDOW, c["scale"])
        dense = lambda: F.scaled_dot_product_attention(q4, c["K"], c["V"], scale=c["scale"],  # noqa: E731
                                                       enable_gqa=True)
        nbytes = sum(t.numel() * t.element_size() for t in (c["k_chunk"].values, c["v_chunk"].values,
                                                             c["k_chunk"].bitmap, c["v_chunk"].bitmap))
        x = torch.ones(nbytes // 2, dtype=torch.float16, device="cuda")
        for rnd in range(2):
            for mode in modes:
                t = timers[mode]
                ts, td = t.median_us(sparse), t.median_us(dense)
                tr = t.median_us(lambda: torch.amax(x, dim=0))  # noqa: B023
                print(f"FLUSH {shape:9s} B={b:<3d} L={l:<6d} s={s} {mode:9s} round {rnd}: sparse {ts:7.1f} dense "
                      f"{td:7.1f} speedup {td / ts:5.2f} amax({nbytes / 1e6:.0f} MB) {tr:6.1f} us", flush=True)
        del c, x
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
