"""The one dispatch point for prune + compress (used by the cache).

Implementations: "cuda" (kernel/csrc/compress_topk.cu, built with the CUDA extension of kernel/cuda_ext.py; only
prune_compress_topk of float16/bfloat16 x with head_dim 64/128 and no channel_weight), "triton"
(kernel/triton_compress.py: every operation) and "torch" (the reference of kernel/format.py).

impl="auto": on a CUDA tensor, the CUDA kernel where it applies and the extension is available
(`kernel.cuda_ext.available()`, which builds it on first use), else the Triton kernels when triton imports; Triton
also when TRITON_INTERPRET=1 (Triton's CPU interpreter, used by CPU tests); otherwise the PyTorch reference.
impl="cuda" / "triton" / "torch" forces one (impl="cuda" raises ValueError for an operation or input the kernel
does not cover, RuntimeError when the extension is unavailable). The environment variable
MUSTAFAR_COMPRESS_IMPL=cuda|triton|torch overrides what "auto" picks (e.g. a CPU test session that sets
TRITON_INTERPRET=1 for the kernel tests but wants the fast reference elsewhere); with "cuda", what the CUDA kernel
does not cover takes the usual "auto" choice. Which implementation runs is logged once per (operation,
implementation, device type) on the "mustafar" logger. If a kernel raises on a GPU under "auto" (anything but the
ValueError / TypeError of bad input), the next implementation runs instead (CUDA -> Triton -> reference) and a
warning is issued once per (operation, device type, kernel); a forced impl raises instead.
"""
from __future__ import annotations

import logging
import os
import warnings

import torch

from kernel.format import Chunk, compress_reference, topk_keep_mask

logger = logging.getLogger("mustafar")

IMPLS = ("auto", "cuda", "triton", "torch")
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_CUDA_DTYPES = (torch.float16, torch.bfloat16)
_CUDA_HEAD_DIMS = (64, 128)
_CUDA_OPS = ("prune_compress_topk",)
_logged: set = set()
_warned: set = set()
_triton_import_error: str | None = None


def _triton_module():
    """kernel.triton_compress, or None (and the reason remembered) when triton cannot be imported."""
    global _triton_import_error
    if _triton_import_error is not None:
        return None
    try:
        from kernel import triton_compress
        return triton_compress
    except Exception as exc:  # ImportError, or a broken triton install: remembered, not retried
        _triton_import_error = f"{type(exc).__name__}: {exc}"
        return None


def _cuda_ext():
    from kernel import cuda_ext  # importing never builds nor raises
    return cuda_ext


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _forced() -> str:
    forced = os.environ.get("MUSTAFAR_COMPRESS_IMPL", "auto").strip().lower() or "auto"
    if forced not in IMPLS:
        raise ValueError(f"MUSTAFAR_COMPRESS_IMPL={forced!r}; valid: {IMPLS}")
    return forced


def _cuda_covers(device: torch.device, dtype, head_dim, weighted: bool) -> bool:
    return device.type == "cuda" and dtype in _CUDA_DTYPES and head_dim in _CUDA_HEAD_DIMS and not weighted


def compress_impl(device, dtype: torch.dtype | None = None, head_dim: int | None = None,
                  weighted: bool = False) -> str:
    """The implementation "auto" picks: "cuda", "triton" or "torch".

    With the device alone: the pick for every operation the CUDA kernel does not cover ("triton" or "torch").
    With dtype and head_dim: the pick for prune_compress_topk of such x (weighted: with a channel_weight), which is
    "cuda" where the CUDA kernel covers it and the extension is available (this may build it).
    """
    forced = _forced()
    if forced == "torch":
        return forced
    device = torch.device(device)
    if forced in ("auto", "cuda") and _cuda_covers(device, dtype, head_dim, weighted) and _cuda_ext().available():
        return "cuda"
    if forced != "triton" and device.type != "cuda" and not _interpret():
        return "torch"
    return "triton" if _triton_module() is not None else "torch"


def _cuda_unsupported(op: str, x: torch.Tensor, weighted: bool) -> str | None:
    if op not in _CUDA_OPS:
        return f"{op} (the CUDA kernel does prune_compress_topk only)"
    if x.device.type != "cuda":
        return f"x on {x.device.type} (needs a CUDA tensor)"
    if weighted:
        return "channel_weight"
    if x.dtype not in _CUDA_DTYPES:
        return f"dtype {x.dtype} (float16 / bfloat16 only)"
    if x.dim() != 4 or x.shape[-1] not in _CUDA_HEAD_DIMS:
        return f"x of shape {tuple(x.shape)} (needs [B, H, n, D] with D in {_CUDA_HEAD_DIMS})"
    return None


def _resolve(impl: str, x: torch.Tensor, op: str = "", weighted: bool = False) -> str:
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; valid: {IMPLS}")
    if impl == "auto":
        cuda_op = op in _CUDA_OPS and x.dim() == 4
        impl = compress_impl(x.device, x.dtype if cuda_op else None, x.shape[-1] if cuda_op else None, weighted)
        if impl == "triton" and (x.shape[-1] % 32 or x.dtype not in _KERNEL_DTYPES):
            impl = "torch"  # D % 32 != 0: the reference raises the format's error; float64: the reference copes
    elif impl == "cuda":
        why = _cuda_unsupported(op, x, weighted)
        if why is not None:
            raise ValueError(f"impl='cuda' does not support {why}")
        _cuda_ext().load()  # RuntimeError with the reason when the extension is unavailable
    elif impl == "triton" and _triton_module() is None:
        raise RuntimeError(f"impl='triton' requested but triton is unavailable ({_triton_import_error})")
    return impl


def _log_once(op: str, impl: str, device: torch.device) -> None:
    key = (op, impl, device.type)
    if key in _logged:
        return
    _logged.add(key)
    extra = ""
    if impl == "torch" and device.type == "cuda" and _triton_import_error:
        extra = f" (triton unavailable: {_triton_import_error})"
    elif impl == "triton" and device.type != "cuda":
        extra = " (Triton interpreter)"
    logger.info("mustafar %s: %s implementation on %s%s", op, impl, device.type, extra)


def _warn_fallback(op: str, device: torch.device, kernel: str, exc: Exception, to: str) -> None:
    key = (op, device.type) if kernel == "Triton" else (op, device.type, kernel)
    if key in _warned:
        return
    _warned.add(key)
    msg = (f"mustafar {op}: {kernel} kernel failed on {device.type} "
           f"({type(exc).__name__}: {exc}); falling back to {to}")
    warnings.warn(msg, RuntimeWarning, stacklevel=4)
    logger.warning(msg)


def _run(op: str, impl: str, x: torch.Tensor, triton_call, torch_call, cuda_call=None, weighted: bool = False) -> Chunk:
    chosen = _resolve(impl, x, op, weighted)
    if chosen == "cuda":
        try:
            out = cuda_call()
            _log_once(op, "cuda", x.device)
            return out
        except (ValueError, TypeError):
            raise  # bad input
        except Exception as exc:
            if impl == "cuda":
                raise
            chosen = "triton" if _triton_module() is not None else "torch"
            _warn_fallback(op, x.device, "CUDA", exc,
                           "the Triton kernel" if chosen == "triton" else "the PyTorch reference (slow)")
    if chosen == "triton":
        try:
            out = triton_call(_triton_module())
            _log_once(op, "triton", x.device)
            return out
        except (ValueError, TypeError):
            raise  # bad input: the same error the reference would give
        except Exception as exc:
            if impl == "triton":
                raise
            _warn_fallback(op, x.device, "Triton", exc, "the PyTorch reference (slow)")
    _log_once(op, "torch", x.device)
    return torch_call()


def prune_compress_topk_cuda(x: torch.Tensor, k: int, *, variant: int = 0) -> Chunk:
    """The CUDA kernel directly (no dispatch, no fallback): x [B, H, n, D] fp16/bf16 on a CUDA device, D = 64/128,
    0 <= k <= D. variant: kernel tuning variant (benchmarks; 0 = default). Raises RuntimeError if the extension is
    unavailable."""
    # Bad input is refused here, before the extension is called: its own checks are a last line of defence only
    # (on the H200 image, torch 2.11, any C++ exception thrown out of the JIT-built extension killed the process
    # with SIGSEGV instead of raising).
    if not isinstance(x, torch.Tensor) or x.device.type != "cuda":
        raise ValueError("prune_compress_topk_cuda: x must be a CUDA tensor")
    if x.dim() != 4:
        raise ValueError(f"expected x of shape [B, H, n, D], got {tuple(x.shape)}")
    if x.dtype not in _CUDA_DTYPES:
        raise TypeError(f"unsupported dtype {x.dtype}; the CUDA kernel takes {_CUDA_DTYPES}")
    d = x.shape[-1]
    if d not in _CUDA_HEAD_DIMS:
        raise ValueError(f"head_dim must be one of {_CUDA_HEAD_DIMS}, got {d}")
    k, variant = int(k), int(variant)
    if not 0 <= k <= d:
        raise ValueError(f"k must be in [0, {d}], got {k}")
    mod = _cuda_ext().load()
    if not 0 <= variant < mod.prune_compress_topk_num_variants():
        raise ValueError(f"unknown variant {variant}")
    bitmap, values = mod.prune_compress_topk(x, k, variant)
    return Chunk(bitmap, values, None, k)


def prune_compress_topk(x: torch.Tensor, k: int, channel_weight: torch.Tensor | None = None,
                        impl: str = "auto") -> Chunk:
    """Per token keep the k largest |x| (or |x| * channel_weight[b, h, c], float32) and compress (fixed mode).

    x: [B, H, n, D]; ties go to the lower channel (kernel.format.topk_keep_mask).
    """
    def torch_call():
        score = x.abs().float() if channel_weight is None else \
            x.abs().float() * channel_weight.to(x.device, torch.float32)[:, :, None, :]
        return compress_reference(x, topk_keep_mask(score, k), k)

    return _run("prune_compress_topk", impl, x,
                lambda tc: tc.prune_compress_topk_triton(x, k, channel_weight), torch_call,
                cuda_call=lambda: prune_compress_topk_cuda(x, k), weighted=channel_weight is not None)


def compress_masked(x: torch.Tensor, keep: torch.Tensor, k: int | None = None, impl: str = "auto",
                    n_values: int | None = None) -> Chunk:
    """Compress x [B, H, n, D] where keep is set: fixed mode (k values per token) or variable mode (k None).

    n_values: the values every (batch, head) row keeps, when the caller knows it (the cache does): the Triton path
    then skips validating the mask, which would need a device-to-host sync."""
    if n_values is None:
        triton_call = lambda tc: tc.compress_masked_triton(x, keep, k)  # noqa: E731
    else:
        triton_call = lambda tc: tc.compress_masked_triton(x, keep, k, n_values=n_values, check=False)  # noqa: E731
    return _run("compress_masked", impl, x, triton_call, lambda: compress_reference(x, keep, k))


def decompress(chunk: Chunk, head_dim: int, dtype: torch.dtype | None = None, impl: str = "auto") -> torch.Tensor:
    """Dense [B, H, n, D] with zeros at pruned entries."""
    from kernel.format import decompress_chunk

    probe = chunk.values.new_empty(0, head_dim)
    return _run("decompress", impl, probe,
                lambda tc: tc.decompress_triton(chunk, head_dim, dtype),
                lambda: decompress_chunk(chunk, head_dim, dtype))
