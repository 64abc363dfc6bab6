"""The attention benchmark's report pieces that run without a GPU: the read-floor kernel (in Triton's interpreter on
CPU), the flush-mode check and the target summary."""
import pytest
import torch

from kernel import bench_attention as ba

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("n,block", [(1, 2048), (5000, 2048), (8192, 4096), (12289, 4096)])
def test_read_floor_kernel_reads_every_word(n, block):
    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(n)
    x = torch.randint(-2**31, 2**31 - 1, (n,), generator=g, dtype=torch.int32)
    grid = ((n + block - 1) // block,)
    out = torch.full(grid, 12345, dtype=torch.int32)
    x, out = x.to(DEVICE), out.to(DEVICE)
    ba._read_floor_kernel()[grid](x, out, n, BLOCK=block, num_warps=4)
    got = 0
    for v in out.cpu().tolist():
        got ^= v & 0xFFFFFFFF
    want = 0
    for v in x.cpu().tolist():
        want ^= v & 0xFFFFFFFF
    assert got == want


def test_timer_rejects_unknown_flush():
    with pytest.raises(ValueError, match="flush"):
        ba.Timer(flush="evict")


def _row(shape, b, l, s, dense, sparse, floor=None):
    r = dict(shape=shape, B=b, L=l, sparsity=s, k=19, dense_us=dense, sparse_us=sparse, simulated_us=dense,
             speedup=dense / sparse, ceiling=2.76, sparse_bytes=72_000_000, sparse_gbs=1.0,
             pct_copy_bw=80.0 if sparse < 50 else 60.0, rel_err=2.5e-4)
    if floor is not None:
        r.update(floor_us=floor, floor_speedup=dense / floor)
    return r


def test_target_summary_names_misses_beyond_the_read_floor():
    rows = [_row("llama3-8b", 32, 8192, 0.7, 360.0, 170.0, floor=140.0),   # meets 2.0x
            _row("smollm2", 8, 32768, 0.7, 74.0, 50.0, floor=40.0),       # misses; floor allows 1.85x only
            _row("smollm2", 32, 32768, 0.7, 290.0, 155.0, floor=110.0),   # misses; floor would allow it
            _row("smollm2", 8, 32768, 0.5, 74.0, 63.0)]                   # no floor measured (older files)
    lines = ba.target_summary(rows)
    text = "\n".join(lines)
    assert "speedup 1.48-2.12x (target >= 2.0x: 1 of 3 cases meet it)" in text
    assert "even the read floor misses 2.0x: smollm2 B=8 L=32768 (dense / floor 1.85x)" in text
    assert "B=32 L=32768 (dense / floor" not in text
    table = ba.markdown_table(dict(gpu="g", sm_count=1, torch="t", cuda="c", date="d", command="x", copy_gbs=1.0,
                                   timing="t", reps=3, window=32), rows)
    assert "| 40.0 | 1.85 |" in table
    assert "| 74.0 | 63.0 |" in table  # the row without a floor still renders
