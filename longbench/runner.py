"""Model-agnostic, resumable and shardable LongBench prediction loop.

``run_task`` writes one JSON line per sample ``{"pred","answers","all_classes","length","_id"}``
(``ensure_ascii=False``) to ``out_path`` (``<run_dir>/<task>.jsonl``), in dataset order.

* Resume: an existing file is read, samples already present (by ``_id``) are skipped, a truncated
  last line left by a kill is dropped; every line is flushed and fsync'ed, so a killed-and-rerun
  run ends with the same bytes as an uninterrupted one.
* Sharding: with ``world_size > 1`` rank ``r`` handles samples ``i % world_size == r`` into
  ``<out_path>.part<r>of<world_size>``; once all parts are complete they are merged in dataset
  order into ``out_path`` (by rank 0 between two ``torch.distributed`` barriers when a process
  group is initialised, else by whichever rank finishes last) and the parts are removed.
* Optional per-sample statistics (``generate_fn`` returning ``(pred, stats)`` or
  ``{"pred": ..., "stats": {...}}``) go to a side file and are aggregated into
  ``<run_dir>/<task>.stats.json``; they are never part of the LongBench jsonl.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from longbench.data import JsonlError, parse_jsonl_text

RECORD_FIELDS = ("pred", "answers", "all_classes", "length", "_id")


# --------------------------------------------------------------------------- small file helpers

def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str, text: str) -> None:
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.tmp.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path)


def read_raw_records(path: str) -> Tuple[List[Tuple[str, str]], bool]:
    """``[(key, raw_line_with_newline), ...]`` of a prediction file and whether a truncated last
    line (a write cut by a kill: dropped, it is redone) was found. Malformed complete lines raise
    :class:`JsonlError` (file + line)."""
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    records, truncated = parse_jsonl_text(text, path, allow_truncated_tail=True)
    lines = text.split("\n")
    out: List[Tuple[str, str]] = []
    for i, obj in records:
        if "pred" not in obj:
            raise JsonlError(path, i, "not a prediction record (needs a JSON object with 'pred')")
        if "_id" not in obj:
            raise JsonlError(path, i, "prediction record without '_id' cannot be resumed")
        out.append((_norm_key(obj["_id"]), lines[i - 1] + "\n"))
    return out, truncated


def _norm_key(k) -> str:
    return k if isinstance(k, str) else json.dumps(k)


def sample_key(sample: dict, index: int) -> str:
    return _norm_key(sample["_id"]) if "_id" in sample else f"#{index}"


def make_record(sample: dict, pred: str) -> str:
    rec = {"pred": pred, "answers": sample["answers"], "all_classes": sample.get("all_classes"),
           "length": sample["length"], "_id": sample.get("_id")}
    return json.dumps(rec, ensure_ascii=False) + "\n"


def _split_output(out) -> Tuple[str, Optional[dict]]:
    if isinstance(out, str):
        return out, None
    if isinstance(out, tuple) and len(out) == 2:
        return out[0], out[1]
    if isinstance(out, dict) and "pred" in out:
        return out["pred"], out.get("stats")
    raise TypeError(f"generate_fn must return str, (pred, stats) or {{'pred':..}}, got {type(out)}")


def _dist():
    try:
        import torch.distributed as dist
    except Exception:  # pragma: no cover
        return None
    if dist.is_available() and dist.is_initialized():
        return dist
    return None


def part_path(out_path: str, rank: int, world_size: int) -> str:
    return f"{out_path}.part{rank}of{world_size}"


def _stats_path(out_path: str, rank: int, world_size: int) -> str:
    base = out_path[:-len(".jsonl")] if out_path.endswith(".jsonl") else out_path
    suffix = "" if world_size == 1 else f".r{rank}of{world_size}"
    return f"{base}.samplestats{suffix}.jsonl"


def aggregated_stats_path(out_path: str) -> str:
    base = out_path[:-len(".jsonl")] if out_path.endswith(".jsonl") else out_path
    return f"{base}.stats.json"


# --------------------------------------------------------------------------- core


def _harvest(paths: Sequence[str], wanted: set) -> Dict[str, str]:
    done: Dict[str, str] = {}
    for p in paths:
        if os.path.isfile(p):
            recs, truncated = read_raw_records(p)
            if truncated:
                print(f"[runner] {p}: dropped a truncated last line (interrupted run)",
                      file=sys.stderr)
            for k, line in recs:
                if k in wanted and k not in done:
                    done[k] = line
    return done


def _is_complete(path: str, keys: Sequence[str]) -> bool:
    if not os.path.isfile(path):
        return False
    try:
        recs, truncated = read_raw_records(path)
    except JsonlError:
        return False
    return not truncated and [k for k, _ in recs] == list(keys)


def _clean_stats_sidecar(path: str) -> None:
    """Drop a truncated tail of the per-sample stats side file before appending to it."""
    if not os.path.isfile(path):
        return
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    good = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError:
            continue
        good.append(line + "\n")
    if "".join(good) != text:
        atomic_write_text(path, "".join(good))


def run_task(task: str, samples: Sequence[dict], generate_fn: Callable, out_path: str,
             rank: int = 0, world_size: int = 1, *, desc: Optional[str] = None,
             progress: bool = True) -> str:
    """Predict ``samples`` with ``generate_fn(sample)`` into ``out_path`` (see module doc).

    Returns the path this rank wrote last (``out_path`` once merged, else its part file).
    """
    if world_size < 1 or not (0 <= rank < world_size):
        raise ValueError(f"bad rank/world_size: {rank}/{world_size}")
    if len(samples) == 0:
        raise ValueError(f"task {task!r}: no samples to predict")
    keys = [sample_key(s, i) for i, s in enumerate(samples)]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"task {task!r}: duplicate sample _id {dup!r}")
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)

    # Fast path: the final file is already complete (all ranks see the same answer, since
    # nobody writes it before the first barrier).
    if _is_complete(out_path, keys):
        _finish_sync(world_size)
        return out_path

    mine = [i for i in range(len(samples)) if i % world_size == rank]
    my_keys = [keys[i] for i in mine]
    work = out_path if world_size == 1 else part_path(out_path, rank, world_size)
    sources = [work] if world_size == 1 else [work, out_path]
    done = _harvest(sources, set(my_keys))
    ordered_done = "".join(done[k] for k in my_keys if k in done)
    existing = None
    if os.path.isfile(work):
        with open(work, "r", encoding="utf-8") as f:
            existing = f.read()
    if existing != ordered_done:
        atomic_write_text(work, ordered_done)

    spath = _stats_path(out_path, rank, world_size)
    _clean_stats_sidecar(spath)

    todo = [(i, k) for i, k in zip(mine, my_keys) if k not in done]
    bar = _progress(len(my_keys), len(done), desc or (task if world_size == 1 else f"{task}[{rank}]"),
                    rank, enabled=progress)
    try:
        with open(work, "a", encoding="utf-8", newline="\n") as f:
            for i, k in todo:
                pred, stats = _split_output(generate_fn(samples[i]))
                if not isinstance(pred, str):
                    raise TypeError(f"generate_fn returned a non-string prediction for {k!r}")
                line = make_record(samples[i], pred)
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
                done[k] = line
                if stats is not None:
                    with open(spath, "a", encoding="utf-8") as sf:
                        sf.write(json.dumps({"_id": samples[i].get("_id", k), **stats},
                                            ensure_ascii=False, default=_json_default) + "\n")
                        sf.flush()
                        os.fsync(sf.fileno())
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    # Records appended after a non-prefix resume may be out of order: rewrite in dataset order.
    expected = "".join(done[k] for k in my_keys)
    with open(work, "r", encoding="utf-8") as f:
        if f.read() != expected:
            atomic_write_text(work, expected)

    if world_size == 1:
        aggregate_stats(out_path, keys)
        return out_path
    return _merge_parts(task, out_path, keys, rank, world_size)


def _finish_sync(world_size: int) -> None:
    """Match the two barriers of the sharded path so every rank returns together."""
    dist = _dist()
    if world_size > 1 and dist is not None:
        dist.barrier()
        dist.barrier()


def _read_parts(out_path: str, world_size: int) -> Dict[str, str]:
    merged: Dict[str, str] = {}
    for r in range(world_size):
        p = part_path(out_path, r, world_size)
        if not os.path.isfile(p):
            continue
        recs, _ = read_raw_records(p)
        for k, line in recs:
            merged.setdefault(k, line)
    return merged


def _write_merged(out_path: str, keys: Sequence[str], world_size: int) -> bool:
    try:
        merged = _read_parts(out_path, world_size)
    except FileNotFoundError:
        return False
    if any(k not in merged for k in keys):
        return False
    atomic_write_text(out_path, "".join(merged[k] for k in keys))
    for r in range(world_size):
        try:
            os.remove(part_path(out_path, r, world_size))
        except FileNotFoundError:
            pass
    return True


def _merge_parts(task: str, out_path: str, keys: Sequence[str], rank: int, world_size: int) -> str:
    dist = _dist()
    if dist is not None:
        dist.barrier()  # every part complete
        err = None
        if rank == 0:
            try:
                if not _write_merged(out_path, keys, world_size):
                    missing = [k for k in keys if k not in _read_parts(out_path, world_size)]
                    err = RuntimeError(f"task {task!r}: {len(missing)} samples missing from the "
                                       f"part files of {out_path}")
                else:
                    aggregate_stats(out_path, keys)
            except Exception as exc:  # noqa: BLE001 - re-raised after the barrier
                err = exc
        dist.barrier()  # final file written
        if err is not None:
            raise err
        return out_path
    # No process group: whichever rank completes the set merges.
    if _is_complete(out_path, keys) or _write_merged(out_path, keys, world_size):
        aggregate_stats(out_path, keys)
        return out_path
    print(f"[runner] rank {rank}: part done; {out_path} is merged when all "
          f"{world_size} parts are complete", file=sys.stderr)
    return part_path(out_path, rank, world_size)


def _progress(total: int, initial: int, desc: str, rank: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, initial=initial, desc=desc, position=rank, leave=True,
                dynamic_ncols=True)


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


# --------------------------------------------------------------------------- stats


def aggregate_stats(out_path: str, keys: Optional[Sequence[str]] = None) -> Optional[dict]:
    """Aggregate the per-sample stats side files of ``out_path`` into ``<task>.stats.json``:
    mean/min/max of every numeric field over samples (last record per ``_id`` wins)."""
    base = out_path[:-len(".jsonl")] if out_path.endswith(".jsonl") else out_path
    d = os.path.dirname(os.path.abspath(out_path))
    prefix = os.path.basename(base) + ".samplestats"
    files = sorted(os.path.join(d, n) for n in os.listdir(d)
                   if n.startswith(prefix) and n.endswith(".jsonl"))
    if not files:
        return None
    per_id: Dict[str, dict] = {}
    for p in files:
        with open(p, "r", encoding="utf-8") as f:
            for line in f:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                per_id[_norm_key(obj.get("_id"))] = obj
    if keys is not None:
        wanted = set(keys)
        per_id = {k: v for k, v in per_id.items() if k in wanted}
    numeric: Dict[str, List[float]] = {}
    other: Dict[str, object] = {}
    for rec in per_id.values():
        for name, val in rec.items():
            if name == "_id":
                continue
            if isinstance(val, bool) or not isinstance(val, (int, float)):
                other.setdefault(name, val)
            elif math.isfinite(val):
                numeric.setdefault(name, []).append(float(val))
    result = {
        "n_samples": len(per_id),
        "mean": {k: sum(v) / len(v) for k, v in numeric.items()},
        "min": {k: min(v) for k, v in numeric.items()},
        "max": {k: max(v) for k, v in numeric.items()},
    }
    if other:
        result["first"] = other
    atomic_write_text(aggregated_stats_path(out_path),
                      json.dumps(result, indent=2, ensure_ascii=False, default=_json_default) + "\n")
    return result
