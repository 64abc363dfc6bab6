"""The CUDA prune + compress kernel (kernel/csrc/compress_topk.cu) against the reference, bit for bit (GPU only)."""
import pytest
import torch

from kernel import compress as dispatch
from kernel.format import Chunk, compress_reference, topk_keep_mask

pytestmark = pytest.mark.gpu

DTYPES = (torch.float16, torch.bfloat16)
KS = (1, 19, 38, 64, 90, 128)


@pytest.fixture(scope="module")
def variants():
    from kernel import cuda_ext

    if cuda_ext.find_nvcc() is None:
        pytest.skip("nvcc not found")
    return list(range(cuda_ext.load().prune_compress_topk_num_variants()))


def _reference(x, k):
    return compress_reference(x, topk_keep_mask(x.abs().float(), k), k)


def assert_same(got: Chunk, ref: Chunk):
    assert got.k == ref.k and got.offsets is None and ref.offsets is None
    assert got.bitmap.dtype == torch.int32 and got.bitmap.shape == ref.bitmap.shape
    assert torch.equal(got.bitmap, ref.bitmap), "bitmap differs"
    assert got.values.dtype == ref.values.dtype and got.values.shape == ref.values.shape
    assert torch.equal(got.values.view(torch.int16), ref.values.view(torch.int16)), "values differ (bitwise)"


def check(x, k, variants, ref=None):
    ref = _reference(x, k) if ref is None else ref
    for v in variants:
        assert_same(dispatch.prune_compress_topk_cuda(x, k, variant=v), ref)
    return ref


def _randn(shape, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(shape, generator=g, device="cuda").to(dtype)


def _random_bits(shape, dtype, seed):
    """Any 16-bit pattern but NaN (infinities, subnormals, +-0 included)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randint(-32768, 32768, shape, generator=g, device="cuda", dtype=torch.int32).to(torch.int16).view(dtype)
    return torch.where(torch.isnan(x), torch.zeros_like(x), x)


def _tie_tensor(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    b, h, n, d = shape
    x = torch.randint(-2, 3, shape, generator=g).float()            # magnitudes in {0, 1, 2}: many ties
    x[0, 0, 0] = 0.0                                               # all-zero token
    x[0, -1, 1 % n] = -0.0                                         # all negative zero
    signs = torch.randint(0, 2, (d,), generator=g).bool()
    x[-1, 0, 2 % n] = torch.where(signs, torch.tensor(-0.0), torch.tensor(0.0))  # +0 / -0 mix
    x[-1, -1, 3 % n] = torch.where(signs, -1.0, 1.0)               # all magnitudes equal
    x[-1, -1, 4 % n, : d // 4] = 3.0                               # fewer distinct values than k
    x[0, 0, 5 % n, ::3] = float("inf")
    return x.to(dtype).cuda()


@pytest.mark.parametrize("n", [1, 37, 1000])
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [64, 128])
def test_matches_reference(d, dtype, k, n, variants):
    if k > d:
        k = d
    x = _randn((2, 3, n, d), dtype, seed=n * 1000 + k)
    check(x, k, variants)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [64, 128])
def test_random_bit_patterns_and_ties(d, dtype, variants):
    xs = [_random_bits((2, 2, 75, d), dtype, seed=d), _tie_tensor((2, 3, 41, d), dtype, seed=d)]
    # coarse values: few distinct magnitudes per token (ties at the threshold in most tokens)
    xs.append((_randn((1, 2, 66, d), torch.float32, seed=3) * 2).round().to(dtype))
    for x in xs:
        for k in (1, 2, 19, 38, d // 2, 90 % d, d - 1, d):
            check(x, k, variants)


@pytest.mark.parametrize("d", [64, 128])
def test_strided_and_misaligned_views(d, variants):
    k = 38
    big = _randn((2, 3, 64, d), torch.float16, seed=7)
    check(big[:, :, 5:45], k, variants)                            # slice along n
    check(big[:, 1:], k, variants)                                 # slice along heads
    check(big[::2, ::2, 3:], k, variants)                          # strided batch and head
    y = _randn((2, 11, 3, d), torch.bfloat16, seed=8).transpose(1, 2)  # [B, n, H, D] storage as [B, H, n, D]
    assert not y.is_contiguous()
    check(y, k, variants)
    wide = _randn((2, 2, 9, d + 8), torch.float16, seed=9)
    check(wide[..., 3:3 + d], k, variants)                         # rows not 16-byte aligned: copied first
    check(wide[..., :d], k, variants)                              # 16-byte aligned rows, row stride d + 8
    sq = _randn((1, 2, d, d), torch.float16, seed=10).transpose(2, 3)  # last dim not contiguous
    check(sq, k, variants)


def test_many_tiles_and_reused_memory(variants):
    # more tiles than resident warps (each warp loops, double-buffered); a second run over other data in the memory
    # the first one freed must overwrite every output element
    for dtype, d, k in ((torch.float16, 128, 38), (torch.bfloat16, 64, 19)):
        for seed in (11, 12):
            x = _randn((4, 8, 1531, d), dtype, seed=seed)
            check(x, k, variants)


@pytest.mark.parametrize("d", [64, 128])
def test_matches_triton(d, variants):
    pytest.importorskip("triton")
    from kernel.triton_compress import prune_compress_topk_triton

    for dtype in DTYPES:
        x = _randn((2, 4, 333, d), dtype, seed=d + 1)
        for k in (1, 38, 64, d - 1, d):
            ref = prune_compress_topk_triton(x, k)
            check(x, k, variants, ref=ref)


def test_edge_cases_and_bad_input(variants):
    x = _randn((1, 2, 3, 64), torch.float16, seed=13)
    for v in variants:
        c = dispatch.prune_compress_topk_cuda(x, 0, variant=v)  # as the Triton path: nothing kept
        assert c.values.shape == (1, 2, 0) and c.bitmap.shape == (1, 2, 3, 2) and not c.bitmap.any()
        empty = x[:, :, :0]
        assert_same(dispatch.prune_compress_topk_cuda(empty, 8, variant=v), _reference(empty, 8))
    with pytest.raises(ValueError):
        dispatch.prune_compress_topk_cuda(x, 65)
    with pytest.raises(ValueError):
        dispatch.prune_compress_topk_cuda(x, -1)
    with pytest.raises(TypeError):
        dispatch.prune_compress_topk_cuda(x.float(), 8)
    with pytest.raises(ValueError):
        dispatch.prune_compress_topk_cuda(_randn((1, 2, 3, 96), torch.float16, seed=1), 8)
    with pytest.raises(ValueError):
        dispatch.prune_compress_topk_cuda(x[0], 8)
    with pytest.raises(ValueError):
        dispatch.prune_compress_topk_cuda(x.cpu(), 8)
    with pytest.raises(ValueError):
        dispatch.prune_compress_topk_cuda(x, 8, variant=99)
    # forced impl="cuda" refuses what the kernel does not cover
    with pytest.raises(ValueError):
        dispatch.prune_compress_topk(x, 8, torch.ones(1, 2, 64, device="cuda"), impl="cuda")
    with pytest.raises(ValueError):
        dispatch.prune_compress_topk(x.float(), 8, impl="cuda")
    with pytest.raises(ValueError):
        dispatch.compress_masked(x, x > 0, impl="cuda")


def test_dispatch(monkeypatch):
    import warnings

    monkeypatch.delenv("MUSTAFAR_COMPRESS_IMPL", raising=False)
    assert dispatch.compress_impl("cuda", torch.float16, 128) == "cuda"
    assert dispatch.compress_impl("cuda", torch.bfloat16, 64) == "cuda"
    assert dispatch.compress_impl("cuda", torch.float32, 128) == "triton"
    assert dispatch.compress_impl("cuda", torch.float16, 128, weighted=True) == "triton"
    assert dispatch.compress_impl("cuda") == "triton"  # operations the CUDA kernel does not cover
    monkeypatch.setenv("MUSTAFAR_COMPRESS_IMPL", "triton")
    assert dispatch.compress_impl("cuda", torch.float16, 128) == "triton"
    monkeypatch.setenv("MUSTAFAR_COMPRESS_IMPL", "cuda")
    assert dispatch.compress_impl("cuda", torch.float16, 128) == "cuda"
    assert dispatch.compress_impl("cuda", torch.float32, 128) == "triton"
    monkeypatch.delenv("MUSTAFAR_COMPRESS_IMPL")

    x = _randn((2, 2, 50, 128), torch.float16, seed=14)
    ref = _reference(x, 38)
    assert_same(dispatch.prune_compress_topk(x, 38), ref)
    assert_same(dispatch.prune_compress_topk(x, 38, impl="cuda"), ref)
    assert_same(dispatch.prune_compress_topk(x, 38, impl="triton"), ref)

    # a CUDA failure under "auto": one warning, then Triton; forced: raises
    def broken(*args, **kwargs):
        raise RuntimeError("simulated CUDA failure")

    monkeypatch.setattr(dispatch, "_warned", set())
    monkeypatch.setattr(dispatch, "prune_compress_topk_cuda", broken)
    with pytest.warns(RuntimeWarning, match="CUDA kernel failed.*falling back to the Triton kernel"):
        assert_same(dispatch.prune_compress_topk(x, 38), ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(dispatch.prune_compress_topk(x, 38), ref)
    with pytest.raises(RuntimeError):
        dispatch.prune_compress_topk(x, 38, impl="cuda")
