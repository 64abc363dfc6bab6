"""CPU: the PyTorch path of kernel.attention equals the reference on random shapes (GQA and MHA, head_dim 64/128,
ragged comp_start/comp_end, win_start, fixed and variable mode, views of larger stores)."""
import logging

import pytest
import torch

from kernel.attention import attention_impl, sparse_decode_attention, torch_sparse_decode_attention
from kernel.bench_attention import make_inputs, rel_err
from kernel.format import SparseStore, sparse_decode_attention_reference

# (B, Hq, H, D, T, k, mode, v_mode, ragged, views, misalign, n_win, dtype)
CASES = [
    (2, 8, 2, 128, 37, 39, "fixed", "fixed", False, False, False, 5, torch.float16),
    (3, 4, 4, 64, 50, 20, "fixed", "variable", True, True, True, 7, torch.float16),
    (1, 9, 3, 64, 29, 7, "variable", "variable", True, False, False, 3, torch.bfloat16),
    (2, 12, 1, 128, 41, 64, "variable", "fixed", True, True, False, 9, torch.float16),
    (2, 3, 3, 128, 0, 5, "fixed", "fixed", False, False, False, 4, torch.float16),   # no compressed tokens
    (2, 16, 2, 64, 66, 64, "fixed", "fixed", True, True, True, 0, torch.bfloat16),   # no window
    (3, 2, 1, 128, 17, 1, "fixed", "fixed", True, False, False, 2, torch.float16),   # k = 1
    (1, 5, 5, 64, 23, 64, "fixed", "fixed", False, True, False, 1, torch.float32),   # dense tokens, fp32
]


def _reference(inp):
    n = inp["n_win"]
    return sparse_decode_attention_reference(
        inp["q"], inp["k_exact"], inp["v_exact"], inp["k_win"][:, :, :n], inp["v_win"][:, :, :n], inp["scale"],
        inp["comp_start"], inp["comp_end"], inp["win_start"])


@pytest.mark.parametrize("idx", range(len(CASES)), ids=[f"case{i}" for i in range(len(CASES))])
def test_cpu_path_matches_reference(idx):
    case = CASES[idx]
    B, Hq, H, D, T, k, mode, v_mode, ragged, views, misalign, n_win, dtype = case
    inp = make_inputs(B, Hq, H, D, T, k, mode=mode, v_mode=v_mode, dtype=dtype, device="cpu", n_win=n_win,
                      ragged=ragged, views=views, misalign=misalign, seed=100 + idx)
    if ragged:  # keep at least one valid token per row (the reference has no answer for an empty row)
        inp["win_start"] = torch.zeros_like(inp["win_start"]) if n_win else inp["win_start"]
        if n_win == 0:
            inp["comp_end"] = torch.maximum(inp["comp_end"], inp["comp_start"].long() + 1)
    ref_out, ref_lse = _reference(inp)
    out32, lse32 = torch_sparse_decode_attention(
        inp["q"], inp["k_chunk"], inp["v_chunk"], inp["k_win"], inp["v_win"], n_win, inp["scale"],
        inp["comp_start"], inp["comp_end"], inp["win_start"])
    assert rel_err(out32, ref_out) < 1e-5
    assert torch.allclose(lse32, ref_lse, atol=1e-5, rtol=0)
    out, lse = sparse_decode_attention(
        inp["q"], inp["k_chunk"], inp["v_chunk"], inp["k_win"], inp["v_win"], n_win, inp["scale"],
        inp["comp_start"], inp["comp_end"], inp["win_start"], return_lse=True)
    assert out.dtype == inp["q"].dtype and out.shape == inp["q"].shape
    assert lse.dtype == torch.float32 and lse.shape == inp["q"].shape[:2]
    tol = {torch.float16: 2e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5}[dtype]
    assert rel_err(out, ref_out) < tol
    assert torch.allclose(lse, ref_lse, atol=1e-5, rtol=0)
    out_only = sparse_decode_attention(
        inp["q"], inp["k_chunk"], inp["v_chunk"], inp["k_win"], inp["v_win"], n_win, inp["scale"],
        inp["comp_start"], inp["comp_end"], inp["win_start"], impl="torch")
    assert torch.equal(out_only, out)


def test_store_views_and_capacity():
    """Chunks that are views of a SparseStore (spare token and value capacity) give the reference result."""
    torch.manual_seed(0)
    B, Hq, H, D, k = 2, 6, 2, 64, 24
    stores = {}
    inp = make_inputs(B, Hq, H, D, 30, k, device="cpu", n_win=4, seed=5)
    for name in ("k_exact", "v_exact"):
        st = SparseStore(B, H, D, torch.float16, "cpu", k, capacity_tokens=8)
        ch = inp[name]
        for t0 in (0, 11, 19):  # appends in three pieces, growing the store
            t1 = {0: 11, 11: 19, 19: 30}[t0]
            from kernel.format import Chunk
            st.append(Chunk(ch.bitmap[:, :, t0:t1], ch.values[:, :, t0 * k:t1 * k], None, k))
        stores[name] = st
    kv = stores["k_exact"].as_chunk()
    vv = stores["v_exact"].as_chunk()
    assert kv.values.data_ptr() == stores["k_exact"].values.data_ptr()  # a view, not a copy
    from kernel.format import Chunk
    k_cap = Chunk(stores["k_exact"].bitmap, stores["k_exact"].values, None, k)  # whole capacity
    v_cap = Chunk(stores["v_exact"].bitmap, stores["v_exact"].values, None, k)
    ce = torch.full((B,), 30)
    ref_out, ref_lse = _reference(inp)
    for kc, vc, end in ((kv, vv, None), (k_cap, v_cap, ce)):
        out, lse = sparse_decode_attention(inp["q"], kc, vc, inp["k_win"], inp["v_win"], 4, inp["scale"],
                                           comp_end=end, return_lse=True)
        assert rel_err(out, ref_out) < 2e-3
        assert torch.allclose(lse, ref_lse, atol=1e-5, rtol=0)


def test_empty_row_gives_zero_and_neg_inf():
    inp = make_inputs(2, 4, 2, 64, 10, 8, device="cpu", n_win=0, seed=1)
    cs = torch.tensor([3, 0])
    ce = torch.tensor([3, 10])  # row 0 attends nothing
    out, lse = sparse_decode_attention(inp["q"], inp["k_chunk"], inp["v_chunk"], inp["k_win"], inp["v_win"], 0,
                                       inp["scale"], cs, ce, return_lse=True)
    assert torch.all(out[0] == 0) and torch.all(torch.isneginf(lse[0]))
    assert torch.isfinite(out[1]).all() and torch.isfinite(lse[1]).all()


def test_dispatch_names_and_logging(caplog):
    assert attention_impl("cpu") == "torch"
    inp = make_inputs(1, 2, 1, 64, 5, 8, device="cpu", n_win=2, seed=2)
    with pytest.raises(ValueError):
        sparse_decode_attention(inp["q"], inp["k_chunk"], inp["v_chunk"], inp["k_win"], inp["v_win"], 2, 1.0,
                                impl="nope")
    with pytest.raises(ValueError):
        sparse_decode_attention(inp["q"], inp["k_chunk"], inp["v_chunk"], inp["k_win"], inp["v_win"], 2, 1.0,
                                impl="cuda")
    import kernel.attention as A
    A._said.discard("impl:torch")
    with caplog.at_level(logging.INFO, logger="mustafar"):
        for _ in range(2):
            sparse_decode_attention(inp["q"], inp["k_chunk"], inp["v_chunk"], inp["k_win"], inp["v_win"], 2, 1.0)
    msgs = [r.getMessage() for r in caplog.records if "PyTorch path" in r.getMessage()]
    assert len(msgs) == 1  # logged once


def _args(inp, **over):
    a = dict(q=inp["q"], k_chunk=inp["k_chunk"], v_chunk=inp["v_chunk"], k_win=inp["k_win"], v_win=inp["v_win"],
             n_win=inp["n_win"], comp_start=inp["comp_start"], comp_end=inp["comp_end"], win_start=inp["win_start"])
    a.update(over)
    return a


@pytest.mark.parametrize("idx", [0, 1, 3, 5])
def test_cuda_arg_check_accepts_valid_inputs(idx):
    from kernel.attention import check_cuda_args

    B, Hq, H, D, T, k, mode, v_mode, ragged, views, misalign, n_win, dtype = CASES[idx]
    inp = make_inputs(B, Hq, H, D, T, k, mode=mode, v_mode=v_mode, dtype=dtype, device="cpu", n_win=n_win,
                      ragged=ragged, views=views, misalign=misalign, seed=7)
    check_cuda_args(**_args(inp), need_cuda=False)
    with pytest.raises(ValueError, match="q must be a CUDA tensor"):
        check_cuda_args(**_args(inp))


def test_cuda_arg_check_names_bad_inputs():
    """Bad input must be a Python ValueError naming the argument before the extension is called (a C++ exception
    leaving the JIT extension aborted the process on one GPU image)."""
    from kernel.attention import check_cuda_args
    from kernel.format import Chunk

    inp = make_inputs(2, 8, 2, 128, 37, 39, dtype=torch.float16, device="cpu", n_win=5, seed=3)
    kc, vc = inp["k_chunk"], inp["v_chunk"]
    bad = {
        "q must be float16": dict(q=inp["q"].float()),
        "head_dim must be 64 or 128": dict(q=inp["q"][..., :96]),
        "multiple of KV heads": dict(q=inp["q"][:, :7]),
        "k bitmap must be int32": dict(k_chunk=Chunk(kc.bitmap.long(), kc.values, None, kc.k)),
        "v bitmap must have shape": dict(v_chunk=Chunk(vc.bitmap[:, :, :-1], vc.values, None, vc.k)),
        "k values dtype": dict(k_chunk=Chunk(kc.bitmap, kc.values.float(), None, kc.k)),
        "v values hold": dict(v_chunk=Chunk(vc.bitmap, vc.values[..., :-1], None, vc.k)),
        "fixed-mode k must be in": dict(k_chunk=Chunk(kc.bitmap, kc.values, None, 0)),
        "k offsets must be int32": dict(k_chunk=Chunk(kc.bitmap, kc.values, torch.zeros(2, 2, 37), None)),
        "v_win must have shape": dict(v_win=inp["v_win"][:, :1]),
        "different token counts": dict(v_win=inp["v_win"][:, :, :-1]),
        r"n_win \(9\) must be in": dict(n_win=9),
        "comp_start must be": dict(comp_start=torch.zeros(3, dtype=torch.int32)),
        "win_start must be": dict(win_start=torch.zeros(2, dtype=torch.float32)),
        "out must be": dict(out=torch.empty(2, 8, 64, dtype=torch.float16)),
        "lse must be": dict(lse=torch.empty(2, 8, dtype=torch.float16)),
    }
    for msg, over in bad.items():
        extra = {k: over.pop(k) for k in ("out", "lse") if k in over}
        with pytest.raises(ValueError, match=msg):
            check_cuda_args(**_args(inp, **over), **extra, need_cuda=False)
