"""The Mustafar cache on stock transformers models (simulated backend; the compressed one in test_backends.py)."""
import pytest
import torch
from transformers import DynamicCache, GPT2Config

from models import MustafarConfig, apply_mustafar, cache_kwargs, check_model_config
from tests.tiny_models import SPECS, clone, tiny_model

torch.set_num_threads(1)


def decode_logits(model, ids, steps, cache=None, attention_mask=None):
    """Greedy decode by hand; returns the logits of the prefill's last position and of each decode step."""
    out = []
    cache = cache if cache is not None else DynamicCache()
    kw = cache_kwargs(model, cache)
    mask = attention_mask
    with torch.no_grad():
        res = model(input_ids=ids, attention_mask=mask, use_cache=True, **kw)
        logits = res.logits[:, -1]
        out.append(logits)
        for _ in range(steps):
            nxt = logits.argmax(-1, keepdim=True)
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(nxt)], 1)
            res = model(input_ids=nxt, attention_mask=mask, use_cache=True, **kw)
            logits = res.logits[:, -1]
            out.append(logits)
    return out


@pytest.mark.parametrize("name", list(SPECS))
def test_zero_sparsity_is_identical_to_stock(name):
    model = tiny_model(name)
    ids = torch.randint(0, 96, (2, 45))
    ref = decode_logits(model, ids, 6)
    factory = apply_mustafar(model, MustafarConfig(k_sparsity=0.0, v_sparsity=0.0, window=8))
    got = decode_logits(model, ids, 6, factory())
    for a, b in zip(ref, got):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["llama_gqa_d128", "qwen2_gqa_d64"])
@pytest.mark.parametrize("methods", [("Kt_Mag", "Vt_Mag"), ("Kc_Opt", "Vc_Opt"), ("ThinK", "ThinV")])
def test_prefill_identical_then_pruning_changes_decode(name, methods):
    model = tiny_model(name)
    ids = torch.randint(0, 96, (1, 64))
    ref = decode_logits(clone(model), ids, 8)
    factory = apply_mustafar(model, MustafarConfig(k_method=methods[0], v_method=methods[1], k_sparsity=0.7,
                                                   v_sparsity=0.7, window=8, group_size=8))
    cache = factory()
    got = decode_logits(model, ids, 8, cache)
    assert torch.equal(ref[0], got[0])  # prefill attention is dense and unpruned
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(ref[1:], got[1:]))
    st = cache.stats()
    assert st["k_sparsity_pruned_region"] > 0.6 and st["v_sparsity_pruned_region"] > 0.6


def test_generate_greedy_first_token_matches_dense_and_window_bookkeeping():
    model = tiny_model("llama_mha_d64")
    ids = torch.randint(0, 96, (1, 40))
    ref = clone(model).generate(ids, max_new_tokens=12, do_sample=False)
    factory = apply_mustafar(model, MustafarConfig(k_sparsity=0.5, v_sparsity=0.5, window=16))
    cache = factory()
    out = model.generate(ids, max_new_tokens=12, do_sample=False, **cache_kwargs(model, cache))
    assert out.shape == ref.shape
    assert out[0, 40] == ref[0, 40]
    layer = cache.layers[0]
    # 40 prompt + 11 fed-back tokens = 51 stored; the window keeps exactly 16 dense tokens
    assert layer.get_seq_length() == 51
    assert layer.storage.n_win == 16 and layer.storage.n_comp == 35
    st = cache.stats()
    assert st["k_sparsity_pruned_region"] == pytest.approx(0.5)
    assert st["k_sparsity_overall"] == pytest.approx(0.5 * 35 / 51)


def test_channel_methods_evict_whole_groups():
    model = tiny_model("llama_mha_d64")
    factory = apply_mustafar(model, MustafarConfig(k_method="Kc_Mag", v_method="Vt_Mag", window=8, group_size=8))
    cache = factory()
    ids = torch.randint(0, 96, (1, 30))
    decode_logits(model, ids, 10, cache)
    layer = cache.layers[1]
    n = layer.get_seq_length()
    assert n == 40
    assert layer.storage.n_comp % 8 == 0 and 8 <= layer.storage.n_win < 16


def test_prompt_shorter_than_window_and_sampling():
    model = tiny_model("qwen2_gqa_d64")
    factory = apply_mustafar(model, MustafarConfig(window=32))
    ids = torch.randint(0, 96, (2, 5))
    cache = factory()
    out = model.generate(ids, max_new_tokens=40, do_sample=True, top_k=20, **cache_kwargs(model, cache))
    assert out.shape == (2, 45)
    assert cache.layers[0].storage.n_comp == 44 - 32


@pytest.mark.parametrize("methods", [("Kt_Mag", "Vt_Mag"), ("Kt_Opt", "Vt_Opt"), ("ThinK", "ThinV"), ("none", "none")])
def test_left_padded_batch_matches_single_runs(methods):
    model = tiny_model("llama_gqa_d128")
    factory = apply_mustafar(model, MustafarConfig(k_method=methods[0], v_method=methods[1], k_sparsity=0.5,
                                                   v_sparsity=0.5, window=8))
    torch.manual_seed(3)
    a = torch.randint(1, 96, (1, 37))
    b = torch.randint(1, 96, (1, 24))
    pad = torch.zeros(1, 13, dtype=torch.long)
    batch = torch.cat([a, torch.cat([pad, b], 1)], 0)
    mask = torch.ones_like(batch)
    mask[1, :13] = 0
    singles = [model.generate(x, max_new_tokens=16, do_sample=False, **cache_kwargs(model, factory()))[0, x.shape[1]:]
               for x in (a, b)]
    both = model.generate(batch, attention_mask=mask, max_new_tokens=16, do_sample=False, pad_token_id=0,
                          **cache_kwargs(model, factory()))[:, 37:]
    assert torch.equal(both[0], singles[0])
    assert torch.equal(both[1], singles[1])


def test_output_aware_state_persists_across_decode_steps():
    model = tiny_model("llama_gqa_d128")
    factory = apply_mustafar(model, MustafarConfig(k_method="Kt_Opt", v_method="Vc_Opt", window=8, group_size=4))
    cache = factory()
    ids = torch.randint(0, 96, (1, 20))
    decode_logits(model, ids, 1, cache)
    layer = cache.layers[0]
    q0 = layer.state.q_abs.clone()
    a0 = layer.state.token_attn[:, :, :21].clone()
    decode_logits_more = 6
    kw = cache_kwargs(model, cache)
    with torch.no_grad():
        for _ in range(decode_logits_more):
            model(input_ids=torch.randint(0, 96, (1, 1)), use_cache=True, **kw)
    assert layer.state.q_abs is not None and (layer.state.q_abs > q0).all()
    # the tokens still in the window kept collecting attention
    a1 = layer.state.token_attn[:, :, :21]
    assert (a1 >= a0 - 1e-6).all() and (a1 > a0 + 1e-6).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs(dtype):
    model = tiny_model("llama_gqa_d128", dtype=dtype)
    factory = apply_mustafar(model, MustafarConfig(k_sparsity=0.5, v_sparsity=0.5, window=4))
    out = model.generate(torch.randint(0, 96, (2, 12)), max_new_tokens=6, do_sample=False,
                         **cache_kwargs(model, factory()))
    assert out.shape == (2, 18)


@pytest.mark.parametrize("kwargs,match", [
    (dict(k_sparsity=1.0), "k_sparsity"),
    (dict(v_sparsity=-0.1), "v_sparsity"),
    (dict(k_method="Kt_Foo"), "valid names: none, Kt_Mag"),
    (dict(v_method="ThinK"), "v_method"),
    (dict(window=-1), "window"),
    (dict(group_size=0), "group_size"),
    (dict(backend="gpu"), "backend"),
    (dict(prune_rule="x"), "prune_rule"),
])
def test_bad_config_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MustafarConfig(**kwargs).validate()


def test_unsupported_models_refused_before_work():
    with pytest.raises(ValueError, match="not supported.*llama, mistral, qwen2, qwen3"):
        check_model_config(GPT2Config())
    from transformers import MistralConfig
    with pytest.raises(ValueError, match="sliding-window"):
        check_model_config(MistralConfig(sliding_window=4096))


@pytest.mark.parametrize("backend", ["simulated", "compressed"])
def test_beam_search_runs_and_matches_between_backends(backend):
    model = tiny_model("llama_gqa_d128")
    ids = torch.randint(0, 96, (2, 30))
    outs = []
    for be in ("simulated", backend):
        factory = apply_mustafar(model, MustafarConfig(k_sparsity=0.5, v_sparsity=0.5, window=8, backend=be))
        outs.append(model.generate(ids, max_new_tokens=10, num_beams=3, do_sample=False,
                                   **cache_kwargs(model, factory())))
    assert outs[0].shape == (2, 40)
    assert torch.equal(outs[0], outs[1])
