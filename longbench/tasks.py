"""Task registry: LongBench's 21 tasks (from config/*.json) plus tasks registered at run time.

Each task carries its metric, ``max_new_tokens``, prompt template, LongBench category, language,
the first-line-only scoring flag and whether the prompt is wrapped in the model's chat template.

The offline suite (``longbench/offline.py``) registers its own tasks with :func:`register_task`
when imported; lookups of unknown names import it lazily (its absence is tolerated).
"""
from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Union

from longbench import metrics as _metrics

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "config")

CATEGORIES = ("Single-Doc QA", "Multi-Doc QA", "Summarization", "Few-shot", "Synthetic", "Code")

# LongBench paper, Table 1.
_LONGBENCH_CATEGORY = {
    "narrativeqa": "Single-Doc QA", "qasper": "Single-Doc QA",
    "multifieldqa_en": "Single-Doc QA", "multifieldqa_zh": "Single-Doc QA",
    "hotpotqa": "Multi-Doc QA", "2wikimqa": "Multi-Doc QA", "musique": "Multi-Doc QA",
    "dureader": "Multi-Doc QA",
    "gov_report": "Summarization", "qmsum": "Summarization", "multi_news": "Summarization",
    "vcsum": "Summarization",
    "trec": "Few-shot", "triviaqa": "Few-shot", "samsum": "Few-shot", "lsht": "Few-shot",
    "passage_count": "Synthetic", "passage_retrieval_en": "Synthetic",
    "passage_retrieval_zh": "Synthetic",
    "lcc": "Code", "repobench-p": "Code",
}
_LONGBENCH_LANGUAGE = {t: "en" for t in _LONGBENCH_CATEGORY}
_LONGBENCH_LANGUAGE.update({t: "zh" for t in ("multifieldqa_zh", "dureader", "vcsum", "lsht",
                                                "passage_retrieval_zh")})
_LONGBENCH_LANGUAGE.update({"lcc": "code", "repobench-p": "code"})

FIRST_LINE_TASKS = frozenset({"trec", "triviaqa", "samsum", "lsht"})
CHAT_TEMPLATE_SKIP = frozenset({"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"})
LONGBENCH_E_TASKS = ("qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report",
                     "multi_news", "trec", "triviaqa", "samsum", "passage_count",
                     "passage_retrieval_en", "lcc", "repobench-p")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    metric: Callable
    max_new_tokens: int
    prompt: str
    category: str
    language: str
    first_line_only: bool = False
    use_chat_template: bool = True
    offline: bool = False          # True: data comes from the offline suite generator
    longbench: bool = False        # True: one of LongBench v1's 21 tasks
    extra: Dict = field(default_factory=dict, compare=False)


_REGISTRY: Dict[str, TaskSpec] = {}
_OFFLINE_IMPORTED = False


def _load_json(name: str) -> dict:
    with open(os.path.join(CONFIG_DIR, name), encoding="utf-8") as f:
        return json.load(f)


def _load_longbench() -> None:
    prompts = _load_json("dataset2prompt.json")
    maxlen = _load_json("dataset2maxlen.json")
    for name in prompts:
        _REGISTRY[name] = TaskSpec(
            name=name,
            metric=_metrics.dataset2metric[name],
            max_new_tokens=int(maxlen[name]),
            prompt=prompts[name],
            category=_LONGBENCH_CATEGORY[name],
            language=_LONGBENCH_LANGUAGE[name],
            first_line_only=name in FIRST_LINE_TASKS,
            use_chat_template=name not in CHAT_TEMPLATE_SKIP,
            offline=False,
            longbench=True,
        )


_load_longbench()
LONGBENCH_TASKS = tuple(_REGISTRY)
ENGLISH_TASKS = tuple(t for t in LONGBENCH_TASKS if _REGISTRY[t].language in ("en", "code"))


def register_task(name: str, metric_fn: Union[Callable, str], max_new_tokens: int,
                  prompt_template: str, category: str, language: str,
                  first_line_only: bool = False, use_chat_template: bool = True, *,
                  offline: bool = True, overwrite: bool = False, **extra) -> TaskSpec:
    """Register an extra task. ``metric_fn`` may be a callable or the name of a metric in
    :mod:`longbench.metrics` (e.g. ``"qa_f1_score"``). LongBench's own 21 names cannot be
    replaced unless ``overwrite=True``; re-registering an extra task replaces it."""
    if not isinstance(name, str) or not name or "." in name or os.sep in name:
        raise ValueError(f"register_task: invalid task name {name!r}")
    if isinstance(metric_fn, str):
        fn = getattr(_metrics, metric_fn, None)
        if fn is None or not callable(fn):
            raise ValueError(f"register_task({name!r}): unknown metric {metric_fn!r}")
        metric_fn = fn
    if not callable(metric_fn):
        raise ValueError(f"register_task({name!r}): metric_fn must be callable")
    if int(max_new_tokens) <= 0:
        raise ValueError(f"register_task({name!r}): max_new_tokens must be > 0")
    if not isinstance(prompt_template, str):
        raise ValueError(f"register_task({name!r}): prompt_template must be a str")
    if category not in CATEGORIES:
        # Extra categories are allowed, but make typos of the LongBench ones obvious.
        lowered = {c.lower(): c for c in CATEGORIES}
        if category.lower() in lowered:
            category = lowered[category.lower()]
    existing = _REGISTRY.get(name)
    if existing is not None and existing.longbench and not overwrite:
        raise ValueError(f"register_task: {name!r} is a LongBench task; pass overwrite=True")
    spec = TaskSpec(name=name, metric=metric_fn, max_new_tokens=int(max_new_tokens),
                    prompt=prompt_template, category=category, language=language,
                    first_line_only=bool(first_line_only),
                    use_chat_template=bool(use_chat_template), offline=bool(offline),
                    longbench=False, extra=dict(extra))
    _REGISTRY[name] = spec
    return spec


def unregister_task(name: str) -> None:
    spec = _REGISTRY.get(name)
    if spec is not None and spec.longbench:
        raise ValueError(f"cannot unregister LongBench task {name!r}")
    _REGISTRY.pop(name, None)


def _import_offline() -> Optional[object]:
    """Import longbench.offline once (it registers its tasks); None when it does not exist."""
    global _OFFLINE_IMPORTED
    try:
        mod = importlib.import_module("longbench.offline")
    except ModuleNotFoundError as exc:
        if exc.name in ("longbench.offline",):
            _OFFLINE_IMPORTED = True
            return None
        raise
    _OFFLINE_IMPORTED = True
    return mod


def offline_module():
    """The offline suite module, or None when it is not installed."""
    return _import_offline()


def _lookup(name: str) -> Optional[TaskSpec]:
    spec = _REGISTRY.get(name)
    if spec is None and not _OFFLINE_IMPORTED:
        _import_offline()
        spec = _REGISTRY.get(name)
    return spec


def get_task(name: str) -> TaskSpec:
    """Spec of ``name`` (``<task>_e`` resolves to ``<task>``); ValueError lists valid names."""
    spec = _lookup(name)
    if spec is None and isinstance(name, str) and name.endswith("_e"):
        spec = _lookup(name[:-2])
    if spec is None:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(all_tasks())}")
    return spec


def is_task(name: str) -> bool:
    try:
        get_task(name)
        return True
    except ValueError:
        return False


def is_offline_task(name: str) -> bool:
    spec = _lookup(name)
    return bool(spec is not None and spec.offline)


def all_tasks() -> List[str]:
    if not _OFFLINE_IMPORTED:
        _import_offline()
    return list(_REGISTRY)


def longbench_tasks() -> List[str]:
    return list(LONGBENCH_TASKS)


def english_tasks() -> List[str]:
    """The 16 English + code tasks used by the Mustafar paper."""
    return list(ENGLISH_TASKS)


def longbench_e_tasks() -> List[str]:
    return list(LONGBENCH_E_TASKS)


def offline_tasks() -> List[str]:
    return [n for n in all_tasks() if _REGISTRY[n].offline]


def default_offline_tasks() -> List[str]:
    """The offline suite's default task list (``DEFAULT_TASKS`` / ``default_tasks()`` of
    longbench.offline if it defines one, else every offline task)."""
    mod = _import_offline()
    if mod is not None:
        fn = getattr(mod, "default_tasks", None)
        if callable(fn):
            return list(fn())
        names = getattr(mod, "DEFAULT_TASKS", None)
        if names:
            return list(names)
    return offline_tasks()


def validate_task_names(names: Iterable[str], e: bool = False) -> List[str]:
    """Check a list of task names; with ``e`` only LongBench-E tasks (or offline ones) pass."""
    out = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        base = name[:-2] if name.endswith("_e") and name[:-2] in _REGISTRY else name
        spec = get_task(base)
        if e and spec.longbench and base not in LONGBENCH_E_TASKS:
            raise ValueError(f"task {base!r} has no LongBench-E config; LongBench-E tasks: "
                             f"{', '.join(LONGBENCH_E_TASKS)}")
        out.append(base)
    if not out:
        raise ValueError("empty task list")
    return out


def category_of(name: str) -> str:
    return get_task(name).category


dataset2prompt = {n: s.prompt for n, s in _REGISTRY.items() if s.longbench}
dataset2maxlen = {n: s.max_new_tokens for n, s in _REGISTRY.items() if s.longbench}
dataset2category = dict(_LONGBENCH_CATEGORY)
