#!/usr/bin/env python
"""Accuracy study: dense vs Mustafar pruning variants on one model and one task suite, through pred_long_bench.py
and eval_long_bench.py, collected into results/accuracy.{json,md,png}.

    python scripts/accuracy_study.py                      # default model + offline suite (CPU is fine)
    python scripts/accuracy_study.py --model_name_or_path meta-llama/Meta-Llama-3-8B-Instruct \
        --data_dir /data/longbench --datasets narrativeqa,qasper,... --jobs 1 --device cuda

Each configuration is one ordinary run directory (resumable: rerunning the study skips finished samples).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (label, group, extra pred args)
def study_configs(preset: str, variant_sparsities=(0.5, 0.7)):
    c = []
    add = lambda label, group, *a: c.append((label, group, list(a)))  # noqa: E731
    add("dense", "dense", "--mode", "dense")
    for s in (0.3, 0.5, 0.7, 0.8, 0.9):
        add(f"Kt_Mag+Vt_Mag {s} compressed", "per-token magnitude (compressed)", "--k_method", "Kt_Mag", "--v_method",
            "Vt_Mag", "--k_sparsity", str(s), "--v_sparsity", str(s), "--backend", "compressed")
    if preset == "quick":
        return c
    for s in (0.5, 0.7):
        add(f"Kt_Mag+Vt_Mag {s} simulated", "per-token magnitude (simulated)", "--k_method", "Kt_Mag", "--v_method",
            "Vt_Mag", "--k_sparsity", str(s), "--v_sparsity", str(s), "--backend", "simulated")
    for km, vm, group in (("Kt_Opt", "Vt_Opt", "per-token output-aware"), ("Kc_Mag", "Vc_Mag", "per-channel magnitude"),
                          ("Kc_Opt", "Vc_Opt", "per-channel output-aware"), ("ThinK", "ThinV", "structured ThinK/ThinV")):
        # the structured baseline always at 0.5 and 0.7: "unstructured beats ThinK at equal sparsity" is the claim
        for s in sorted(set(variant_sparsities) | ({0.5, 0.7} if km == "ThinK" else set())):
            add(f"{km}+{vm} {s}", group, "--k_method", km, "--v_method", vm, "--k_sparsity", str(s),
                "--v_sparsity", str(s), "--backend", "compressed")
    add("Kt_Mag 0.7 keys only", "one side only", "--k_method", "Kt_Mag", "--v_method", "none", "--k_sparsity", "0.7",
        "--v_sparsity", "0", "--backend", "compressed")
    add("Vt_Mag 0.7 values only", "one side only", "--k_method", "none", "--v_method", "Vt_Mag", "--k_sparsity", "0",
        "--v_sparsity", "0.7", "--backend", "compressed")
    return c


def run_one(label, extra, common, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, os.path.join(ROOT, "pred_long_bench.py"), *common, *extra, "--no_progress"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{label}: pred_long_bench.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    run_dir = [l for l in proc.stdout.splitlines() if l.startswith("RUN_DIR=")][-1][len("RUN_DIR="):]
    return {"label": label, "run_dir": run_dir, "wall_s": wall, "command": " ".join(cmd[1:])}


def collect(run, group):
    from eval_long_bench import evaluate_run

    res = evaluate_run(run["run_dir"])
    stats = {}
    for task in res["scores"]:
        p = os.path.join(run["run_dir"], f"{task}.stats.json")
        if os.path.exists(p):
            stats[task] = json.load(open(p))["mean"]
    def avg(key):
        vals = [s[key] for s in stats.values() if key in s]
        return sum(vals) / len(vals) if vals else None
    return {**run, "group": group, "scores": res["scores"], "task_mean": res["task_mean"],
            "category_mean": res.get("category_mean"), "k_sparsity": avg("k_sparsity_overall"),
            "v_sparsity": avg("v_sparsity_overall"), "k_sparsity_pruned": avg("k_sparsity_pruned_region"),
            "v_sparsity_pruned": avg("v_sparsity_pruned_region"), "rho": avg("rho"),
            "prompt_tokens": avg("prompt_tokens")}


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = next(r for r in rows if r["group"] == "dense")
    tasks = list(dense["scores"])
    curve = sorted([r for r in rows if r["group"] == "per-token magnitude (compressed)"],
                   key=lambda r: r["k_sparsity_pruned"] or 0)
    xs = [0.0] + [float(r["label"].split()[1]) for r in curve]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for t in tasks:
        axes[0].plot(xs, [dense["scores"][t]] + [r["scores"][t] for r in curve], "o-", label=t.replace("offline_", ""))
    axes[0].set(xlabel="K and V sparsity (Kt_Mag + Vt_Mag, compressed)", ylabel="score", title="per task")
    axes[0].legend(fontsize=7)
    axes[1].plot(xs, [dense["task_mean"]] + [r["task_mean"] for r in curve], "o-k", label="Kt_Mag+Vt_Mag")
    markers = {"per-token output-aware": "s", "per-channel magnitude": "^", "per-channel output-aware": "v",
               "structured ThinK/ThinV": "x", "per-token magnitude (simulated)": "+"}
    for g, m in markers.items():
        rs = [r for r in rows if r["group"] == g]
        if rs:
            axes[1].plot([float(r["label"].split()[-1] if g != "per-token magnitude (simulated)" else r["label"].split()[1])
                          for r in rs], [r["task_mean"] for r in rs], m, ms=9, label=g)
    axes[1].set(xlabel="target sparsity", ylabel="task mean", title="average over tasks")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(rows, meta, out_dir):
    from models.results import markdown_table

    os.makedirs(out_dir, exist_ok=True)
    dense = next(r for r in rows if r["group"] == "dense")
    tasks = list(dense["scores"])
    table = []
    for r in rows:
        row = {"config": r["label"], "K sp.": r["k_sparsity_pruned"], "V sp.": r["v_sparsity_pruned"],
               "rho": r["rho"]}
        row.update({t.replace("offline_", ""): r["scores"][t] for t in tasks})
        row["mean"] = r["task_mean"]
        row["Δ dense"] = r["task_mean"] - dense["task_mean"]
        row["wall s"] = r["wall_s"]
        table.append(row)
    with open(os.path.join(out_dir, "accuracy.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(os.path.join(out_dir, "accuracy.md"), "w") as f:
        f.write("# Accuracy study\n\n")
        for k, v in meta.items():
            f.write(f"- {k}: `{v}`\n")
        f.write("\nK sp./V sp.: achieved sparsity of the pruned region (tokens outside the dense window); rho: "
                "stored KV bytes / dense KV bytes, window included, measured from the cache's tensors (simulated "
                "runs store dense zeros: rho 1).\n\n")
        f.write(markdown_table(table, floatfmt="{:.3g}"))
    plot(rows, os.path.join(out_dir, "accuracy.png"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["full", "quick"], default="full")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (CPU: one per core)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--out_dir", default=os.path.join(ROOT, "results"))
    p.add_argument("--pred_dir", default=os.path.join(ROOT, "pred_study"))
    p.add_argument("--only", default=None, help="comma list of labels to run (default all)")
    p.add_argument("--variant_sparsities", default="0.5,0.7",
                   help="sparsities of the output-aware and channel-wise variants (ThinK/ThinV: always 0.5 and 0.7)")
    args, rest = p.parse_known_args(argv)
    common = ["--output_dir", args.pred_dir, *rest]
    configs = study_configs(args.preset, tuple(float(x) for x in args.variant_sparsities.split(",")))
    if args.only:
        keep = set(args.only.split(","))
        configs = [c for c in configs if c[0] in keep or c[0] == "dense"]
    from models.results import env_info
    meta = env_info()
    meta["pred args"] = " ".join(common)
    runs = {}
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as ex:
        futs = {ex.submit(run_one, label, extra, common, args.threads): (label, group) for label, group, extra in configs}
        for fut in cf.as_completed(futs):
            label, group = futs[fut]
            run = fut.result()
            runs[label] = (run, group)
            print(f"done: {label} ({run['wall_s']:.0f} s) -> {run['run_dir']}", flush=True)
    rows = [collect(*runs[label]) for label, _, _ in configs]
    meta["config.json of first run"] = os.path.join(rows[0]["run_dir"], "config.json")
    write(rows, meta, args.out_dir)
    print(open(os.path.join(args.out_dir, "accuracy.md")).read())


if __name__ == "__main__":
    main()
