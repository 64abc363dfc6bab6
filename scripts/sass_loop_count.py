"""Static instruction count of the sparse decode kernel's main loop (CPU machine, no GPU needed).

Compiles kernel/csrc/sparse_decode.cu for sm_90 with the extension's flags (plus any -D... given), disassembles it
(kernel.bench_attention.sass_functions: cuobjdump beside nvcc, on PATH, or Triton's copy), finds the fast-path main
loop of one split-kernel instance (the smallest backward branch whose body holds D / 8 HMMA per 16-token sub-tile of
a stage) and prints its instructions by category: the gather parts (bit test, predicated LDS.U16, pointer advance,
pair pack) and the opcodes of everything else. The loop body also holds rarely taken paths (lazy-max rescale,
part-filled sub-tiles, the stage issue of thread 0), so compare variants by difference; with --ncu CSV (the
per-instruction source counters of scripts/gpu_kernel_profile.sh, `--page source --csv --print-source sass`, of the
same source) it prints the executed counts per sub-tile instead (the offsets match where the code is the same).

Usage: python scripts/sass_loop_count.py [--kernel D,TB] [--top N] [--ncu CSV.gz --nsub N] [-DNAME=VALUE ...]
e.g.   python scripts/sass_loop_count.py --kernel 64,128 -DMUSTAFAR_LAZY_MAX=0
"""
import argparse
import collections
import csv
import gzip
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from kernel.bench_attention import sass_functions  # noqa: E402
from kernel.cuda_ext import find_nvcc  # noqa: E402
SRC = os.path.join(ROOT, "kernel", "csrc", "sparse_decode.cu")


def kernel_sass(defines, needle):
    """(offset, instruction text) of the first kernel whose mangled name contains needle, in a fresh sm_90 build"""
    with tempfile.TemporaryDirectory() as d:
        cubin = os.path.join(d, "k.cubin")
        nvcc = find_nvcc()
        if nvcc is None:
            sys.exit("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
        cmd = [nvcc, "-O3", "--use_fast_math", "-std=c++17", "-gencode=arch=compute_90,code=sm_90", "-cubin",
               "-o", cubin, *defines, SRC]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            sys.exit(r.stderr[-3000:])
        funcs = sass_functions(cubin)
    for name, ins in funcs.items():
        if needle in name:
            return ins
    sys.exit(f"no function matching {needle}")


def fast_loop(ins, hmma):
    """body of the smallest backward branch whose body holds exactly `hmma` HMMA instructions"""
    best = None
    for a, t in ins:
        m = re.search(r"BRA (0x[0-9a-f]+)", t)
        if m and int(m.group(1), 16) < a:
            tgt = int(m.group(1), 16)
            body = [x for x in ins if tgt <= x[0] <= a]
            if sum("HMMA" in x[1] for x in body) == hmma and (best is None or len(body) < len(best)):
                best = body
    if best is None:
        sys.exit("main loop not found")
    return best


def category(t):
    t = re.sub(r"^@!?U?P\w+ ", "@p ", re.sub(r"\.reuse", "", t))
    if re.search(r"LOP3\.LUT P\d", t):
        return "gather: bit test"
    if t.startswith("@p LDS.U16"):
        return "gather: LDS.U16"
    if re.match(r"@p (VIADD|IADD3) R\d+, R\d+, 0x2", t):
        return "gather: pointer advance"
    if re.search(r"IMAD R\d+, R\d+, 0x10000, R\d+|LEA R\d+, R\d+, R\d+, 0x10", t):
        return "gather: pack"
    if re.search(r"IMAD\.MOV\.U32 R\d+, RZ, RZ, R\d+$", t) or re.match(r"MOV R\d+, R\d+$", t):
        return "register copy"
    words = t.split()
    return words[1] if words[0] == "@p" else words[0]


def ncu_counts(path):
    rows = list(csv.reader(gzip.open(path, "rt") if path.endswith(".gz") else open(path)))
    hdr, data = rows[1], rows[2:]
    ie, ad = hdr.index("Instructions Executed"), hdr.index("Address")
    pts = []
    for r in data:
        try:
            pts.append((int(r[ad], 16), int(r[ie])))
        except ValueError:
            continue
    base = min(a for a, _ in pts)
    return {a - base: n for a, n in pts}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", default="64,128", help="head_dim,tokens per stage of the fp16 fast kernel")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--ncu", help="ncu source CSV (.csv or .csv.gz) of the same kernel")
    ap.add_argument("--nsub", type=float, default=0, help="16-token sub-tiles of the profiled launch (with --ncu)")
    args, defines = ap.parse_known_args()
    d, tb = (int(x) for x in args.kernel.split(","))
    needle = f"split_kernelILi{d}ELb0ELb0ELb1ELi2ELi{tb}E"
    ins = kernel_sass(defines, needle)
    body = fast_loop(ins, (d // 8) * (tb // 64))  # S and O^T mma: D / 16 each per 16-token sub-tile
    weights = ncu_counts(args.ncu) if args.ncu else None
    per = collections.Counter()
    for a, t in body:
        per[category(t)] += (weights.get(a, 0) / args.nsub) if weights else 1
    total = sum(per.values())
    unit = "executed per sub-tile" if weights else f"static, {tb // 64} sub-tiles per stage"
    print(f"{needle} {' '.join(defines)}: main loop {len(body)} instructions; {total:.1f} {unit}")
    gather = sum(v for k, v in per.items() if k.startswith("gather"))
    print(f"  gathers {gather:.1f}, other {total - gather:.1f}")
    for k, v in per.most_common(args.top):
        print(f"  {k:26s} {v:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
