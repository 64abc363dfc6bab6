"""The one dispatch point for decode attention over [compressed tokens | dense window].

`sparse_decode_attention(...)` runs the CUDA kernel (kernel/csrc, built on first use) when q is on a CUDA device
and the extension builds, else a PyTorch path with the semantics of `kernel.format.sparse_decode_attention_reference`
(float32 math). It logs once which implementation runs (logger "mustafar") and warns once when a CUDA call falls
back to PyTorch.
"""
from __future__ import annotations

import logging

import torch

from kernel import cuda_ext
from kernel.format import Chunk, unpack_bits

log = logging.getLogger("mustafar")
_said: set[str] = set()

IMPLS = ("auto", "cuda", "torch")


def _once(key: str, level: int, msg: str, *args) -> None:
    if key not in _said:
        _said.add(key)
        log.log(level, msg, *args)


def attention_impl(device) -> str:
    """'cuda' if the CUDA kernel serves this device, else 'torch'."""
    device = torch.device(device)
    if device.type == "cuda" and cuda_ext.available():
        return "cuda"
    return "torch"


def _cuda_unsupported(q: torch.Tensor, k_chunk: Chunk) -> str | None:
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"dtype {q.dtype} (the kernel takes float16/bfloat16)"
    if q.shape[-1] not in (64, 128):
        return f"head_dim {q.shape[-1]} (the kernel takes 64/128)"
    h = k_chunk.bitmap.shape[1]
    if h == 0 or q.shape[1] % h or q.shape[1] // h > 16:
        return f"{q.shape[1]} query heads over {h} KV heads (the kernel takes <= 16 per KV head)"
    return None


def sparse_decode_attention(q, k_chunk: Chunk, v_chunk: Chunk, k_win, v_win, n_win: int, scale: float,
                            comp_start=None, comp_end=None, win_start=None, return_lse: bool = False,
                            impl: str = "auto"):
    """Decode attention of q [B, Hq, D] over compressed tokens [comp_start, comp_end) of (k_chunk, v_chunk)
    followed by the window tokens [win_start, n_win) of k_win / v_win [B, H, Wcap, D].

    Returns out [B, Hq, D] in q.dtype, or (out, lse [B, Hq] float32, natural log) when return_lse.
    impl: "auto" (CUDA kernel when possible), "cuda" (raise if unavailable) or "torch".
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; valid: {IMPLS}")
    use_cuda = False
    if impl == "cuda":
        if not q.is_cuda:
            raise ValueError("impl='cuda' needs q on a CUDA device")
        why = _cuda_unsupported(q, k_chunk)
        if why:
            raise ValueError(f"impl='cuda' does not support {why}")
        cuda_ext.load()  # raises RuntimeError with the reason
        use_cuda = True
    elif impl == "auto" and q.is_cuda:
        why = _cuda_unsupported(q, k_chunk)
        if why is None and not cuda_ext.available():
            why = cuda_ext.unavailable_reason() or "extension unavailable"
        if why is None:
            use_cuda = True
        else:
            _once(f"fallback:{why}", logging.WARNING,
                  "mustafar: CUDA sparse decode attention unavailable (%s); using the PyTorch path", why)
    if use_cuda:
        _once("impl:cuda", logging.INFO, "mustafar: decode attention runs the CUDA sparse kernel")
        return _cuda_attention(q, k_chunk, v_chunk, k_win, v_win, n_win, scale, comp_start, comp_end, win_start,
                               return_lse)
    _once("impl:torch", logging.INFO, "mustafar: decode attention runs the PyTorch path (float32 math)")
    out, lse = torch_sparse_decode_attention(q, k_chunk, v_chunk, k_win, v_win, n_win, scale, comp_start, comp_end,
                                             win_start)
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out


def check_cuda_args(q, k_chunk: Chunk, v_chunk: Chunk, k_win, v_win, n_win, comp_start=None, comp_end=None,
                    win_start=None, out=None, lse=None, need_cuda: bool = True) -> None:
    """The CUDA binding's input checks, done in Python first (ValueError naming the argument).

    The binding checks the same things, but a C++ exception leaving a JIT-built extension has been seen to abort
    the process instead of raising on some images; checking here keeps bad input a Python error. Metadata only:
    no device sync."""
    def bad(msg):
        raise ValueError(f"sparse decode attention: {msg}")

    if need_cuda and not q.is_cuda:
        bad("q must be a CUDA tensor")
    if q.dtype not in (torch.float16, torch.bfloat16):
        bad(f"q must be float16 or bfloat16, got {q.dtype}")
    if q.dim() != 3 or q.stride(-1) != 1:
        bad(f"q must have shape [B, Hq, D] with a contiguous last dim, got {tuple(q.shape)}")
    b, hq, d = q.shape
    if d not in (64, 128):
        bad(f"head_dim must be 64 or 128, got {d}")
    kb = k_chunk.bitmap
    if kb.dim() != 4:
        bad(f"k bitmap must have shape [B, H, T, D/32], got {tuple(kb.shape)}")
    h, t = kb.shape[1], kb.shape[2]
    if h <= 0 or hq % h or hq // h > 16:
        bad(f"query heads ({hq}) must be a multiple of KV heads ({h}), at most 16 per KV head")

    def same_dev(x, name):
        if x.device != q.device:
            bad(f"{name} is on {x.device} but q is on {q.device}")

    for side, ch in (("k", k_chunk), ("v", v_chunk)):
        bm, vals, offs = ch.bitmap, ch.values, ch.offsets
        same_dev(bm, f"{side} bitmap")
        same_dev(vals, f"{side} values")
        if bm.dtype != torch.int32:
            bad(f"{side} bitmap must be int32, got {bm.dtype}")
        if tuple(bm.shape) != (b, h, t, d // 32):
            bad(f"{side} bitmap must have shape [B, H, T, D/32] = {[b, h, t, d // 32]}, got {tuple(bm.shape)}")
        if bm.shape[3] > 1 and bm.stride(3) != 1:
            bad(f"{side} bitmap word dim must be contiguous")
        if vals.dtype != q.dtype:
            bad(f"{side} values dtype {vals.dtype} differs from q dtype {q.dtype}")
        if vals.dim() != 3 or vals.shape[0] != b or vals.shape[1] != h:
            bad(f"{side} values must have shape [B, H, n_values] with B={b}, H={h}, got {tuple(vals.shape)}")
        if vals.shape[2] > 1 and vals.stride(2) != 1:
            bad(f"{side} values last dim must be contiguous")
        if offs is not None:
            same_dev(offs, f"{side} offsets")
            if offs.dtype != torch.int32 or tuple(offs.shape) != (b, h, t):
                bad(f"{side} offsets must be int32 [B, H, T] = {[b, h, t]}, got {offs.dtype} {tuple(offs.shape)}")
        else:
            k = int(ch.k or 0)
            if not 1 <= k <= d:
                bad(f"{side} fixed-mode k must be in 1..{d}, got {k}")
            if vals.shape[2] < t * k:
                bad(f"{side} values hold {vals.shape[2]} entries, fixed mode needs T*k = {t * k}")
    for name, w in (("k_win", k_win), ("v_win", v_win)):
        same_dev(w, name)
        if w.dtype != q.dtype:
            bad(f"{name} dtype {w.dtype} differs from q dtype {q.dtype}")
        if w.dim() != 4 or w.shape[0] != b or w.shape[1] != h or w.shape[3] != d:
            bad(f"{name} must have shape [B, H, Wcap, D] with B={b}, H={h}, D={d}, got {tuple(w.shape)}")
    if k_win.shape[2] != v_win.shape[2]:
        bad("k_win and v_win hold different token counts")
    if not 0 <= int(n_win) <= k_win.shape[2]:
        bad(f"n_win ({int(n_win)}) must be in 0..Wcap ({k_win.shape[2]})")
    for name, x in (("comp_start", comp_start), ("comp_end", comp_end), ("win_start", win_start)):
        if x is not None:
            same_dev(x, name)
            if x.dim() != 1 or x.shape[0] != b or x.dtype not in (torch.int32, torch.int64):
                bad(f"{name} must be an int32/int64 tensor of shape [B] = [{b}], got {x.dtype} {tuple(x.shape)}")
    if out is not None:
        same_dev(out, "out")
        if out.dtype != q.dtype or tuple(out.shape) != (b, hq, d) or out.stride(-1) != 1:
            bad(f"out must be a {q.dtype} tensor of shape {[b, hq, d]} with a contiguous last dim")
    if lse is not None:
        same_dev(lse, "lse")
        if lse.dtype != torch.float32 or tuple(lse.shape) != (b, hq) or not lse.is_contiguous():
            bad(f"lse must be a contiguous float32 tensor of shape {[b, hq]}")


def _cuda_attention(q, k_chunk, v_chunk, k_win, v_win, n_win, scale, comp_start=None, comp_end=None,
                    win_start=None, return_lse=False, num_splits: int = 0, num_stages: int = 0, layout: int = 0,
                    gather: int = 0, out=None, lse=None):
    """Direct call of the CUDA kernel (num_splits / num_stages: 0 = automatic; out / lse: optional preallocated
    outputs; exposed for benchmarks and tests)."""
    check_cuda_args(q, k_chunk, v_chunk, k_win, v_win, n_win, comp_start, comp_end, win_start, out, lse)
    mod = cuda_ext.load()
    res = mod.sparse_decode_attention(
        q, k_chunk.bitmap, k_chunk.values, k_chunk.offsets, int(k_chunk.k or 0),
        v_chunk.bitmap, v_chunk.values, v_chunk.offsets, int(v_chunk.k or 0),
        k_win, v_win, int(n_win), float(scale), comp_start, comp_end, win_start, bool(return_lse),
        int(num_splits), int(num_stages), int(layout), int(gather), out, lse)
    return (res[0], res[1]) if return_lse else res[0]


# ----------------------------------------------------------------------------------------------------------
# PyTorch path (CPU, or CUDA without the extension): the reference semantics, float32
# ----------------------------------------------------------------------------------------------------------
def decompress_view(chunk: Chunk, head_dim: int) -> torch.Tensor:
    """Dense float32 [B, H, T, D] of a chunk view, addressing values by t*k (fixed) or offsets (variable), so a
    view of a larger preallocated store (spare capacity after the last value) decompresses correctly."""
    keep = unpack_bits(chunk.bitmap, head_dim)  # [B, H, T, D]
    b, h, t, d = keep.shape
    nv = chunk.values.shape[-1]
    if t == 0 or nv == 0:
        return torch.zeros(b, h, t, d, dtype=torch.float32, device=chunk.bitmap.device)
    rank = torch.cumsum(keep.to(torch.int64), -1) - 1
    if chunk.offsets is None:
        start = (torch.arange(t, device=keep.device, dtype=torch.int64) * int(chunk.k))[None, None, :, None]
    else:
        start = chunk.offsets.to(torch.int64)[..., None]
    pos = (start + rank).clamp_(0, nv - 1).reshape(b, h, t * d)
    vals = torch.gather(chunk.values.float(), -1, pos).reshape(b, h, t, d)
    return torch.where(keep, vals, torch.zeros((), dtype=torch.float32, device=vals.device))


def torch_sparse_decode_attention(q, k_chunk: Chunk, v_chunk: Chunk, k_win, v_win, n_win: int, scale: float,
                                  comp_start=None, comp_end=None, win_start=None):
    """(out [B, Hq, D] float32, lse [B, Hq] float32). Rows with no valid token give out 0 and lse -inf."""
    b, hq, d = q.shape
    h = k_chunk.bitmap.shape[1]
    g = hq // h
    dev = q.device
    kc = decompress_view(k_chunk, d)
    vc = decompress_view(v_chunk, d)
    n_comp = kc.shape[2]
    n_win = int(n_win)
    keys = torch.cat([kc, k_win[:, :, :n_win].float()], 2)
    vals = torch.cat([vc, v_win[:, :, :n_win].float()], 2)
    pos = torch.arange(keys.shape[2], device=dev)
    in_comp = pos[None] < n_comp
    valid = torch.ones(b, keys.shape[2], dtype=torch.bool, device=dev)
    if comp_start is not None:
        valid &= ~(in_comp & (pos[None] < comp_start.to(dev).long()[:, None]))
    if comp_end is not None:
        valid &= ~(in_comp & (pos[None] >= comp_end.to(dev).long()[:, None]))
    if win_start is not None:
        valid &= ~(~in_comp & (pos[None] - n_comp < win_start.to(dev).long()[:, None]))
    qf = q.float().reshape(b, h, g, d)
    s = torch.einsum("bhgd,bhtd->bhgt", qf, keys) * float(scale)
    s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(s, -1)
    finite = torch.isfinite(lse)
    p = torch.where(finite[..., None], torch.exp(s - torch.where(finite, lse, 0.0)[..., None]), 0.0)
    out = torch.einsum("bhgt,bhtd->bhgd", p, vals)
    return out.reshape(b, hq, d), lse.reshape(b, hq)
