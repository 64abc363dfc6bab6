#!/usr/bin/env python
"""LongBench / LongBench-E predictions with Mustafar KV-cache pruning (or a dense baseline).

    python pred_long_bench.py --model_name_or_path smollm2 --k_sparsity 0.5 --v_sparsity 0.5
    python pred_long_bench.py --model_name_or_path meta-llama/Llama-2-7b-hf --mode dense \
        --data_dir /data/longbench
    torchrun --nproc_per_node 2 pred_long_bench.py ...      # samples sharded over ranks

Every argument is validated before any model is loaded. Predictions go to
``<output_dir>/<run name>/<task>.jsonl`` (resumable); the last stdout line is ``RUN_DIR=<path>``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import socket
import sys

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

MODES = ("mustafar", "mustafar-mistral", "dense", "kernel")
# Used for validation only when the models package cannot be imported.
FALLBACK_METHODS = ("none", "Kt_Mag", "Kc_Mag", "Kt_Opt", "Kc_Opt", "Vt_Mag", "Vc_Mag",
                    "Vt_Opt", "Vc_Opt", "think", "thinv")
# Fields that must match an existing run directory's config.json to resume into it.
IDENTITY_FIELDS = ("model", "mode", "k_method", "v_method", "k_sparsity", "v_sparsity",
                   "group_size", "residual_length", "backend", "prune_rule", "dtype",
                   "max_length", "e", "seed", "offline")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="LongBench predictions with Mustafar KV-cache pruning.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_name_or_path", default="smollm2",
                   help="hub id, local dir, GGUF file, or a short name of config/model2path.json")
    p.add_argument("--k_sparsity", type=float, default=0.5, help="key-cache sparsity in [0,1)")
    p.add_argument("--v_sparsity", type=float, default=0.5, help="value-cache sparsity in [0,1)")
    p.add_argument("--group_size", type=int, default=32)
    p.add_argument("--residual_length", type=int, default=32,
                   help="dense window of most recent tokens that are never pruned")
    p.add_argument("--mode", choices=MODES, default="mustafar",
                   help="mustafar / mustafar-mistral: apply Mustafar (model family is detected); "
                        "dense: no pruning (k/v method 'none'); kernel: Mustafar with "
                        "--backend compressed")
    p.add_argument("--e", action="store_true", help="LongBench-E (length-bucketed configs)")
    p.add_argument("--k_method", default="Kt_Mag")
    p.add_argument("--v_method", default="Vt_Mag")
    p.add_argument("--backend", choices=("simulated", "compressed"), default="simulated")
    p.add_argument("--datasets", default=None,
                   help="comma-separated task list (default: the 16 English LongBench tasks, or "
                        "the 13 LongBench-E tasks with --e, when --data_dir/--hub is given; "
                        "else the offline suite's default tasks)")
    p.add_argument("--data_dir", default=None,
                   help="folder with <task>.jsonl / <task>_e.jsonl (LongBench data.zip layout)")
    p.add_argument("--hub", action="store_true",
                   help="read LongBench from the Hugging Face hub (THUDM/LongBench)")
    p.add_argument("--max_samples", type=int, default=None, help="first N samples per task")
    p.add_argument("--output_dir", default=None, help="default: pred/ (pred_e/ with --e)")
    p.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto")
    p.add_argument("--max_length", type=int, default=None,
                   help="prompt budget override (default: config/model2maxlen.json)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--prune_rule", choices=("exact", "paper"), default="exact")
    p.add_argument("--no_progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--offline_context", type=int, default=1500,
                   help="offline suite: context length per sample (tokens, approximated in words)")
    p.add_argument("--offline_samples", type=int, default=5, help="offline suite: samples per task")
    p.add_argument("--offline_seed", type=int, default=42, help="offline suite: generation seed")
    return p


# --------------------------------------------------------------------------- validation


def _known_methods():
    """(key-side names, value-side names) from the models package, or a fallback list."""
    try:
        from models import K_METHODS, V_METHODS  # noqa: WPS433 - lazy on purpose
        if K_METHODS and V_METHODS:
            return list(K_METHODS), list(V_METHODS)
    except Exception:  # noqa: BLE001 - models package absent or broken: fall back
        pass
    try:
        from models import METHODS  # noqa: WPS433
        if METHODS:
            return list(METHODS), list(METHODS)
    except Exception:  # noqa: BLE001
        pass
    return ([m for m in FALLBACK_METHODS if not m.startswith(("V", "thinv"))],
            [m for m in FALLBACK_METHODS if not m.startswith(("K", "think"))])


def _resolve_model_info(name: str):
    """models.loading.resolve_model (classifies without loading weights) or None if unavailable."""
    try:
        from models.loading import resolve_model  # noqa: WPS433
    except Exception:  # noqa: BLE001
        return None
    return resolve_model(name)


def _looks_like_path(s: str) -> bool:
    return (s.startswith(("/", "./", "../", "~", ".\\")) or s.lower().endswith(".gguf")
            or os.path.exists(os.path.expanduser(s)))


def validate_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Check every argument; errors exit through ``parser.error`` naming the flag."""
    err = parser.error
    for flag in ("k_sparsity", "v_sparsity"):
        v = getattr(args, flag)
        if not math.isfinite(v) or not (0.0 <= v < 1.0):
            err(f"--{flag} must be in [0, 1), got {v}")
    if args.group_size <= 0:
        err(f"--group_size must be a positive integer, got {args.group_size}")
    if args.residual_length < 0:
        err(f"--residual_length must be >= 0, got {args.residual_length}")
    if args.offline_context <= 0:
        err(f"--offline_context must be a positive integer, got {args.offline_context}")
    if args.offline_samples <= 0:
        err(f"--offline_samples must be a positive integer, got {args.offline_samples}")
    if args.max_samples is not None and args.max_samples <= 0:
        err(f"--max_samples must be a positive integer, got {args.max_samples}")
    if args.max_length is not None and args.max_length <= 1:
        err(f"--max_length must be an integer > 1, got {args.max_length}")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        err(f"--data_dir {args.data_dir!r} is not an existing directory")
    if args.output_dir is not None and os.path.exists(args.output_dir) \
            and not os.path.isdir(args.output_dir):
        err(f"--output_dir {args.output_dir!r} exists and is not a directory")
    if args.device is not None:
        if not re.fullmatch(r"(cpu|auto|mps|cuda(:\d+)?)", args.device):
            err(f"--device must be cpu, cuda, cuda:N, mps or auto, got {args.device!r}")
        if args.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                err(f"--device {args.device}: CUDA is not available on this machine")

    # model
    from longbench.prompts import model2path

    name = args.model_name_or_path
    args.model_path = model2path().get(name, name)
    if name.startswith("random:"):
        err(f"--model_name_or_path {name!r}: random-weight models have no tokenizer")
    try:
        info = _resolve_model_info(args.model_path)
    except (FileNotFoundError, ValueError) as exc:
        err(f"--model_name_or_path {name!r}: {exc}")
    if info is None:
        if _looks_like_path(name):
            if not os.path.exists(os.path.expanduser(name)):
                err(f"--model_name_or_path {name!r}: no such file or directory")
        elif name not in model2path() and not re.fullmatch(r"[\w.\-]+/[\w.\-]+", name):
            err(f"--model_name_or_path {name!r}: not a short name of config/model2path.json "
                f"({', '.join(model2path())}), a hub id 'org/name' or an existing path")
    args.model_name = info.get("name") if info else None

    # mode / methods
    if args.mode == "dense":
        args.k_method, args.v_method = "none", "none"
        args.k_sparsity, args.v_sparsity = 0.0, 0.0
    if args.mode == "kernel":
        args.backend = "compressed"
    k_known, v_known = _known_methods()
    for flag, known in (("k_method", k_known), ("v_method", v_known)):
        if getattr(args, flag) not in known:
            err(f"--{flag} {getattr(args, flag)!r} is not a known method; known: {', '.join(known)}")

    # tasks
    from longbench import tasks as T

    if args.datasets:
        try:
            args.tasks = T.validate_task_names(args.datasets.split(","), e=args.e)
        except ValueError as exc:
            err(f"--datasets: {exc}")
    elif args.data_dir is not None or args.hub:
        args.tasks = T.longbench_e_tasks() if args.e else T.english_tasks()
    else:
        args.tasks = T.default_offline_tasks()
        if not args.tasks:
            err("--datasets: no offline suite available (longbench/offline.py); pass "
                "--data_dir DIR (LongBench data.zip layout), --hub, or --datasets")
    if args.data_dir is not None:
        missing = [t for t in args.tasks if not T.is_offline_task(t)
                   and _local_file(t, args.data_dir, args.e) is None]
        if missing:
            err(f"--datasets: no {'<task>_e' if args.e else '<task>'}.jsonl for "
                f"{', '.join(missing)} in --data_dir {args.data_dir!r}")

    if args.output_dir is None:
        args.output_dir = os.path.join(REPO_ROOT, "pred_e" if args.e else "pred")
    return args


def _local_file(task, data_dir, e):
    from longbench.data import find_local_file

    return find_local_file(task, data_dir, e)


# --------------------------------------------------------------------------- naming / config


def _fmt(x: float) -> str:
    return f"{x:g}"


def run_name(model_basename: str, budget: int, args) -> str:
    if args.mode == "dense" or (args.k_method == "none" and args.v_method == "none"):
        name = f"{model_basename}_{budget}_dense"
    else:
        name = (f"{model_basename}_{budget}_{args.k_method}{_fmt(args.k_sparsity)}_"
                f"{args.v_method}{_fmt(args.v_sparsity)}_w{args.residual_length}_{args.backend}")
        if args.group_size != 32:
            name += f"_g{args.group_size}"
        if args.prune_rule != "exact":
            name += f"_{args.prune_rule}"
    if _uses_offline(args):
        name += f"_offline{args.offline_context}x{args.offline_samples}s{args.offline_seed}"
    return name


def _uses_offline(args) -> bool:
    from longbench import tasks as T

    return any(T.is_offline_task(t) for t in getattr(args, "tasks", []) or [])


def _offline_options(args) -> dict:
    return {"n_samples": args.offline_samples, "context_tokens": args.offline_context, "seed": args.offline_seed}


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("torch", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            out[mod] = None
    return out


def _identity(args, model_basename: str, budget: int) -> dict:
    return {"model": model_basename, "mode": "dense" if args.mode == "dense" else "mustafar",
            "k_method": args.k_method, "v_method": args.v_method,
            "k_sparsity": args.k_sparsity, "v_sparsity": args.v_sparsity,
            "group_size": args.group_size, "residual_length": args.residual_length,
            "backend": args.backend, "prune_rule": args.prune_rule, "dtype": args.dtype,
            "max_length": budget, "e": bool(args.e), "seed": args.seed,
            "offline": _offline_options(args) if _uses_offline(args) else None}


def write_run_config(run_dir: str, args, identity: dict, extra: dict) -> None:
    from longbench.runner import atomic_write_text

    path = os.path.join(run_dir, "config.json")
    history = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        history = old.get("history", []) + [{k: old.get(k) for k in ("date", "host", "argv")}]
    cfg = {
        "args": {k: v for k, v in vars(args).items()},
        "identity": identity,
        **extra,
        "versions": _versions(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "argv": sys.argv,
        "seed": args.seed,
        "history": history,
    }
    atomic_write_text(path, json.dumps(cfg, indent=2, ensure_ascii=False, default=str) + "\n")


def check_resume(run_dir: str, identity: dict) -> None:
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        old = json.load(f).get("identity", {})
    diff = {k: (old.get(k), v) for k, v in identity.items() if k in old and old.get(k) != v}
    if diff:
        raise SystemExit(f"error: {run_dir} holds a run with different settings {diff}; "
                         f"use another --output_dir or remove it")


# --------------------------------------------------------------------------- main


def _dist_setup(device_arg):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device_arg
    import torch
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device_arg is None or device_arg.startswith("cuda")
                                              or device_arg == "auto")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        return rank, world, f"cuda:{local}"
    return rank, world, device_arg or "cpu"


def _resolve_device(device):
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args = validate_args(parser, args)

    # Lazy: nothing heavy is imported before the arguments are known to be valid.
    from models import MustafarConfig, apply_mustafar, load_model  # noqa: WPS433

    cfg = MustafarConfig(k_method=args.k_method, v_method=args.v_method,
                         k_sparsity=args.k_sparsity, v_sparsity=args.v_sparsity,
                         window=args.residual_length, group_size=args.group_size,
                         backend=args.backend, prune_rule=args.prune_rule)
    dense_plain = args.mode == "dense" and "none" not in _known_methods()[0]
    if not dense_plain:
        try:
            cfg.validate()
        except ValueError as exc:
            parser.error(f"invalid Mustafar configuration: {exc}")

    import torch

    from longbench.data import load_task
    from longbench.prompts import (build_prompt, generation_kwargs, model2maxlen, model_basename,
                                   prompt_budget)
    from longbench.runner import run_task

    rank, world, device = _dist_setup(args.device)
    device = _resolve_device(device)

    # Load every task's data first, so data errors surface before the (slow) model load.
    data = {}
    for task in args.tasks:
        data[task] = load_task(task, data_dir=args.data_dir, e=args.e,
                               max_samples=args.max_samples, offline=_offline_options(args))

    model, tokenizer = load_model(args.model_path, dtype=args.dtype, device=device)
    if tokenizer is None:
        raise SystemExit(f"error: --model_name_or_path {args.model_name_or_path!r} has no tokenizer")
    model_cfg = getattr(model, "config", None)
    base = model_basename(args.model_name_or_path, model_cfg)
    if base not in model2maxlen() and args.model_name:
        base = args.model_name
    budget = args.max_length or prompt_budget(args.model_name_or_path, None, model_cfg)
    run_dir = os.path.join(args.output_dir, run_name(base, budget, args))
    identity = _identity(args, base, budget)
    check_resume(run_dir, identity)
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        write_run_config(run_dir, args, identity, {
            "model_basename": base, "prompt_budget": budget, "tasks": args.tasks,
            "mustafar_config": None if dense_plain else _cfg_dict(cfg),
            "world_size": world, "device": device})
    cache_factory = None if dense_plain else apply_mustafar(model, cfg)
    try:
        from models import cache_kwargs as cache_kw  # noqa: WPS433
    except ImportError:
        def cache_kw(_model, cache):
            return {"past_key_values": cache}
    in_device = getattr(model, "device", None) or device

    for task in args.tasks:
        t_budget = args.max_length or prompt_budget(args.model_name_or_path, task, model_cfg)
        gen_kw = generation_kwargs(task, tokenizer, model=model)

        def generate(sample, _task=task, _budget=t_budget, _kw=gen_kw):
            ids, _ = build_prompt(_task, sample, tokenizer, _budget)
            input_ids = torch.tensor([ids], dtype=torch.long, device=in_device)
            kw = dict(_kw)
            cache = cache_factory() if cache_factory is not None else None
            if cache is not None:
                kw.update(cache_kw(model, cache))
            torch.manual_seed(args.seed)
            with torch.inference_mode():
                out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kw)
            new = out[0, input_ids.shape[1]:]
            pred = tokenizer.decode(new, skip_special_tokens=True)
            stats = {"prompt_tokens": len(ids), "new_tokens": int(new.shape[0])}
            if cache is not None and hasattr(cache, "stats"):
                stats.update(cache.stats())
            return pred, stats

        run_task(task, data[task], generate, os.path.join(run_dir, f"{task}.jsonl"),
                 rank=rank, world_size=world, progress=not args.no_progress)

    if rank == 0:
        sys.stdout.flush()
        print(f"RUN_DIR={run_dir}", flush=True)
    return 0


def _cfg_dict(cfg) -> dict:
    try:
        import dataclasses

        if dataclasses.is_dataclass(cfg):
            return dataclasses.asdict(cfg)
    except Exception:  # noqa: BLE001
        pass
    return {k: v for k, v in vars(cfg).items() if not k.startswith("_")}


if __name__ == "__main__":
    sys.exit(main())
