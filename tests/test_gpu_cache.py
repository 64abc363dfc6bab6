"""The Mustafar cache on a GPU: compressed backend (Triton compression + CUDA decode attention) vs simulated."""
import pytest
import torch

from models import MustafarConfig, apply_mustafar, cache_kwargs
from tests.tiny_models import tiny_model

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["llama_gqa_d128", "qwen2_gqa_d64", "llama_mha_d64"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("methods", [("Kt_Mag", "Vt_Mag"), ("Kc_Mag", "Vc_Opt"), ("ThinK", "ThinV")])
def test_gpu_compressed_matches_simulated(name, dtype, methods):
    from kernel.attention import attention_impl
    from kernel.compress import compress_impl

    assert attention_impl("cuda") == "cuda" and compress_impl("cuda") == "triton"
    model = tiny_model(name, dtype=dtype).cuda()
    torch.manual_seed(0)
    ids = torch.randint(1, 96, (3, 200), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :37] = 0  # a left-padded row
    outs, scores = [], []
    for backend in ("simulated", "compressed"):
        cfg = MustafarConfig(k_method=methods[0], v_method=methods[1], k_sparsity=0.7, v_sparsity=0.5, window=16,
                             group_size=16, backend=backend)
        cache = apply_mustafar(model, cfg)()
        out = model.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, pad_token_id=0,
                             output_scores=True, return_dict_in_generate=True, **cache_kwargs(model, cache))
        outs.append(out.sequences)
        scores.append(torch.stack(out.scores, 1).float())
    # fp16/bf16 kernels sum in a different order than SDPA, so a near-tie can flip a greedy token; after that the
    # two continuations differ. Compare logits up to each row's first differing token; a flip is allowed only where
    # the simulated top-2 margin is within the numerical tolerance.
    tol = 0.02 if dtype == torch.float16 else 0.06
    n_prompt = ids.shape[1]
    for b in range(ids.shape[0]):
        diff_at = (outs[0][b, n_prompt:] != outs[1][b, n_prompt:]).nonzero()
        upto = int(diff_at[0]) if len(diff_at) else outs[0].shape[1] - n_prompt
        a, c = scores[0][b, :upto + 1], scores[1][b, :upto + 1]
        err = (a - c).abs().max()
        assert err <= tol, f"row {b}: max |logit diff| {err:.4f} before/at step {upto} (logit scale {a.abs().max():.2f})"
        if len(diff_at):
            top2 = scores[0][b, upto].topk(2).values
            assert float(top2[0] - top2[1]) <= 2 * tol, f"row {b} diverged at step {upto} with a clear margin"
