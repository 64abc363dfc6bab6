"""Prompt construction, generation settings and prompt budgets (LONGBENCH.md, steps 1-5)."""
from __future__ import annotations

import json
import os
from typing import List, Optional, Tuple

from longbench.tasks import CONFIG_DIR, LONGBENCH_TASKS, get_task

# Packaged offline default models whose short name is not the checkpoint's basename.
_PACKAGED_BASENAMES = {"smollm2": "SmolLM2-135M-Instruct"}

_CACHE = {}


def _json(name: str) -> dict:
    if name not in _CACHE:
        with open(os.path.join(CONFIG_DIR, name), encoding="utf-8") as f:
            _CACHE[name] = json.load(f)
    return _CACHE[name]


def model2maxlen() -> dict:
    return dict(_json("model2maxlen.json"))


def model2path() -> dict:
    return dict(_json("model2path.json"))


def _basename(path: str) -> str:
    return os.path.basename(str(path).rstrip("/\\"))


def model_basename(model_name_or_path: str, model_config=None) -> str:
    """Basename used for budgets and run-directory names.

    Short names of config/model2path.json resolve to their hub id first; the packaged ``smollm2``
    maps to ``SmolLM2-135M-Instruct``; a GGUF file loses its extension. If the result is not in
    model2maxlen and ``model_config`` names a known checkpoint, that name is used instead.
    """
    name = str(model_name_or_path)
    name = model2path().get(name, name)
    if name in _PACKAGED_BASENAMES:
        return _PACKAGED_BASENAMES[name]
    base = _basename(name)
    if base.lower().endswith(".gguf"):
        base = base[:-5]
    table = model2maxlen()
    if base not in table and model_config is not None:
        cfg_name = _basename(getattr(model_config, "_name_or_path", "") or
                             getattr(model_config, "name_or_path", "") or "")
        if cfg_name in table:
            return cfg_name
    return base


def prompt_budget(model_name_or_path: str, task: Optional[str] = None, model_config=None) -> int:
    """Prompt budget (``max_length`` of the truncation step) for a model.

    Known models: config/model2maxlen.json by basename. Unknown models:
    ``config.max_position_embeddings - max_new_tokens(task)`` (with a printed notice); with
    ``task=None`` the largest ``max_new_tokens`` of LongBench (512) is reserved.
    """
    base = model_basename(model_name_or_path, model_config)
    table = model2maxlen()
    max_pos = getattr(model_config, "max_position_embeddings", None) if model_config else None
    if base in table:
        budget = int(table[base])
        # A budget that fills the whole context leaves no room for the answer (a defect of earlier harnesses,
        # e.g. 4096 for Llama-2's 4096 positions): keep prompt + max_new_tokens inside the context.
        if max_pos and task:
            room = int(max_pos) - get_task(task).max_new_tokens
            if budget > room:
                _notice_once(f"[longbench] notice: {base!r} budget {budget} + {get_task(task).max_new_tokens} new "
                             f"tokens exceeds its {max_pos} positions; prompts of {task} truncated to {room}")
                budget = room
        return budget
    if not max_pos:
        raise ValueError(
            f"no prompt budget known for model {base!r} (not in config/model2maxlen.json) and no "
            f"model config with max_position_embeddings; pass --max_length")
    reserve = (get_task(task).max_new_tokens if task
               else max(get_task(t).max_new_tokens for t in LONGBENCH_TASKS))
    budget = int(max_pos) - int(reserve)
    if budget <= 0:
        raise ValueError(f"model {base!r}: max_position_embeddings={max_pos} leaves no room for "
                         f"{reserve} new tokens; pass --max_length")
    print(f"[longbench] notice: {base!r} is not in config/model2maxlen.json; prompt budget = "
          f"max_position_embeddings ({max_pos}) - max_new_tokens ({reserve}) = {budget}")
    return budget


_NOTICES: set = set()


def _notice_once(msg: str) -> None:
    if msg not in _NOTICES:
        _NOTICES.add(msg)
        print(msg)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _ids(encoded) -> List[int]:
    ids = encoded["input_ids"] if not hasattr(encoded, "input_ids") else encoded.input_ids
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return list(ids)


def truncate_middle(prompt: str, tokenizer, max_length: int) -> str:
    """Step 2-3: tokenize with default special tokens; if longer than ``max_length`` keep the
    first and last ``int(max_length/2)`` tokens, decode each with skip_special_tokens=True and
    join the two strings directly."""
    ids = _ids(tokenizer(prompt, truncation=False))
    if len(ids) > max_length:
        half = int(max_length / 2)
        head = ids[:half]
        tail = ids[len(ids) - half:] if half > 0 else []
        prompt = (tokenizer.decode(head, skip_special_tokens=True)
                  + tokenizer.decode(tail, skip_special_tokens=True))
    return prompt


def build_prompt(task: str, sample: dict, tokenizer, max_length: int,
                 use_chat_template: Optional[bool] = None) -> Tuple[List[int], str]:
    """Steps 1-5 of LONGBENCH.md. Returns ``(input_ids, prompt_text)``.

    ``use_chat_template``: None = the task's rule (LongBench skip list) and only if the
    tokenizer has a chat template; False = never; True = whenever the tokenizer has one.
    The final tokenization uses the default special tokens, except that a BOS already written
    by the chat template is not added a second time.
    """
    spec = get_task(task)
    prompt = spec.prompt.format(**sample)                       # 1
    prompt = truncate_middle(prompt, tokenizer, int(max_length))  # 2-3
    wrap = spec.use_chat_template if use_chat_template is None else bool(use_chat_template)
    templated = False
    if wrap and has_chat_template(tokenizer):                    # 4
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        templated = True
    add_special = True                                           # 5
    bos = getattr(tokenizer, "bos_token", None)
    if templated and bos and prompt.startswith(bos):
        add_special = False
    ids = _ids(tokenizer(prompt, truncation=False, add_special_tokens=add_special))
    return ids, prompt


def newline_token_id(tokenizer) -> int:
    """Id the tokenizer uses for "\\n" (last id of encoding "\\n" without special tokens)."""
    ids = tokenizer.encode("\n", add_special_tokens=False)
    if not ids:
        raise ValueError("tokenizer encodes '\\n' to nothing; cannot build the samsum stop rule")
    return int(ids[-1])


def _as_list(x) -> List[int]:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return [int(i) for i in x if i is not None]
    return [int(x)]


def generation_kwargs(task: str, tokenizer, model=None) -> dict:
    """Greedy decoding with ``max_new_tokens`` from dataset2maxlen; samsum stops at the first
    newline token and generates at least one token. If ``model`` is given its generation
    config's EOS ids are kept in the samsum stop list (passing eos_token_id replaces them)."""
    spec = get_task(task)
    kw = {"max_new_tokens": spec.max_new_tokens, "do_sample": False, "num_beams": 1}
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is not None:
        kw["pad_token_id"] = int(pad)
    base = task[:-2] if task.endswith("_e") else task
    if base == "samsum" or spec.extra.get("stop_at_newline"):
        stops = _as_list(getattr(tokenizer, "eos_token_id", None))
        gen_cfg = getattr(model, "generation_config", None) if model is not None else None
        stops += _as_list(getattr(gen_cfg, "eos_token_id", None))
        stops.append(newline_token_id(tokenizer))
        seen = []
        for i in stops:
            if i not in seen:
                seen.append(i)
        kw["eos_token_id"] = seen
        kw["min_new_tokens"] = 1
    return kw
