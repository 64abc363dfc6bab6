"""Latency, throughput and memory of Mustafar against a strong dense baseline.

Modes (all flags, no source edits):
  attention  decode-attention kernel: dense SDPA vs the sparse kernel, bytes, GB/s, 1/rho ceiling
  compress   prune+compress throughput (dense GB/s in) and the prefill overhead of pruning
  e2e        real decoding with a model (random weights of a real shape, or a real model): time to first token,
             decode tokens/s, peak memory and allocator-measured KV bytes, dense (StaticCache + SDPA) vs Mustafar;
             with --mem_budget_gb also the equal-memory comparison (largest batch each fits, throughput there)
Every run prints a table and writes JSON + markdown (+ PNG plots) under --out_dir with GPU, versions, date, command.
On a CPU the defaults shrink to a smoke test and the files say so.
"""
from __future__ import annotations

import argparse
import gc
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["attention", "compress", "e2e", "all"], default="all")
    p.add_argument("--model", default=None, help="e2e/compress model: random:<shape> (default random:llama3-8b on "
                   "GPU, random:smollm2 on CPU), a hub id, a local dir or smollm2")
    p.add_argument("--k_method", default="Kt_Mag")
    p.add_argument("--v_method", default="Vt_Mag")
    p.add_argument("--sparsities", default="0.5,0.7", help="comma list, applied to K and V")
    p.add_argument("--batch_sizes", default=None, help="comma list (e2e)")
    p.add_argument("--prompt_lens", default=None, help="comma list of context lengths (e2e)")
    p.add_argument("--gen_len", type=int, default=None, help="new tokens per sequence (e2e)")
    p.add_argument("--steps", type=int, default=None, help="decode steps timed (default min(gen_len, 32))")
    p.add_argument("--mem_budget_gb", type=float, default=None, help="e2e equal-memory mode: budget for weights+KV")
    p.add_argument("--ttft_len", type=int, default=None, help="prompt length of the time-to-first-token test")
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--backend", default="compressed", choices=["compressed", "simulated"])
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--attn_shapes", default="llama3-8b,llama2-7b,smollm2")
    p.add_argument("--attn_batches", default=None)
    p.add_argument("--attn_lengths", default=None)
    p.add_argument("--out_dir", default="results")
    p.add_argument("--tag", default="", help="suffix for result file names")
    p.add_argument("--no_plots", action="store_true")
    args = p.parse_args(argv)
    try:
        args.sparsity_list = [float(s) for s in args.sparsities.split(",")]
    except ValueError:
        p.error(f"--sparsities must be comma-separated numbers, got {args.sparsities!r}")
    for s in args.sparsity_list:
        if not 0 <= s < 1:
            p.error(f"--sparsities values must be in [0, 1), got {s}")
    from models.methods import K_METHODS, V_METHODS
    if args.k_method not in K_METHODS:
        p.error(f"--k_method {args.k_method!r} unknown; valid: {', '.join(K_METHODS)}")
    if args.v_method not in V_METHODS:
        p.error(f"--v_method {args.v_method!r} unknown; valid: {', '.join(V_METHODS)}")
    return args


def ints(s):
    return [int(x) for x in s.split(",")] if s else None


def run_attention(args, gpu, meta):
    if not gpu:
        print("attention mode: the CUDA kernel benchmark needs a GPU; the CPU path is the PyTorch reference "
              "(see tests/test_attention_dispatch.py). Skipped.", file=sys.stderr)
        return []
    from kernel.bench_attention import run_benchmark

    shapes = args.attn_shapes.split(",")
    batches = ints(args.attn_batches) or [1, 8, 32]
    lengths = ints(args.attn_lengths) or [4096, 8192, 32768]
    cases = [dict(shape=sh, B=b, L=l, sparsity=s) for sh in shapes for b in batches for l in lengths
             for s in args.sparsity_list]
    if not args.attn_lengths:
        cases += [dict(shape=sh, B=1, L=131072, sparsity=s) for sh in shapes for s in args.sparsity_list]
    return run_benchmark(cases, args.out_dir, command=meta["command"])


def run_compress(args, gpu, meta, model=None):
    import torch

    from kernel.compress import compress_impl, prune_compress_topk
    from kernel.format import kept_per_token
    from models.bench_e2e import time_to_first_token
    from models.cache import MustafarConfig

    dev = "cuda" if gpu else "cpu"
    dtype = getattr(torch, args.dtype)
    b, h, l, d = (32, 8, 8192, 128) if gpu else (2, 2, 512, 64)
    auto = compress_impl(dev, dtype, d)
    impls = [auto]
    if gpu:  # the CUDA and the Triton kernel in the same run where both exist (what "auto" picks is marked)
        impls = [i for i, ok in (("cuda", auto == "cuda"), ("triton", compress_impl(dev) == "triton")) if ok] or impls
    rows = []
    for s in args.sparsity_list:
        k = kept_per_token(d, s)
        x = [torch.randn(b, h, l, d, device=dev, dtype=dtype) for _ in range(2)]
        for impl in impls:
            for _ in range(2):
                prune_compress_topk(x[0], k, impl=impl)
            if gpu:
                torch.cuda.synchronize()
                st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                ts = []
                for _ in range(20):
                    st.record()
                    prune_compress_topk(x[0], k, impl=impl)
                    prune_compress_topk(x[1], k, impl=impl)
                    en.record()
                    torch.cuda.synchronize()
                    ts.append(st.elapsed_time(en))
                ms = sorted(ts)[len(ts) // 2]
            else:
                import time
                t0 = time.perf_counter()
                prune_compress_topk(x[0], k, impl=impl)
                prune_compress_topk(x[1], k, impl=impl)
                ms = (time.perf_counter() - t0) * 1e3
            dense_bytes = 2 * x[0].numel() * x[0].element_size()
            rows.append({"what": f"prune+compress K and V, B={b} H={h} L={l} D={d}", "sparsity": s, "k": k,
                         "impl": impl + (" (auto)" if impl == auto and len(impls) > 1 else ""), "ms": ms,
                         "ms_per_side": ms / 2, "dense_GB_per_s_in": dense_bytes / ms / 1e6})
    if model is not None:
        plen = args.ttft_len or (8192 if gpu else 256)
        dense = time_to_first_token(model, None, plen)
        for s in args.sparsity_list:
            cfg = MustafarConfig(k_method=args.k_method, v_method=args.v_method, k_sparsity=s, v_sparsity=s,
                                 window=args.window, backend=args.backend)
            t = time_to_first_token(model, cfg, plen)
            rows.append({"what": f"prefill (TTFT) {plen} tokens, B=1", "sparsity": s, "impl": args.backend,
                         "ms": t * 1e3, "dense_ms": dense * 1e3, "overhead_pct": 100 * (t - dense) / dense})
    return rows


def _label(cfg):
    if cfg is None:
        return "dense (StaticCache)"
    if cfg.k_method == "none" and cfg.v_method == "none":
        return "dense (preallocated)"
    return f"{cfg.k_method}{cfg.k_sparsity}/{cfg.v_method}{cfg.v_sparsity}"


def run_e2e(args, gpu, meta, model):
    from models.bench_e2e import gpu_warmup, max_batch_in_budget, measure_decode
    from models.cache import MustafarConfig

    if gpu:
        gpu_warmup("cuda")

    batches = ints(args.batch_sizes) or ([1, 8, 16] if gpu else [1, 2])
    lens = ints(args.prompt_lens) or ([4096, 16384] if gpu else [256])
    gen = args.gen_len or (256 if gpu else 8)
    rows, mem_rows = [], []
    # Two dense baselines: transformers' StaticCache (+ SDPA with the explicit mask a static cache needs), and a
    # preallocated dense cache through the same hook (method "none": SDPA on exactly the filled tokens, no mask, so
    # PyTorch picks its fused GQA kernels). Speedups are reported against the faster of the two.
    strong = MustafarConfig(k_method="none", v_method="none", k_sparsity=0.0, v_sparsity=0.0, window=args.window,
                            backend="simulated")
    cfgs = [None, strong] + [MustafarConfig(k_method=args.k_method, v_method=args.v_method, k_sparsity=s,
                                            v_sparsity=s, window=args.window, backend=args.backend)
                             for s in args.sparsity_list]
    for l in lens:
        for b in batches:
            dense_tps = dense_gpu = None
            for cfg in cfgs:
                gc.collect()
                try:
                    r = measure_decode(model, cfg, b, l, gen, steps=args.steps)
                except Exception as e:  # out of memory for this batch: record and go on
                    if "out of memory" not in str(e).lower():
                        raise
                    r = {"method": _label(cfg), "batch": b,
                         "context": l, "error": "out of memory"}
                    import torch
                    torch.cuda.empty_cache()
                if cfg is None or cfg.k_method == "none":
                    dense_tps = max(dense_tps or 0, r.get("decode_tok_s") or 0) or None
                    if r.get("gpu_ms_per_step"):
                        dense_gpu = min(dense_gpu or float("inf"), r["gpu_ms_per_step"])
                else:
                    if dense_tps and r.get("decode_tok_s"):
                        r["speedup_vs_dense"] = r["decode_tok_s"] / dense_tps
                    if dense_gpu and r.get("gpu_ms_per_step"):
                        r["gpu_time_speedup_vs_dense"] = dense_gpu / r["gpu_ms_per_step"]
                rows.append(r)
                print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    if args.mem_budget_gb and gpu:
        budget = args.mem_budget_gb * 2**30
        for l in lens:
            dense_tps = None
            for cfg in cfgs:
                gc.collect()
                bmax, per_seq, base = max_batch_in_budget(model, cfg, l, gen, budget)
                r = {"method": _label(cfg), "context": l, "budget_GiB": args.mem_budget_gb, "max_batch": bmax,
                     "bytes_per_seq": per_seq, "base_bytes": base}
                if bmax:
                    m = measure_decode(model, cfg, bmax, l, gen, steps=args.steps)
                    r.update(decode_tok_s=m["decode_tok_s"], step_ms=m["step_ms_median"], peak_bytes=m["peak_bytes"])
                    if cfg is None or cfg.k_method == "none":
                        dense_tps = max(dense_tps or 0, m["decode_tok_s"])
                    elif dense_tps:
                        r["throughput_vs_dense"] = m["decode_tok_s"] / dense_tps
                mem_rows.append(r)
                print(r, flush=True)
    return rows, mem_rows


def plots(out_dir, tag, e2e_rows, attn_rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import os

    paths = []
    ok = [r for r in e2e_rows if r.get("decode_tok_s")]
    if ok:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for method in sorted({r["method"] for r in ok}):
            for l in sorted({r["context"] for r in ok}):
                rs = sorted([r for r in ok if r["method"] == method and r["context"] == l], key=lambda r: r["batch"])
                axes[0].plot([r["batch"] for r in rs], [r["decode_tok_s"] for r in rs], "o-", label=f"{method} L={l}")
                axes[1].plot([r["batch"] for r in rs], [r["kv_bytes_allocator"] / 2**30 for r in rs], "o-",
                             label=f"{method} L={l}")
        axes[0].set(xlabel="batch", ylabel="decode tokens/s", title="decode throughput")
        axes[1].set(xlabel="batch", ylabel="KV cache GiB (allocator)", title="KV memory")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        p = os.path.join(out_dir, f"e2e{tag}.png")
        fig.savefig(p, dpi=110)
        paths.append(p)
    ok = [dict(r, batch=r["B"], length=r["L"]) for r in (attn_rows or []) if r.get("sparse_us")]
    if ok:
        fig, ax = plt.subplots(figsize=(7, 4))
        for shape in sorted({r["shape"] for r in ok}):
            for s in sorted({r["sparsity"] for r in ok}):
                rs = sorted([r for r in ok if r["shape"] == shape and r["sparsity"] == s],
                            key=lambda r: r["batch"] * r["length"])
                x = [r["batch"] * r["length"] for r in rs]
                ax.plot(x, [r["dense_us"] / r["sparse_us"] for r in rs], "o-", label=f"{shape} s={s}")
                ax.plot(x, [1 / r["rho"] for r in rs], ":", color=ax.lines[-1].get_color())
        ax.set_xscale("log")
        ax.axhline(1, color="k", lw=0.5)
        ax.set(xlabel="batch x length (tokens)", ylabel="speedup over dense SDPA",
               title="sparse decode attention (dotted: 1/rho ceiling)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = os.path.join(out_dir, f"attention{tag}.png")
        fig.savefig(p, dpi=110)
        paths.append(p)
    return paths


def main(argv=None):
    args = parse_args(argv)
    import torch

    from models.results import env_info, markdown_table, write_results

    gpu = torch.cuda.is_available()
    meta = env_info()
    if not gpu:
        meta["note"] = "CPU smoke run with small shapes: numbers say nothing about GPU speed"
        print("No CUDA GPU: running small CPU smoke shapes.", file=sys.stderr)
    tag = args.tag
    attn_rows, e2e_rows, mem_rows, comp_rows = [], [], [], []
    model = None
    if args.mode in ("e2e", "compress", "all"):
        from models.loading import load_model

        name = args.model or ("random:llama3-8b" if gpu else "random:smollm2")
        model, _ = load_model(name, dtype=args.dtype if gpu else "float32", device="cuda" if gpu else "cpu")
        meta["model"] = name
    if args.mode in ("attention", "all"):
        attn_rows = run_attention(args, gpu, meta) or []
    if args.mode in ("compress", "all"):
        comp_rows = run_compress(args, gpu, meta, model)
        write_results(args.out_dir, f"compress{tag}", comp_rows, meta, title="Prune+compress and prefill overhead")
        print(markdown_table(comp_rows))
    if args.mode in ("e2e", "all"):
        e2e_rows, mem_rows = run_e2e(args, gpu, meta, model)
        cols = ["method", "backend", "batch", "context", "step_ms_median", "decode_tok_s", "speedup_vs_dense",
                "gpu_ms_per_step", "gpu_time_speedup_vs_dense",
                "kv_bytes_allocator", "kv_bytes_stored", "peak_bytes", "k_sparsity_achieved", "error"]
        write_results(args.out_dir, f"e2e{tag}", e2e_rows, meta, columns=cols, title="End-to-end decode, equal batch")
        print(markdown_table(e2e_rows, cols))
        if mem_rows:
            write_results(args.out_dir, f"e2e_equal_memory{tag}", mem_rows, meta, title="Equal memory budget")
            print(markdown_table(mem_rows))
    if not args.no_plots:
        for p in plots(args.out_dir, tag, e2e_rows, attn_rows):
            print("plot:", p)


if __name__ == "__main__":
    main()
