"""Loading LongBench / LongBench-E samples.

Sources, in order:
  (a) ``data_dir``: a directory with ``<task>.jsonl`` (``<task>_e.jsonl`` for LongBench-E), the
      layout of LongBench's ``data.zip`` (a ``data/`` sub-folder is also accepted);
  (b) offline-suite tasks (registered in :mod:`longbench.tasks`): the file is produced by
      ``longbench.offline.ensure_task_file(task, cache_dir, ...)`` (imported lazily);
  (c) the hub dataset ``THUDM/LongBench`` (``data.zip`` through huggingface_hub, else
      ``datasets.load_dataset``); failures raise a RuntimeError telling the user to pass
      ``--data_dir``.
Every sample is validated; malformed lines raise errors naming the file and line number.
"""
from __future__ import annotations

import inspect
import io
import json
import os
from typing import List, Optional, Tuple

from longbench import tasks as _tasks

HUB_REPO = "THUDM/LongBench"
REQUIRED_FIELDS = ("input", "context", "answers", "length", "all_classes", "_id")
# None: longbench.offline's own default under the user cache dir (~/.cache/mustafar/offline_suite), never the repo
DEFAULT_OFFLINE_CACHE = os.environ.get("MUSTAFAR_OFFLINE_CACHE")


class JsonlError(ValueError):
    """A malformed line in a JSONL file; the message names the file and the 1-based line."""

    def __init__(self, path: str, lineno: int, msg: str):
        super().__init__(f"{path}:{lineno}: {msg}")
        self.path = path
        self.lineno = lineno


def parse_jsonl_text(text: str, path: str, allow_truncated_tail: bool = False
                     ) -> Tuple[List[Tuple[int, dict]], bool]:
    """Parse JSONL text into ``[(lineno, obj), ...]``. Blank lines are skipped.

    With ``allow_truncated_tail`` a last line that is not newline-terminated and does not parse
    (a write cut by a kill) is dropped; the second return value tells whether that happened.
    Any other unparsable line raises :class:`JsonlError`.
    """
    lines = text.split("\n")
    ends_with_newline = text.endswith("\n")
    if ends_with_newline:
        lines = lines[:-1]
    out: List[Tuple[int, dict]] = []
    truncated = False
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if allow_truncated_tail and i == len(lines) and not ends_with_newline:
                truncated = True
                break
            raise JsonlError(path, i, f"malformed JSON line ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise JsonlError(path, i, f"expected a JSON object, got {type(obj).__name__}")
        out.append((i, obj))
    return out, truncated


def read_jsonl(path: str, allow_truncated_tail: bool = False) -> Tuple[List[Tuple[int, dict]], bool]:
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    return parse_jsonl_text(text, path, allow_truncated_tail)


def validate_sample(obj: dict, path: str, lineno: int) -> dict:
    missing = [k for k in REQUIRED_FIELDS if k not in obj]
    if missing:
        raise JsonlError(path, lineno, f"sample lacks LongBench field(s) {missing}; "
                                       f"required: {list(REQUIRED_FIELDS)}")
    for key in ("input", "context"):
        if not isinstance(obj[key], str):
            raise JsonlError(path, lineno, f"field {key!r} must be a string")
    ans = obj["answers"]
    if not isinstance(ans, list) or not ans or not all(isinstance(a, str) for a in ans):
        raise JsonlError(path, lineno, "field 'answers' must be a non-empty list of strings")
    if isinstance(obj["length"], bool) or not isinstance(obj["length"], (int, float)):
        raise JsonlError(path, lineno, "field 'length' must be a number")
    ac = obj["all_classes"]
    if ac is not None and not (isinstance(ac, list) and all(isinstance(c, str) for c in ac)):
        raise JsonlError(path, lineno, "field 'all_classes' must be null or a list of strings")
    if not isinstance(obj["_id"], (str, int)) or isinstance(obj["_id"], bool):
        raise JsonlError(path, lineno, "field '_id' must be a string")
    return obj


def _parse_samples(text: str, path: str, max_samples: Optional[int]) -> List[dict]:
    rows, _ = parse_jsonl_text(text, path)
    samples = []
    seen = {}
    for lineno, obj in rows:
        validate_sample(obj, path, lineno)
        if obj["_id"] in seen:
            raise JsonlError(path, lineno, f"duplicate _id {obj['_id']!r} (first at line "
                                           f"{seen[obj['_id']]})")
        seen[obj["_id"]] = lineno
        samples.append(obj)
        if max_samples is not None and len(samples) >= max_samples:
            break
    if not samples:
        raise ValueError(f"{path}: no samples")
    return samples


def _file_name(task: str, e: bool) -> str:
    return f"{task}_e.jsonl" if e else f"{task}.jsonl"


def find_local_file(task: str, data_dir: str, e: bool = False) -> Optional[str]:
    name = _file_name(task, e)
    for cand in (os.path.join(data_dir, name), os.path.join(data_dir, "data", name)):
        if os.path.isfile(cand):
            return cand
    return None


def _call_ensure(task: str, cache_dir: Optional[str], e: bool, offline: Optional[dict] = None) -> str:
    mod = _tasks.offline_module()
    fn = getattr(mod, "ensure_task_file", None) if mod is not None else None
    if fn is None:
        raise RuntimeError(f"task {task!r} is an offline-suite task but longbench.offline."
                           f"ensure_task_file is not available")
    kwargs = {}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover
        params = {}
    if "e" in params:
        kwargs["e"] = e
    for k, v in (offline or {}).items():
        if k in params and v is not None:
            kwargs[k] = v
    return fn(task, cache_dir, **kwargs)


def _hub_text(task: str, e: bool) -> Tuple[str, str]:
    """Text of ``data/<task>[_e].jsonl`` from the hub; raises RuntimeError with advice."""
    name = _file_name(task, e)
    errors = []
    try:
        import zipfile

        from huggingface_hub import hf_hub_download

        zpath = hf_hub_download(HUB_REPO, "data.zip", repo_type="dataset")
        with zipfile.ZipFile(zpath) as zf:
            with zf.open(f"data/{name}") as f:
                return io.TextIOWrapper(f, encoding="utf-8").read(), f"{zpath}:data/{name}"
    except Exception as exc:  # noqa: BLE001
        errors.append(f"data.zip: {type(exc).__name__}: {exc}")
    try:
        import datasets

        ds = datasets.load_dataset(HUB_REPO, name[:-len(".jsonl")], split="test")
        text = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in ds)
        return text, f"hub:{HUB_REPO}/{name[:-len('.jsonl')]}"
    except Exception as exc:  # noqa: BLE001
        errors.append(f"datasets.load_dataset: {type(exc).__name__}: {exc}")
    raise RuntimeError(
        f"could not load task {task!r}{' (LongBench-E)' if e else ''} from the Hugging Face hub "
        f"dataset {HUB_REPO} ({'; '.join(errors)}). Download LongBench's data.zip, unzip it and "
        f"pass --data_dir DIR (a folder holding {name}).")


def load_task(task: str, data_dir: Optional[str] = None, e: bool = False,
              max_samples: Optional[int] = None, offline: Optional[dict] = None) -> List[dict]:
    """Samples of ``task`` in dataset order (the first ``max_samples`` if given).

    ``offline``: generation options of offline-suite tasks (n_samples, context_tokens, seed)."""
    if max_samples is not None and int(max_samples) <= 0:
        raise ValueError("max_samples must be a positive integer")
    if task.endswith("_e") and _tasks.is_task(task[:-2]) and not _tasks.is_task(task):
        task, e = task[:-2], True
    spec = _tasks.get_task(task)  # ValueError listing valid names
    if e and spec.longbench and task not in _tasks.LONGBENCH_E_TASKS:
        raise ValueError(f"task {task!r} has no LongBench-E config; LongBench-E tasks: "
                         f"{', '.join(_tasks.LONGBENCH_E_TASKS)}")
    if data_dir is not None:
        if not os.path.isdir(data_dir):
            raise FileNotFoundError(f"--data_dir {data_dir!r} is not a directory")
        path = find_local_file(task, data_dir, e)
        if path is None and spec.offline:
            path = _call_ensure(task, data_dir, e, offline)
        if path is None:
            raise FileNotFoundError(
                f"no {_file_name(task, e)} in {data_dir} (nor in {os.path.join(data_dir, 'data')})")
    elif spec.offline:
        path = _call_ensure(task, DEFAULT_OFFLINE_CACHE, e, offline)
    else:
        text, where = _hub_text(task, e)
        return _parse_samples(text, where, max_samples)
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    return _parse_samples(text, path, max_samples)
