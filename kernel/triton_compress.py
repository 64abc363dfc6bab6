"""Triton kernels: prune + compress K/V into the token-major bitmap format in one pass.

Each program owns BLOCK_T consecutive tokens of one (batch, head) row: it reads the dense tile once, selects the
kept channels, and writes the bitmap words and the packed values. The output equals
`kernel.format.compress_reference(x, topk_keep_mask(score, k), k)` bit for bit (see kernel/format.py).

Top-k selection without sorting: non-negative floats order like their bit patterns read as integers, so the k-th
largest score of a token is found by building its key MSB-first (radix select: one "count keys >= candidate"
per bit; 15 rounds for fp16/bf16 magnitudes, counted two keys per int32 (SWAR), 31 for fp32 magnitudes, 32 for
weighted float32 scores of any sign). Every key above the threshold is kept; keys equal to it are admitted in
channel order until k are kept (the reference's stable sort sends ties to the lower channel). One packed cumsum
gives, per channel, the number of "greater" and "tie" channels before it, which yields both the tie admission
and the destination of each kept value in the token's value run (token t's run starts at t * k).

Measured on an H100/H200 (B=32, H=8, n=8192, D=128, fp16, one side): ~1.05-1.1 ms, ALU-bound in the 15 search
rounds (~0.5 ms) plus the scan and the layout conversion of the scattered store; reading x alone is ~0.2 ms.

fp16/bf16 without channel weights at D = 64/128 (the Kt/Vt magnitude case) goes to _prune_compress_topk16_kernel
instead: the tile is read as D/32 pieces of 32 channels that share one register layout, so keys of different pieces
pack into one int32 in place and a thread holds 4x more channels of a token (much less cross-lane work per search
round); the search runs on two 7-bit digits with four keys per int32, then the last bit; keep/scan/bitmap/store work
per piece. On an H200 at the shape above: ~0.91 ms per side vs ~1.11 (K+V ~1.79 vs ~2.20 ms), same bits.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernel.format import WORD_BITS, Chunk, words_per_token

# Score/key modes (constexpr).
KEY_FP16 = 0      # |x| of fp16: 15-bit keys
KEY_BF16 = 1      # |x| of bf16: 15-bit keys
KEY_FP32 = 2      # |x| of fp32: 31-bit keys
KEY_WEIGHTED = 3  # float32 |x| * w[c] (any sign): 32-bit signed order-preserving keys

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------------------------------------
# Shared device helpers
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _store_bitmap(bitmap_ptr, row_base, offs_t, t_mask, keep, offs_c,
                  W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_W: tl.constexpr):
    # bit c%32 of word c//32; the 32 bits of a word are distinct, so a (wrapping) int32 sum is an OR.
    bits = keep.to(tl.int32) << (offs_c % 32)[None, :]
    words = tl.sum(tl.reshape(bits, (BLOCK_T, BLOCK_W, 32)), 2)
    offs_w = tl.arange(0, BLOCK_W)
    ptrs = bitmap_ptr + row_base + offs_t[:, None] * W + offs_w[None, :]
    tl.store(ptrs, words, mask=t_mask[:, None] & (offs_w < W)[None, :])


@triton.jit
def _admit(key, thr, need, prefix, valid):
    """Keep every key > thr and the first `need` keys == thr in channel order; dest = the value's index in the
    token's run. prefix: packed (gt | eq << 16) counts of channels before this piece (0 for a whole row);
    returns (keep, dest, prefix for the next piece)."""
    gt = key > thr[:, None]
    eq = key == thr[:, None]
    packed = gt.to(tl.int32) + (eq.to(tl.int32) << 16)
    before = tl.cumsum(packed, 1) - packed + prefix[:, None]
    gt_before = before & 0xFFFF
    eq_before = before >> 16
    keep = (gt | (eq & (eq_before < need[:, None]))) & valid
    dest = gt_before + tl.minimum(eq_before, need[:, None])
    return keep, dest, prefix + tl.sum(packed, 1)


@triton.jit
def _store_values(row_ptr, dest, x, keep, NUM: tl.constexpr):
    # Flattened to 1-D so the store gets one element per lane along channels: the kept values of a token land in
    # a few contiguous sectors per warp instruction. (Left 2-D, Triton laid the scatter out token-major across
    # lanes, one sector per lane: 2x slower at 50 % sparsity on an H100.)
    tl.store(row_ptr + tl.reshape(dest, (NUM,)), tl.reshape(x, (NUM,)), mask=tl.reshape(keep, (NUM,)))


# ----------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _prune_compress_topk_kernel(
    x_ptr, w_ptr, bitmap_ptr, values_ptr,
    H, n, k,
    sx_b, sx_h, sx_n,
    sw_b, sw_h,
    D: tl.constexpr, BLOCK_D: tl.constexpr, W: tl.constexpr, BLOCK_W: tl.constexpr,
    BLOCK_T: tl.constexpr, KEY_MODE: tl.constexpr, NBITS: tl.constexpr, KEEP_ALL: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_c = tl.arange(0, BLOCK_D)
    t_mask = offs_t < n
    c_mask = offs_c < D
    mask = t_mask[:, None] & c_mask[None, :]

    x_base = b.to(tl.int64) * sx_b + h.to(tl.int64) * sx_h
    x = tl.load(x_ptr + x_base + offs_t[:, None].to(tl.int64) * sx_n + offs_c[None, :], mask=mask, other=0.0)

    if KEEP_ALL:
        keep = mask
        dest = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.int32) + offs_c[None, :]
    else:
        # ---- keys: integers whose order is the score order (ties equal) ----
        if KEY_MODE == 3:
            w = tl.load(w_ptr + b.to(tl.int64) * sw_b + h.to(tl.int64) * sw_h + offs_c, mask=c_mask, other=0.0)
            s = tl.abs(x.to(tl.float32)) * w[None, :]
            s = tl.where(s == 0.0, 0.0, s)  # -0.0 ties with +0.0, as in torch.sort
            sb = s.to(tl.int32, bitcast=True)
            key = tl.where(sb < 0, sb ^ 0x7FFFFFFF, sb)  # negative floats: flip magnitude bits -> signed order
            key = tl.where(c_mask[None, :], key, -2147483647 - 1)  # INT32_MIN (a literal -2**31 would be int64)
        elif KEY_MODE == 2:
            key = tl.where(c_mask[None, :], x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, -1)
        else:
            key = tl.where(c_mask[None, :], x.to(tl.int16, bitcast=True).to(tl.int32) & 0x7FFF, 0)

        # ---- radix select: thr = largest key value with count(key >= thr) >= k, i.e. the k-th largest key ----
        if KEY_MODE == 3:
            # sign "bit" first: is the k-th largest score non-negative?
            zero = tl.zeros((BLOCK_T,), dtype=tl.int32)
            n_nonneg = tl.sum((key >= zero[:, None]).to(tl.int32), 1)
            thr = tl.where(n_nonneg >= k, zero, zero - 2147483647 - 1)
        else:
            thr = tl.zeros((BLOCK_T,), dtype=tl.int32)
        if NBITS == 15:
            # SWAR: two 15-bit keys per int32 (adjacent channels, same thread) with a guard bit above each; after
            # subtracting the candidate from both halves, each guard bit survives iff that key >= candidate.
            # Halves the integer work of the count; the search is ALU-bound.
            pairs = tl.reshape(key, (BLOCK_T, BLOCK_D // 2, 2))
            packed_keys = tl.sum(pairs << (tl.arange(0, 2) * 16)[None, None, :], 2) | -2147450880  # | 0x80008000
            for i in tl.static_range(NBITS):
                cand = thr | (1 << (NBITS - 1 - i))
                diff = packed_keys - (cand | (cand << 16))[:, None]
                both = tl.sum((diff >> 15) & 0x10001, 1)
                thr = tl.where((both & 0xFFFF) + (both >> 16) >= k, cand, thr)
        else:
            for i in tl.static_range(NBITS):
                cand = thr | (1 << (NBITS - 1 - i))
                cnt = tl.sum((key >= cand[:, None]).to(tl.int32), 1)
                thr = tl.where(cnt >= k, cand, thr)

        # ---- keep all keys > thr, then ties at thr in channel order; one packed scan gives both prefixes ----
        need = k - tl.sum((key > thr[:, None]).to(tl.int32), 1)
        keep, dest, _ = _admit(key, thr, need, tl.zeros_like(need), mask)

    row = pid_bh.to(tl.int64)
    _store_bitmap(bitmap_ptr, row * n * W, offs_t, t_mask, keep, offs_c, W, BLOCK_T, BLOCK_W)
    _store_values(values_ptr + row * n * k, offs_t[:, None] * k + dest, x, keep, BLOCK_T * BLOCK_D)


@triton.jit
def _load_piece(x_ptr, x_base, offs_t, t_mask, sx_n, j: tl.constexpr):
    # channels [32 j, 32 j + 32) of the tile's tokens, as a (BLOCK_T, 32) tile of its own
    offs = tl.arange(0, 32)
    return tl.load(x_ptr + x_base + offs_t[:, None].to(tl.int64) * sx_n + (j * 32 + offs)[None, :],
                   mask=t_mask[:, None], other=0.0)


@triton.jit
def _key15(xp):
    return xp.to(tl.int16, bitcast=True).to(tl.int32) & 0x7FFF


@triton.jit
def _count_ge(A, B, cand, TWO: tl.constexpr):
    # per token: how many keys >= cand; keys packed two per int32 with a guard bit above each (see below)
    cr = (cand | (cand << 16))[:, None]
    s = ((A - cr) >> 15) & 0x10001
    if TWO:
        s += ((B - cr) >> 15) & 0x10001
    both = tl.sum(s, 1)
    return (both & 0xFFFF) + (both >> 16)


@triton.jit
def _count_ge4(A, cand):
    # per token: how many 7-bit keys >= cand; four keys per int32 (bytes) with a guard bit (bit 7) each
    s = ((A - (cand * 0x01010101)[:, None]) >> 7) & 0x01010101
    t = tl.sum(s, 1)  # each byte <= 32 (or 16): no carries between bytes
    return ((t * 0x01010101) >> 24) & 0xFF


@triton.jit
def _mid7(key, base):
    return tl.minimum(tl.maximum((key >> 1) - base, 0), 127)


@triton.jit
def _piece_tail(bitmap_ptr, bm_base, vrow_ptr, offs_t, t_mask, xp, key, thr, need, prefix, k,
                j: tl.constexpr, W: tl.constexpr, BLOCK_T: tl.constexpr, FLAT: tl.constexpr):
    # bitmap word j and the kept values of piece j; prefix: packed (gt | eq << 16) counts of pieces < j
    offs = tl.arange(0, 32)
    keep, dest, nxt = _admit(key, thr, need, prefix, t_mask[:, None])
    dest = offs_t[:, None] * k + dest
    word = tl.sum(keep.to(tl.int32) << offs[None, :], 1)
    tl.store(bitmap_ptr + bm_base + offs_t * W + j, word, mask=t_mask)
    if FLAT:
        _store_values(vrow_ptr, dest, xp, keep, BLOCK_T * 32)
    else:
        tl.store(vrow_ptr + dest, xp, mask=keep)
    return nxt


@triton.jit
def _prune_compress_topk16_kernel(
    x_ptr, bitmap_ptr, values_ptr,
    H, n, k,
    sx_b, sx_h, sx_n,
    D: tl.constexpr, W: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_T: tl.constexpr, TAIL: tl.constexpr,
    SEARCH: tl.constexpr,
):
    # fp16/bf16 |x|, D = 64 or 128 (W = 2 or 4 bitmap words), 0 < k < D: same output as the general kernel.
    # The tile is read as W separate (BLOCK_T, 32) pieces. The pieces share one register layout, so channel c
    # of piece p and of piece p + 1 sit in the same thread and pack into one int32 with no data movement, and a
    # thread holds up to 4x more channels of a token than in the (BLOCK_T, D) layout: most of each search
    # round's count is thread-local and the cross-lane part (shuffles + per-token bookkeeping), which dominated
    # the general kernel, shrinks to 2-3 steps. TAIL 0: keep/scan/store on the (BLOCK_T, D) tile as the general
    # kernel does; 1: per piece, flattened store; 2: per piece, 2-D store.
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = offs_t < n
    x_base = b.to(tl.int64) * sx_b + h.to(tl.int64) * sx_h

    # SWAR: two 15-bit keys per int32 (piece 2i in the low half, 2i + 1 in the high half) with a guard bit
    # above each; after subtracting the candidate from both halves, a guard bit survives iff that key >= it.
    x0 = _load_piece(x_ptr, x_base, offs_t, t_mask, sx_n, 0)
    x1 = _load_piece(x_ptr, x_base, offs_t, t_mask, sx_n, 1)
    k0 = _key15(x0)
    k1 = _key15(x1)
    A = (k0 | (k1 << 16)) | -2147450880  # | 0x80008000
    if W == 4:
        x2 = _load_piece(x_ptr, x_base, offs_t, t_mask, sx_n, 2)
        x3 = _load_piece(x_ptr, x_base, offs_t, t_mask, sx_n, 3)
        k2 = _key15(x2)
        k3 = _key15(x3)
        B = (k2 | (k3 << 16)) | -2147450880
    else:
        x2 = x0
        x3 = x1
        k2 = k0
        k3 = k1
        B = A
    # radix select, MSB first: thr = largest value with count(key >= thr) >= k, i.e. the k-th largest key
    if SEARCH == 1 and W == 4:
        # two levels on 7-bit digits, four keys (one per piece) per int32 with a guard bit each, then bit 0.
        # Level 1: the top 7 bits (key >> 8).
        A = (k0 >> 8) | ((k1 >> 8) << 8) | ((k2 >> 8) << 16) | ((k3 >> 8) << 24) | -2139062144  # 0x80808080
        t1 = tl.zeros((BLOCK_T,), dtype=tl.int32)
        for i in tl.static_range(7):
            cand = t1 | (1 << (6 - i))
            t1 = tl.where(_count_ge4(A, cand) >= k, cand, t1)
        # Level 2: bits 7..1 of the keys whose top bits equal t1; keys above count as 127 (>= every candidate),
        # keys below as 0 (never counted: candidates are >= 1): clamp((key >> 1) - (t1 << 7), 0, 127)
        base = (t1 << 7)[:, None]
        A = _mid7(k0, base) | (_mid7(k1, base) << 8) | (_mid7(k2, base) << 16) | (_mid7(k3, base) << 24) \
            | -2139062144
        t2 = tl.zeros((BLOCK_T,), dtype=tl.int32)
        for i in tl.static_range(7):
            cand = t2 | (1 << (6 - i))
            t2 = tl.where(_count_ge4(A, cand) >= k, cand, t2)
        # bit 0
        thr = (t1 << 8) | (t2 << 1)
        c = (thr | 1)[:, None]
        cnt = tl.sum((k0 >= c).to(tl.int32) + (k1 >= c).to(tl.int32) + (k2 >= c).to(tl.int32)
                     + (k3 >= c).to(tl.int32), 1)
        thr = tl.where(cnt >= k, thr | 1, thr)
    else:
        thr = tl.zeros((BLOCK_T,), dtype=tl.int32)
        for i in tl.static_range(15):
            cand = thr | (1 << (14 - i))
            thr = tl.where(_count_ge(A, B, cand, W == 4) >= k, cand, thr)

    row = pid_bh.to(tl.int64)
    vrow_ptr = values_ptr + row * n * k
    if TAIL == 0:
        offs_c = tl.arange(0, D)
        mask = t_mask[:, None] & (offs_c < D)[None, :]
        x = tl.load(x_ptr + x_base + offs_t[:, None].to(tl.int64) * sx_n + offs_c[None, :], mask=mask, other=0.0)
        key = _key15(x)
        need = k - tl.sum((key > thr[:, None]).to(tl.int32), 1)
        keep, dest, _ = _admit(key, thr, need, tl.zeros_like(need), mask)
        _store_bitmap(bitmap_ptr, row * n * W, offs_t, t_mask, keep, offs_c, W, BLOCK_T, BLOCK_W)
        _store_values(vrow_ptr, offs_t[:, None] * k + dest, x, keep, BLOCK_T * D)
    else:
        n_gt = tl.sum((k0 > thr[:, None]).to(tl.int32), 1) + tl.sum((k1 > thr[:, None]).to(tl.int32), 1)
        if W == 4:
            n_gt += tl.sum((k2 > thr[:, None]).to(tl.int32), 1) + tl.sum((k3 > thr[:, None]).to(tl.int32), 1)
        need = k - n_gt
        bm_base = row * n * W
        prefix = tl.zeros((BLOCK_T,), dtype=tl.int32)
        prefix = _piece_tail(bitmap_ptr, bm_base, vrow_ptr, offs_t, t_mask, x0, k0, thr, need, prefix, k,
                             0, W, BLOCK_T, TAIL == 1)
        prefix = _piece_tail(bitmap_ptr, bm_base, vrow_ptr, offs_t, t_mask, x1, k1, thr, need, prefix, k,
                             1, W, BLOCK_T, TAIL == 1)
        if W == 4:
            prefix = _piece_tail(bitmap_ptr, bm_base, vrow_ptr, offs_t, t_mask, x2, k2, thr, need, prefix, k,
                                 2, W, BLOCK_T, TAIL == 1)
            prefix = _piece_tail(bitmap_ptr, bm_base, vrow_ptr, offs_t, t_mask, x3, k3, thr, need, prefix, k,
                                 3, W, BLOCK_T, TAIL == 1)


@triton.jit
def _compress_masked_kernel(
    x_ptr, keep_ptr, offsets_ptr, bitmap_ptr, values_ptr,
    H, n, k, n_values,
    sx_b, sx_h, sx_n,
    sk_b, sk_h, sk_n,
    D: tl.constexpr, BLOCK_D: tl.constexpr, W: tl.constexpr, BLOCK_W: tl.constexpr,
    BLOCK_T: tl.constexpr, VARIABLE: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_c = tl.arange(0, BLOCK_D)
    t_mask = offs_t < n
    mask = t_mask[:, None] & (offs_c < D)[None, :]
    offs_t64 = offs_t[:, None].to(tl.int64)

    x = tl.load(x_ptr + b.to(tl.int64) * sx_b + h.to(tl.int64) * sx_h + offs_t64 * sx_n + offs_c[None, :],
                mask=mask, other=0.0)
    kv = tl.load(keep_ptr + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h + offs_t64 * sk_n + offs_c[None, :],
                 mask=mask, other=0)
    keep = (kv != 0) & mask
    ki = keep.to(tl.int32)
    dest = tl.cumsum(ki, 1) - ki

    row = pid_bh.to(tl.int64)
    _store_bitmap(bitmap_ptr, row * n * W, offs_t, t_mask, keep, offs_c, W, BLOCK_T, BLOCK_W)
    if VARIABLE:
        start = tl.load(offsets_ptr + row * n + offs_t, mask=t_mask, other=0)
    else:
        start = offs_t * k
    _store_values(values_ptr + row * n_values, start[:, None] + dest, x, keep, BLOCK_T * BLOCK_D)


@triton.jit
def _decompress_kernel(
    bitmap_ptr, values_ptr, offsets_ptr, out_ptr,
    n, k, n_values,
    D: tl.constexpr, BLOCK_D: tl.constexpr, W: tl.constexpr,
    BLOCK_T: tl.constexpr, VARIABLE: tl.constexpr,
):
    pid_t = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_c = tl.arange(0, BLOCK_D)
    t_mask = offs_t < n
    mask = t_mask[:, None] & (offs_c < D)[None, :]
    # Each channel reads its word (the 32 channels of a word hit the same cached address).
    words = tl.load(bitmap_ptr + row * n * W + offs_t[:, None] * W + (offs_c // 32)[None, :], mask=mask, other=0)
    keep = (((words >> (offs_c % 32)[None, :]) & 1) != 0) & mask
    ki = keep.to(tl.int32)
    dest = tl.cumsum(ki, 1) - ki
    if VARIABLE:
        start = tl.load(offsets_ptr + row * n + offs_t, mask=t_mask, other=0)
    else:
        start = offs_t * k
    vals = tl.load(values_ptr + row * n_values + start[:, None] + dest, mask=keep, other=0.0)
    tl.store(out_ptr + row * n * D + offs_t[:, None] * D + offs_c[None, :], vals, mask=mask)


# ----------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------
def _check_x(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError(f"expected x of shape [B, H, n, D], got {tuple(x.shape)}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"unsupported dtype {x.dtype}; supported: {_DTYPES}")
    words_per_token(x.shape[-1])  # raises unless D % 32 == 0
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        x = x.contiguous()
    return x


def _default_block_t(block_d: int) -> int:
    # ~1K elements per program (8 tokens at D=128) with 2 warps: the best of the sizes tried on an H100/H200
    # (the kernel is ALU-bound in the search; small programs keep more of them resident).
    return max(1, 1024 // block_d)


# fp16/bf16 split-tile kernel (D = 64/128): tokens per program and warps
_SPLIT_BLOCK_T = 8
_SPLIT_NUM_WARPS = 1
_SPLIT_TAIL = 1
_SPLIT_SEARCH = 1


def _empty_chunk(x: torch.Tensor, k: int | None, n_values: int, variable: bool) -> Chunk:
    b, h, n, d = x.shape
    bitmap = torch.zeros(b, h, n, d // WORD_BITS, dtype=torch.int32, device=x.device)
    values = torch.empty(b, h, n_values, dtype=x.dtype, device=x.device)
    offsets = torch.zeros(b, h, n, dtype=torch.int32, device=x.device) if variable else None
    return Chunk(bitmap, values, offsets, k)


def prune_compress_topk_triton(x: torch.Tensor, k: int, channel_weight: torch.Tensor | None = None, *,
                               block_t: int | None = None, num_warps: int | None = None,
                               split: bool = True, tail: int | None = None, search: int | None = None) -> Chunk:
    """Keep the k channels of largest |x| (or |x| * channel_weight[b, h, c]) per token and pack them.

    x: [B, H, n, D] fp16/bf16/fp32, last dim contiguous (other strides arbitrary); D a multiple of 32.
    channel_weight: [B, H, D], used in float32 (the product is rounded like torch's x.abs().float() * w).
    Ties go to the lower channel index, exactly as kernel.format.topk_keep_mask. Returns a fixed-mode Chunk.
    block_t tokens per program (default 1024 // D), num_warps per program: GPU tuning knobs.
    """
    x = _check_x(x)
    b, h, n, d = x.shape
    k = int(k)
    if not 0 <= k <= d:
        raise ValueError(f"k must be in [0, {d}], got {k}")
    chunk = _empty_chunk(x, k, n * k, variable=False)
    if k == 0 or chunk.values.numel() == 0:
        return chunk
    if channel_weight is not None:
        if tuple(channel_weight.shape) != (b, h, d):
            raise ValueError(f"channel_weight must be [B, H, D] = {(b, h, d)}, got {tuple(channel_weight.shape)}")
        w = channel_weight.to(device=x.device, dtype=torch.float32).contiguous()
        key_mode, nbits = KEY_WEIGHTED, 31  # + the sign step
    else:
        w = x  # unused
        key_mode = {torch.float16: KEY_FP16, torch.bfloat16: KEY_BF16, torch.float32: KEY_FP32}[x.dtype]
        nbits = 31 if key_mode == KEY_FP32 else 15
    block_d = triton.next_power_of_2(d)
    if split and key_mode in (KEY_FP16, KEY_BF16) and d in (64, 128) and k < d:
        block_t = block_t or _SPLIT_BLOCK_T
        tail = _SPLIT_TAIL if tail is None else tail
        search = _SPLIT_SEARCH if search is None else search
        grid = (triton.cdiv(n, block_t), b * h)
        _prune_compress_topk16_kernel[grid](
            x, chunk.bitmap, chunk.values,
            h, n, k,
            x.stride(0), x.stride(1), x.stride(2),
            D=d, W=d // WORD_BITS, BLOCK_W=d // WORD_BITS, BLOCK_T=block_t, TAIL=tail, SEARCH=search,
            num_warps=num_warps or _SPLIT_NUM_WARPS,
        )
        return chunk
    num_warps = num_warps or 2
    block_t = block_t or _default_block_t(block_d)
    grid = (triton.cdiv(n, block_t), b * h)
    _prune_compress_topk_kernel[grid](
        x, w, chunk.bitmap, chunk.values,
        h, n, k,
        x.stride(0), x.stride(1), x.stride(2),
        d * h, d,
        D=d, BLOCK_D=block_d, W=d // WORD_BITS, BLOCK_W=block_d // WORD_BITS,
        BLOCK_T=block_t, KEY_MODE=key_mode, NBITS=nbits, KEEP_ALL=(k == d),
        num_warps=num_warps,
    )
    return chunk


def compress_masked_triton(x: torch.Tensor, keep: torch.Tensor, k: int | None = None, *,
                           n_values: int | None = None, check: bool = True,
                           block_t: int | None = None, num_warps: int = 2) -> Chunk:
    """Pack x where `keep` (bool, same shape) is set; same result as kernel.format.compress_reference.

    Fixed mode (k given): every token keeps exactly k values. Variable mode (k None): every (b, h) row keeps the
    same total; per-token offsets are computed here. check=True validates the mask like the reference (a device
    sync); n_values (variable mode) lets the caller give the row total and skip that sync.
    """
    x = _check_x(x)
    b, h, n, d = x.shape
    if keep.shape != x.shape:
        raise ValueError(f"keep must have the shape of x {tuple(x.shape)}, got {tuple(keep.shape)}")
    keep = keep.to(device=x.device, dtype=torch.bool)
    if d > 1 and keep.stride(-1) != 1:
        keep = keep.contiguous()
    variable = k is None
    offsets = None
    if variable or check:
        counts = keep.sum(-1, dtype=torch.int32)
    if variable:
        offsets = (torch.cumsum(counts, -1, dtype=torch.int32) - counts).contiguous()
        if n_values is None or check:
            row_tot = counts.sum(-1)
            if row_tot.numel() and not bool((row_tot == row_tot.flatten()[0]).all()):
                raise ValueError("every (batch, head) row of a chunk must keep the same number of values")
            total = int(row_tot.flatten()[0]) if row_tot.numel() else 0
            if n_values is not None and n_values != total:
                raise ValueError(f"n_values={n_values} but the mask keeps {total} values per row")
            n_values = total
        kk = 0
    else:
        kk = int(k)
        if check and not bool((counts == kk).all()):
            raise ValueError(f"fixed-k compression needs exactly {kk} kept values per token")
        n_values = n * kk
    chunk = _empty_chunk(x, k, n_values, variable)
    if offsets is not None:
        chunk.offsets = offsets
    if chunk.bitmap.numel() == 0:
        return chunk
    block_d = triton.next_power_of_2(d)
    block_t = block_t or _default_block_t(block_d)
    grid = (triton.cdiv(n, block_t), b * h)
    keep_u8 = keep.view(torch.uint8)
    _compress_masked_kernel[grid](
        x, keep_u8, offsets if variable else chunk.bitmap, chunk.bitmap, chunk.values,
        h, n, kk, n_values,
        x.stride(0), x.stride(1), x.stride(2),
        keep_u8.stride(0), keep_u8.stride(1), keep_u8.stride(2),
        D=d, BLOCK_D=block_d, W=d // WORD_BITS, BLOCK_W=block_d // WORD_BITS,
        BLOCK_T=block_t, VARIABLE=variable, num_warps=num_warps,
    )
    return chunk


def decompress_triton(chunk: Chunk, head_dim: int, dtype: torch.dtype | None = None, *,
                      block_t: int | None = None, num_warps: int = 2) -> torch.Tensor:
    """Dense [B, H, n, D] with zeros at pruned entries (same as kernel.format.decompress_chunk)."""
    bitmap = chunk.bitmap.contiguous()
    values = chunk.values.contiguous()
    b, h, n, w = bitmap.shape
    if w != words_per_token(head_dim):
        raise ValueError(f"bitmap has {w} words per token, head_dim {head_dim} needs {head_dim // WORD_BITS}")
    out = torch.zeros(b, h, n, head_dim, dtype=values.dtype, device=values.device)
    if out.numel() == 0:
        return out if dtype is None else out.to(dtype)
    variable = chunk.offsets is not None
    offsets = chunk.offsets.contiguous() if variable else bitmap
    block_d = triton.next_power_of_2(head_dim)
    block_t = block_t or _default_block_t(block_d)
    grid = (triton.cdiv(n, block_t), b * h)
    _decompress_kernel[grid](
        bitmap, values, offsets, out,
        n, 0 if variable else int(chunk.k), values.shape[-1],
        D=head_dim, BLOCK_D=block_d, W=w, BLOCK_T=block_t, VARIABLE=variable, num_warps=num_warps,
    )
    return out if dtype is None else out.to(dtype)
