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
    # fp16/bf16 kernels sum in a different order than SDPA: compare logits with a tolerance and require that the
    # greedy tokens agree wherever the top-2 margin is not within that tolerance
    diff = (scores[0] - scores[1]).abs()
    assert torch.allclose(scores[0], scores[1], atol=0.05, rtol=0.02), \
        f"max |logit diff| {diff.max():.4f} at {tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])}, " \
        f"logit scale {scores[0].abs().max():.2f}"
    first = (outs[0] != outs[1]).float().argmax(1)
    for b in range(ids.shape[0]):
        if torch.equal(outs[0][b], outs[1][b]):
            continue
        t = int(first[b]) - ids.shape[1]
        top2 = scores[0][b, t].topk(2).values
        assert float(top2[0] - top2[1]) < 0.1, f"row {b} diverged at step {t} with a clear margin"
