"""mem_spd_test.py on the CPU: small shapes, every mode, files written with their provenance."""
import json
import os

import pytest
import torch

import mem_spd_test


@pytest.fixture()
def tiny_shape(tmp_path):
    cfg = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 96,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 128,
           "max_position_embeddings": 1024}
    p = tmp_path / "tiny.json"
    p.write_text(json.dumps(cfg))
    return str(p)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU smoke test")
def test_cpu_smoke_all_modes(tmp_path, tiny_shape):
    out = tmp_path / "res"
    mem_spd_test.main(["--mode", "all", "--model", f"random:{tiny_shape}", "--prompt_lens", "96", "--gen_len", "6",
                       "--steps", "2", "--batch_sizes", "1,2", "--window", "8", "--out_dir", str(out),
                       "--tag", "_t", "--ttft_len", "64"])
    e2e = json.load(open(out / "e2e_t.json"))
    assert "CPU" in e2e["meta"]["device"] and "smoke" in e2e["meta"]["note"]
    assert e2e["meta"]["command"]
    methods = {r["method"] for r in e2e["rows"]}
    assert {"dense (StaticCache)", "dense (preallocated)", "Kt_Mag0.5/Vt_Mag0.5", "Kt_Mag0.7/Vt_Mag0.7"} <= methods
    sparse = [r for r in e2e["rows"] if r["method"] == "Kt_Mag0.7/Vt_Mag0.7"]
    assert all(r["k_sparsity_achieved"] > 0.69 and r["decode_tok_s"] > 0 for r in sparse)
    comp = json.load(open(out / "compress_t.json"))
    assert any("TTFT" in r["what"] for r in comp["rows"])
    assert os.path.exists(out / "e2e_t.png") and os.path.exists(out / "e2e_t.md")


def test_bad_flags_are_refused_before_work():
    with pytest.raises(SystemExit):
        mem_spd_test.parse_args(["--sparsities", "1.5"])
    with pytest.raises(SystemExit):
        mem_spd_test.parse_args(["--k_method", "Vt_Mag"])
