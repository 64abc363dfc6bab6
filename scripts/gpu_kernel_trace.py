"""Phase times of the sparse decode kernel's blocks (GPU measurement build).

Usage: python scripts/gpu_kernel_trace.py SHAPE B L SPARSITY [CALL] [--no-flush | --write-flush]
e.g.   python scripts/gpu_kernel_trace.py llama3-8b 32 8192 0.7

Builds the extension with -DMUSTAFAR_TRACE=1 (a separate build directory), runs the case CALL times (default 3,
each after an L2 flush, like the benchmark's timer) and lets the last launch print, per split-kernel block, the
globaltimer at entry (t0), after the setup barrier, after thread 0 stored its Q fragments, when its first stage
is ready (t1), after its last tile (t2), after the partial write and
the arrival atomic (t3) and at exit (t4, after the row merge for the row's last block). Prints percentiles of each
phase, and per SM (the SMs holding the most split blocks) when its last block finished its tiles and how far apart
its blocks finished. The blocks write their records to a device buffer that the host prints after the launch, so
the traced launch runs undisturbed (globaltimer reads aside). The flush is the benchmark's read flush
(kernel.bench_attention.Timer: clean L2, and the reduction's code in the instruction caches); --write-flush uses the
earlier write flush, --no-flush none (the traced launch then finds the previous launch's data in L2 where it fits,
and its own code in the caches).
"""
import os
import subprocess
import sys


def child(shape, b, l, s, calls, flush_mode):
    import torch

    from kernel.attention import _cuda_attention
    from kernel.bench_attention import WINDOW, Timer, build_fixed_case

    c = build_fixed_case(shape, b, l, s)
    timer = None if flush_mode == "none" else Timer(flush=flush_mode)
    for i in range(calls):
        if timer:
            timer.flush_l2(i)
        torch.cuda.synchronize()
        _cuda_attention(c["q"], c["k_chunk"], c["v_chunk"], c["k_win"], c["v_win"], WINDOW, c["scale"])
        torch.cuda.synchronize()


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


def summarize(lines, label):
    rows = []
    for line in lines:
        if line.startswith("MTRACE"):
            f = line.split()
            rows.append([int(x) for x in f[1:7]] + [int(x) for x in f[7:14]])
    if not rows:
        print(label, "no trace lines")
        return 1
    t_first = min(r[6] for r in rows)
    split = [r for r in rows if r[0] < r[3]]
    win = [r for r in rows if r[0] == r[3]]
    print(f"{label}: {len(rows)} blocks ({len(split)} split, {len(win)} window) on {len({r[4] for r in rows})} SMs")

    def show(name, v):
        if not v:
            return
        v = [x / 1000 for x in v]
        print(f"  {name:34s} p10 {pct(v, .1):7.1f}  p50 {pct(v, .5):7.1f}  p90 {pct(v, .9):7.1f}  max {max(v):7.1f} us")

    show("split block start (t0 - first t0)", [r[6] - t_first for r in split])
    show("setup done (after the first barrier)", [r[11] - r[6] for r in split])
    show("Q fragments stored (thread 0)", [r[12] - r[6] for r in split])
    show("first stage ready (t1 - t0)", [r[7] - r[6] for r in split if r[7]])
    show("tiles (t2 - t1)", [r[8] - r[7] for r in split if r[7]])
    show("partial + arrival (t3 - t2)", [r[9] - r[8] for r in split])
    show("row merge, last block (t4 - t3)", [r[10] - r[9] for r in rows if r[5] == 1])
    show("split block end (t3 - first t0)", [r[9] - t_first for r in split])
    show("window block start (t0 - first t0)", [r[6] - t_first for r in win])
    show("window block first stage (t1 - t0)", [r[7] - r[6] for r in win if r[7]])
    show("window block tiles (t2 - t1)", [r[8] - r[7] for r in win if r[7]])
    show("window block end (t3 - first t0)", [r[9] - t_first for r in win])
    show("row merge end (t4 - first t0)", [r[10] - t_first for r in rows if r[5] == 1])
    # per SM (the SMs holding the most split blocks): when its last split block finished its tiles, and how far apart
    # its blocks finished
    by_sm = {}
    for r in split:
        if r[7]:
            by_sm.setdefault(r[4], []).append(r[8] - t_first)
    if by_sm:
        most = max(len(v) for v in by_sm.values())
        full = [v for v in by_sm.values() if len(v) == most]
        print(f"  {len(full)} SMs with {most} split blocks:")
        show("  last block's tiles end (t2)", [max(v) for v in full])
        show("  spread of its blocks' tile ends", [max(v) - min(v) for v in full])
    return 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), sys.argv[7])
        return 0
    flush_mode = "none" if "--no-flush" in sys.argv else ("write" if "--write-flush" in sys.argv else "read")
    args = [a for a in sys.argv[1:] if a not in ("--no-flush", "--write-flush")]
    if len(args) < 4:
        print(__doc__)
        return 2
    shape, b, l, s = args[:4]
    calls = int(args[4]) if len(args) > 4 else 3
    env = dict(os.environ, MUSTAFAR_NVCC_EXTRA="-DMUSTAFAR_TRACE=1", MUSTAFAR_TRACE_CALL=str(calls),
               PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, __file__, "--child", shape, b, l, s, str(calls), flush_mode]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        print(out.stdout[-2000:], out.stderr[-4000:])
        return out.returncode
    return summarize(out.stdout.splitlines(), f"{shape} B={b} L={l} s={s} ({flush_mode} flush)")


if __name__ == "__main__":
    sys.exit(main())
