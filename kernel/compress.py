"""The one dispatch point for prune + compress (used by the cache).

impl="auto": the Triton kernels when x is on CUDA and triton imports, or when TRITON_INTERPRET=1 (Triton's CPU
interpreter, used by CPU tests); otherwise the PyTorch reference of kernel/format.py. impl="triton" / "torch"
forces one; the environment variable MUSTAFAR_COMPRESS_IMPL=triton|torch overrides what "auto" picks (e.g. a CPU
test session that sets TRITON_INTERPRET=1 for the kernel tests but wants the fast reference elsewhere). Which implementation runs is logged once per (operation, implementation, device type) on the
"mustafar" logger; if the Triton path raises on a GPU, the reference is used and a warning is issued once.
"""
from __future__ import annotations

import logging
import os
import warnings

import torch

from kernel.format import Chunk, compress_reference, topk_keep_mask

logger = logging.getLogger("mustafar")

IMPLS = ("auto", "triton", "torch")
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
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


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def compress_impl(device) -> str:
    """The implementation "auto" picks for tensors on `device`: "triton" or "torch"."""
    forced = os.environ.get("MUSTAFAR_COMPRESS_IMPL", "auto").strip().lower() or "auto"
    if forced not in IMPLS:
        raise ValueError(f"MUSTAFAR_COMPRESS_IMPL={forced!r}; valid: {IMPLS}")
    if forced == "torch":
        return forced
    device = torch.device(device)
    if forced == "auto" and device.type != "cuda" and not _interpret():
        return "torch"
    return "triton" if _triton_module() is not None else "torch"


def _resolve(impl: str, x: torch.Tensor) -> str:
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; valid: {IMPLS}")
    if impl == "auto":
        impl = compress_impl(x.device)
        if impl == "triton" and (x.shape[-1] % 32 or x.dtype not in _KERNEL_DTYPES):
            impl = "torch"  # D % 32 != 0: the reference raises the format's error; float64: the reference copes
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


def _run(op: str, impl: str, x: torch.Tensor, triton_call, torch_call) -> Chunk:
    chosen = _resolve(impl, x)
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
            key = (op, x.device.type)
            if key not in _warned:
                _warned.add(key)
                msg = (f"mustafar {op}: Triton kernel failed on {x.device.type} "
                       f"({type(exc).__name__}: {exc}); falling back to the PyTorch reference (slow)")
                warnings.warn(msg, RuntimeWarning, stacklevel=3)
                logger.warning(msg)
    _log_once(op, "torch", x.device)
    return torch_call()


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
                lambda tc: tc.prune_compress_topk_triton(x, k, channel_weight), torch_call)


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
