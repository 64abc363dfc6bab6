#!/usr/bin/env python
"""Score LongBench / LongBench-E prediction runs.

    python eval_long_bench.py --model Llama-2-7b-hf_4096_dense          # looked up in pred/
    python eval_long_bench.py --model pred_e/SOME_RUN --e
    python eval_long_bench.py --runs pred/RUN_A pred/RUN_B --baseline pred/RUN_DENSE

Per run: per-task scores, the plain task mean, LongBench category means and their mean
(LongBench-E: per length bucket too). ``result.json`` and ``result.md`` are written into each
run directory and a markdown table is printed (with deltas against ``--baseline``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from longbench import metrics as M  # noqa: E402
from longbench import tasks as T  # noqa: E402
from longbench.data import JsonlError, parse_jsonl_text  # noqa: E402


class EvalError(RuntimeError):
    pass


def _nan_to_none(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    return x


def _mean(vals: Sequence[float]) -> float:
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return round(sum(vals) / len(vals), 2) if vals else float("nan")


def prediction_files(run_dir: str) -> Dict[str, str]:
    """``{task: path}`` of ``<task>.jsonl`` files in ``run_dir`` (side files with a dot in the
    stem, e.g. ``x.samplestats.jsonl``, and unknown tasks are skipped)."""
    if not os.path.isdir(run_dir):
        raise EvalError(f"run directory {run_dir!r} does not exist")
    found = {}
    for name in sorted(os.listdir(run_dir)):
        if not name.endswith(".jsonl") or name.startswith("."):
            continue
        stem = name[:-len(".jsonl")]
        if "." in stem:
            continue
        if not T.is_task(stem):
            print(f"[eval] skipping {name}: unknown task", file=sys.stderr)
            continue
        task = stem[:-2] if (stem.endswith("_e") and stem not in T.all_tasks()) else stem
        found[task] = os.path.join(run_dir, name)
    if not found:
        raise EvalError(f"no prediction files (<task>.jsonl) in run directory {run_dir!r}")
    order = {t: i for i, t in enumerate(T.all_tasks())}
    return dict(sorted(found.items(), key=lambda kv: order.get(kv[0], len(order))))


def load_predictions(path: str):
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    rows, _ = parse_jsonl_text(text, path)
    preds, answers, lengths, classes = [], [], [], []
    for lineno, obj in rows:
        for key in ("pred", "answers"):
            if key not in obj:
                raise JsonlError(path, lineno, f"prediction record lacks {key!r}")
        if not isinstance(obj["pred"], str) or not isinstance(obj["answers"], list):
            raise JsonlError(path, lineno, "'pred' must be a string and 'answers' a list")
        preds.append(obj["pred"])
        answers.append(obj["answers"])
        lengths.append(obj.get("length"))
        classes.append(obj.get("all_classes"))
    if not preds:
        raise EvalError(f"{path}: no predictions")
    return preds, answers, lengths, classes


def _is_e_run(run_dir: str) -> bool:
    path = os.path.join(run_dir, "config.json")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
            return bool(cfg.get("identity", {}).get("e") or cfg.get("args", {}).get("e"))
        except (OSError, ValueError):
            return False
    return False


def evaluate_run(run_dir: str, e: Optional[bool] = None) -> dict:
    """Scores of one run directory (see module doc); also returned as written to result.json."""
    if e is None:
        e = _is_e_run(run_dir)
    files = prediction_files(run_dir)
    scores, overall, n = {}, {}, {}
    for task, path in files.items():
        preds, answers, lengths, classes = load_predictions(path)
        n[task] = len(preds)
        overall[task] = M.scorer(task, preds, answers, classes)
        if e:
            if any(x is None for x in lengths):
                raise EvalError(f"{path}: LongBench-E scoring needs a 'length' on every line")
            scores[task] = M.scorer_e(task, preds, answers, lengths, classes)
    cat_scores: Dict[str, List[float]] = {}
    for task, s in overall.items():
        cat_scores.setdefault(T.get_task(task).category, []).append(s)
    order = list(T.CATEGORIES) + [c for c in cat_scores if c not in T.CATEGORIES]
    category_means = {c: _mean(cat_scores[c]) for c in order if c in cat_scores}
    result = {
        "run_dir": os.path.abspath(run_dir),
        "e": bool(e),
        "scores": scores if e else overall,
        "num_samples": n,
        "task_mean": _mean(list(overall.values())),
        "category_means": category_means,
        "category_mean": _mean(list(category_means.values())),
    }
    if e:
        result["overall"] = overall
        result["bucket_means"] = {b: _mean([scores[t][b] for t in scores]) for b in M.BUCKETS}
    return result


# --------------------------------------------------------------------------- tables


def _cell(v, base=None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    s = f"{v:.2f}"
    if base is not None and not (isinstance(base, float) and math.isnan(base)):
        s += f" ({v - base:+.2f})"
    return s


def _rows(result: dict):
    """(label, value) rows of one result: tasks, category means, means."""
    rows = []
    per_task = result["overall"] if result["e"] else result["scores"]
    for task, v in per_task.items():
        rows.append((task, v))
    for c, v in result["category_means"].items():
        rows.append((f"*{c}*", v))
    rows.append(("**Category mean**", result["category_mean"]))
    rows.append(("**Task mean**", result["task_mean"]))
    return rows


def format_table(results: Sequence[dict], names: Sequence[str],
                 baseline: Optional[dict] = None, baseline_name: str = "baseline") -> str:
    """Markdown table, one column per run (plus the baseline first); cells show the delta to
    the baseline when one is given. LongBench-E runs get per-bucket columns."""
    cols = ([(baseline_name, baseline, False)] if baseline is not None else []) + \
        [(nm, r, True) for nm, r in zip(names, results)]
    e = any(r["e"] for _, r, _ in cols)
    labels: List[str] = []
    for _, r, _ in cols:
        for label, _ in _rows(r):
            if label not in labels:
                labels.append(label)
    # keep task rows first, then category rows, then the means
    labels.sort(key=lambda s: 2 if s.startswith("**") else (1 if s.startswith("*") else 0))
    base_vals = dict(_rows(baseline)) if baseline is not None else {}
    header = ["task"]
    for nm, r, _ in cols:
        if e:
            header += [f"{nm} {b}" for b in M.BUCKETS] + [f"{nm} all"]
        else:
            header.append(nm)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in labels:
        row = [label]
        for nm, r, delta in cols:
            vals = dict(_rows(r))
            v = vals.get(label)
            b = base_vals.get(label) if (delta and baseline is not None) else None
            if e:
                for bucket in M.BUCKETS:
                    if r["e"] and label in r["scores"]:
                        bv = None
                        if delta and baseline is not None and baseline.get("e") \
                                and label in baseline["scores"]:
                            bv = baseline["scores"][label][bucket]
                        row.append(_cell(r["scores"][label][bucket], bv))
                    elif r["e"] and label == "**Task mean**":
                        bv = baseline["bucket_means"][bucket] if (
                            delta and baseline is not None and baseline.get("e")) else None
                        row.append(_cell(r["bucket_means"][bucket], bv))
                    else:
                        row.append("")
            row.append(_cell(v, b))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_result(run_dir: str, result: dict, table: str) -> None:
    from longbench.runner import atomic_write_text

    atomic_write_text(os.path.join(run_dir, "result.json"),
                      json.dumps(_nan_to_none(result), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(os.path.join(run_dir, "result.md"), table)


def resolve_run(name: str, e: bool) -> str:
    if os.path.isdir(name):
        return name
    sub = "pred_e" if e else "pred"
    for root in (os.getcwd(), REPO_ROOT):
        cand = os.path.join(root, sub, name)
        if os.path.isdir(cand):
            return cand
    raise EvalError(f"--model {name!r}: not a directory and not found under "
                    f"{os.path.join(os.getcwd(), sub)} or {os.path.join(REPO_ROOT, sub)}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help="run directory, or its name under pred/ (pred_e/ with --e)")
    g.add_argument("--runs", nargs="+", help="run directories to compare")
    p.add_argument("--baseline", help="dense run directory: deltas are shown against it")
    p.add_argument("--e", action="store_true", help="LongBench-E (length buckets)")
    p.add_argument("--table_out", help="also write the comparison table to this file")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_dirs = [resolve_run(args.model, args.e)] if args.model else \
            [resolve_run(r, args.e) for r in args.runs]
        e = True if args.e else None
        baseline = baseline_name = None
        if args.baseline:
            bdir = resolve_run(args.baseline, args.e)
            baseline = evaluate_run(bdir, e)
            baseline_name = os.path.basename(os.path.normpath(bdir))
        results, names = [], []
        for d in run_dirs:
            r = evaluate_run(d, e)
            name = os.path.basename(os.path.normpath(d))
            table = format_table([r], [name], baseline, baseline_name or "baseline")
            write_result(d, r, table)
            results.append(r)
            names.append(name)
        if baseline is not None and os.path.abspath(bdir) not in [os.path.abspath(d) for d in run_dirs]:
            write_result(bdir, baseline, format_table([baseline], [baseline_name]))
        table = format_table(results, names, baseline, baseline_name or "baseline")
    except (EvalError, JsonlError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.table_out:
        with open(args.table_out, "w", encoding="utf-8") as f:
            f.write(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
