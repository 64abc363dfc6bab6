"""Triton prune+compress kernels == the PyTorch reference, bit for bit.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set before triton is imported); with a
GPU they are compiled and run on cuda tensors. Shapes are small because the interpreter is slow.
"""
import os
import sys

import torch

_INTERPRET = not torch.cuda.is_available()
# triton imported earlier in this process without the flag cannot interpret (its own helpers are compiled-only)
_TOO_LATE = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0").lower() not in ("1", "true", "on")
if _INTERPRET:
    # Read when kernels are decorated, and by triton's own modules later: it must stay set for the session.
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

triton = pytest.importorskip("triton")

if _INTERPRET and _TOO_LATE:
    pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set (another test module imported it "
                "first): set TRITON_INTERPRET=1 in tests/conftest.py for CPU runs", allow_module_level=True)

from kernel import compress as dispatch  # noqa: E402
from kernel.format import Chunk, compress_reference, decompress_chunk, kept_per_token, topk_keep_mask  # noqa: E402
from kernel.triton_compress import (  # noqa: E402
    compress_masked_triton,
    decompress_triton,
    prune_compress_topk_triton,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32}


def _randn(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype).to(DEVICE)


def _reference(x, k, cw=None):
    score = x.abs().float() if cw is None else x.abs().float() * cw[:, :, None, :]
    return compress_reference(x, topk_keep_mask(score, k), k)


def assert_same(got: Chunk, ref: Chunk):
    assert got.k == ref.k
    assert got.bitmap.dtype == torch.int32 and got.bitmap.shape == ref.bitmap.shape
    assert torch.equal(got.bitmap, ref.bitmap), "bitmap differs"
    assert got.values.dtype == ref.values.dtype and got.values.shape == ref.values.shape
    iv = _INT_VIEW[ref.values.dtype]
    assert torch.equal(got.values.view(iv), ref.values.view(iv)), "values differ (bitwise)"
    if ref.offsets is None:
        assert got.offsets is None
    else:
        assert torch.equal(got.offsets, ref.offsets)


def _k(d, s):
    return d if s == "full" else kept_per_token(d, s)


# ---------------------------------------------------------------------------------------------------------------
# prune_compress_topk
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("s", [0.3, 0.5, 0.7, 0.9, "full"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [64, 128])
def test_topk_sparsities(d, dtype, s):
    x = _randn((1, 2, 37, d), dtype, seed=d + len(str(s)))
    k = _k(d, s)
    assert_same(prune_compress_topk_triton(x, k), _reference(x, k))


@pytest.mark.parametrize("s", [0.3, 0.7])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [64, 128])
def test_topk_channel_weight(d, dtype, s):
    x = _randn((2, 3, 9, d), dtype, seed=3)
    g = torch.Generator().manual_seed(4)
    cw = (torch.rand(2, 3, d, generator=g) * 4).to(DEVICE)
    k = _k(d, s)
    assert_same(prune_compress_topk_triton(x, k, cw), _reference(x, k, cw))


def test_topk_channel_weight_signed_and_zero():
    # weights of any sign (and exact zeros) must still follow the float order of the product
    d = 64
    x = _randn((1, 2, 20, d), torch.float16, seed=5)
    g = torch.Generator().manual_seed(6)
    cw = torch.randn(1, 2, d, generator=g)
    cw[..., ::7] = 0.0
    cw[..., 3::11] = -0.0
    cw = cw.to(DEVICE)
    for k in (1, 20, 45, 63):
        assert_same(prune_compress_topk_triton(x, k, cw), _reference(x, k, cw))
    # threshold among zero scores: +0.0 and -0.0 products tie (channel order decides)
    cw = torch.rand(1, 2, d)
    cw[..., ::3] = 0.0
    cw[..., 1::3] = -0.0
    cw = cw.to(DEVICE)
    for k in (30, 50):
        assert_same(prune_compress_topk_triton(x, k, cw), _reference(x, k, cw))


@pytest.mark.parametrize("bh", [(2, 3), (1, 8)], ids=str)
@pytest.mark.parametrize("n", [1, 7, 33, 100])
@pytest.mark.parametrize("d", [64, 128])
def test_topk_shapes(d, n, bh):
    dtype = DTYPES[(n + d) % 3]
    x = _randn((*bh, n, d), dtype, seed=n)
    k = kept_per_token(d, 0.5)
    assert_same(prune_compress_topk_triton(x, k), _reference(x, k))


@pytest.mark.parametrize("d", [64, 128])
def test_topk_strided_input(d):
    big = _randn((2, 3, 64, d), torch.float16, seed=7)
    x = big[:, :, 5:45]  # a slice along n: strides of the big tensor
    assert not x.is_contiguous()
    k = kept_per_token(d, 0.7)
    assert_same(prune_compress_topk_triton(x, k), _reference(x, k))
    # [B, n, H, D] storage viewed as [B, H, n, D], weighted
    y = _randn((2, 11, 3, d), torch.bfloat16, seed=8).transpose(1, 2)
    cw = torch.rand(2, 3, d).to(DEVICE)
    assert_same(prune_compress_topk_triton(y, k, cw), _reference(y, k, cw))


def _tie_tensor(d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (2, 2, 12, d), generator=g).float()  # magnitudes in {0, 1, 2}: many ties
    x[0, 0, 1] = 0.0                                              # all-zero token
    x[0, 1, 2] = -0.0                                             # all negative zero
    signs = torch.randint(0, 2, (d,), generator=g).bool()
    x[1, 0, 3] = torch.where(signs, torch.tensor(-0.0), torch.tensor(0.0))  # +0 / -0 mix
    x[1, 1, 4] = torch.where(signs, -1.0, 1.0)                   # all magnitudes equal
    x[1, 1, 5, : d // 4] = 3.0                                    # fewer distinct values than k
    return x.to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [64, 128])
def test_topk_ties(d, dtype):
    x = _tie_tensor(d, dtype, seed=d)
    for s in (0.5, 0.7):
        k = kept_per_token(d, s)
        assert_same(prune_compress_topk_triton(x, k), _reference(x, k))


@pytest.mark.parametrize("d", [64, 128])
def test_topk_ties_weighted(d):
    x = _tie_tensor(d, torch.float16, seed=1)
    cw = torch.randint(0, 3, (2, 2, d)).float().to(DEVICE)  # products tie too
    k = kept_per_token(d, 0.5)
    assert_same(prune_compress_topk_triton(x, k, cw), _reference(x, k, cw))


def test_topk_block_and_head_dim_options():
    # several token blocks per row with a tail, and a head_dim that is not a power of two
    x = _randn((1, 2, 21, 64), torch.float16, seed=9)
    assert_same(prune_compress_topk_triton(x, 17, block_t=8, num_warps=2), _reference(x, 17))
    x96 = _randn((1, 1, 5, 96), torch.float32, seed=10)
    assert_same(prune_compress_topk_triton(x96, 40), _reference(x96, 40))


def test_topk_edge_cases():
    x = _randn((1, 2, 3, 64), torch.float16, seed=11)
    c = prune_compress_topk_triton(x, 0)
    assert_same(c, _reference(x, 0))
    empty = x[:, :, :0]
    assert_same(prune_compress_topk_triton(empty, 8), _reference(empty, 8))
    with pytest.raises(ValueError):
        prune_compress_topk_triton(x, 65)
    with pytest.raises(ValueError):
        prune_compress_topk_triton(x, 8, torch.ones(1, 2, 32, device=DEVICE))


# ---------------------------------------------------------------------------------------------------------------
# compress_masked / decompress
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [64, 128])
def test_masked_fixed_round_trip(d):
    x = _randn((2, 3, 19, d), torch.bfloat16, seed=12)
    k = kept_per_token(d, 0.7)
    keep = topk_keep_mask(torch.rand(x.shape, generator=torch.Generator().manual_seed(13)), k).to(DEVICE)
    got = compress_masked_triton(x, keep, k)
    assert_same(got, compress_reference(x, keep, k))
    dense = x * keep
    assert torch.equal(decompress_triton(got, d), dense)
    assert torch.equal(decompress_chunk(got, d), dense)


def _channelwise_mask(b, h, n, d, per_channel, seed):
    """Each channel keeps `per_channel` tokens: every row keeps d * per_channel values, tokens vary."""
    score = torch.rand(b, h, n, d, generator=torch.Generator().manual_seed(seed))
    return topk_keep_mask(score, per_channel, dim=2)


@pytest.mark.parametrize("d", [64, 128])
def test_masked_variable_round_trip(d):
    b, h, n = 2, 3, 23
    x = _randn((b, h, n, d), torch.float16, seed=14)
    keep = _channelwise_mask(b, h, n, d, 9, seed=15).to(DEVICE)
    assert len(set(keep.sum(-1).flatten().tolist())) > 1  # really variable per token
    got = compress_masked_triton(x, keep)
    ref = compress_reference(x, keep)
    assert_same(got, ref)
    assert got.values.shape[-1] == d * 9
    dense = x * keep
    assert torch.equal(decompress_triton(got, d), dense)
    # the caller may pass the known row total and skip the checks (no device sync)
    assert_same(compress_masked_triton(x, keep, n_values=d * 9, check=False), ref)


def test_masked_strided_and_errors():
    d = 64
    big = _randn((1, 2, 30, d), torch.float32, seed=16)
    x = big[:, :, 4:20]
    keep = topk_keep_mask(torch.rand(x.shape), 10).to(DEVICE)
    assert_same(compress_masked_triton(x, keep, 10), compress_reference(x, keep, 10))
    with pytest.raises(ValueError):
        compress_masked_triton(x, keep, 11)  # wrong count per token
    bad = keep.clone()
    bad[0, 0, 0] = ~bad[0, 0, 0]
    with pytest.raises(ValueError):
        compress_masked_triton(x, bad)       # rows keep different totals


# ---------------------------------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------------------------------
def test_dispatch_auto_uses_triton_and_matches_torch(monkeypatch):
    monkeypatch.delenv("MUSTAFAR_COMPRESS_IMPL", raising=False)
    assert dispatch.compress_impl(DEVICE) == "triton"
    monkeypatch.setenv("MUSTAFAR_COMPRESS_IMPL", "torch")
    assert dispatch.compress_impl(DEVICE) == "torch"
    monkeypatch.delenv("MUSTAFAR_COMPRESS_IMPL")
    x = _randn((1, 2, 10, 64), torch.float16, seed=17)
    cw = torch.rand(1, 2, 64).to(DEVICE)
    auto = dispatch.prune_compress_topk(x, 20, cw)
    assert_same(auto, dispatch.prune_compress_topk(x, 20, cw, impl="torch"))
    keep = _channelwise_mask(1, 2, 10, 64, 3, seed=18).to(DEVICE)
    assert_same(dispatch.compress_masked(x, keep), dispatch.compress_masked(x, keep, impl="torch"))
    assert torch.equal(dispatch.decompress(auto, 64), dispatch.decompress(auto, 64, impl="torch"))
    with pytest.raises(ValueError):
        dispatch.prune_compress_topk(x, 20, impl="nope")
    with pytest.raises(ValueError):
        dispatch.prune_compress_topk(x, 20, cw, impl="cuda")  # the CUDA kernel takes no channel weights


def test_dispatch_logs_once_and_falls_back_with_warning(monkeypatch, caplog):
    import logging
    import warnings

    import kernel.triton_compress as tc

    monkeypatch.setenv("MUSTAFAR_COMPRESS_IMPL", "triton")  # on a GPU, "auto" would take the CUDA kernel here
    x = _randn((1, 1, 4, 64), torch.float16, seed=19)
    monkeypatch.setattr(dispatch, "_logged", set())
    monkeypatch.setattr(dispatch, "_warned", set())
    with caplog.at_level(logging.INFO, logger="mustafar"):
        dispatch.prune_compress_topk(x, 8, impl="torch")
        dispatch.prune_compress_topk(x, 8, impl="torch")
    assert sum("torch implementation" in r.getMessage() for r in caplog.records) == 1

    def broken(*args, **kwargs):
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(tc, "prune_compress_topk_triton", broken)
    with pytest.warns(RuntimeWarning, match="falling back"):
        got = dispatch.prune_compress_topk(x, 8)
    assert_same(got, _reference(x, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second fallback is silent
        dispatch.prune_compress_topk(x, 8)
    with pytest.raises(RuntimeError):
        dispatch.prune_compress_topk(x, 8, impl="triton")  # forced: no silent fallback


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
@pytest.mark.parametrize("d", [64, 128])
def test_topk_split_search_and_tuning(d, dtype):
    # fp16/bf16 at D = 64/128 use the split-tile kernel; the general kernel (split=False), every tail / search
    # variant and other block_t / num_warps must give the same bits (ties, zeros, -0.0, a partial last tile, strided input)
    base = _tie_tensor(d, dtype, seed=d + 2)
    x = torch.cat([base, base.flip(2)], 2)[:, :, :-1]
    x[0, 1, 2] = -0.0
    y = _randn((2, 13, 2, d), dtype, seed=21).transpose(1, 2)
    for inp in (x, y):
        for k in (1, kept_per_token(d, 0.7), d - 1):
            ref = _reference(inp, k)
            assert_same(prune_compress_topk_triton(inp, k, split=False), ref)
            for tail, search, bt, nw in ((None, None, None, None), (0, 0, 16, 2), (1, 0, 4, 1), (2, 1, 32, 4),
                                         (1, 1, 4, 1), (0, 1, 8, 2), (2, 0, 8, 1)):
                got = prune_compress_topk_triton(inp, k, block_t=bt, num_warps=nw, tail=tail, search=search)
                assert_same(got, ref)
