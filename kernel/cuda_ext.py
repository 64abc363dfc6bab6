"""JIT build of the CUDA sparse decode attention extension (kernel/csrc), cached on disk.

`available()` says whether the extension can be used here (False without a CUDA device, without nvcc, or when the
build fails; `unavailable_reason()` says why). `load()` builds on first use and returns the module. Importing this
file never raises and never builds anything.

Build directory: $MUSTAFAR_CACHE (or ~/.cache/mustafar/torch_ext) / <name>. Flags: -O3 --use_fast_math, code for
the current device's architecture (sm_80 and sm_90 when no device is visible).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import threading

log = logging.getLogger("mustafar")

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
SOURCES = [os.path.join(CSRC, f) for f in ("binding.cpp", "sparse_decode.cu", "compress_binding.cpp",
                                               "compress_topk.cu")]
EXT_NAME = "mustafar_sparse_decode"

_lock = threading.Lock()
_module = None
_reason: str | None = None
_tried = False


def cache_root() -> str:
    root = os.environ.get("MUSTAFAR_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mustafar")
    return os.path.join(root, "torch_ext")


def find_nvcc() -> str | None:
    """Path of nvcc (CUDA_HOME/bin, then PATH), or None."""
    try:
        from torch.utils.cpp_extension import CUDA_HOME
    except Exception:  # pragma: no cover - torch without cpp_extension
        CUDA_HOME = None
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), CUDA_HOME):
        if home:
            cand = os.path.join(home, "bin", "nvcc")
            if os.path.isfile(cand):
                return cand
    return shutil.which("nvcc")


def find_cuobjdump() -> str | None:
    """Path of cuobjdump: beside nvcc, on PATH, else the copy that ships with Triton; or None."""
    nvcc = find_nvcc()
    cand = [os.path.join(os.path.dirname(nvcc), "cuobjdump")] if nvcc else []
    cand.append(shutil.which("cuobjdump") or "")
    try:
        import triton

        cand.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in cand if c and os.path.isfile(c)), None)


def gencode_flags() -> list[str]:
    """-gencode for the current device (>= sm_80), else sm_80 and sm_90."""
    archs: list[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            if major >= 8:
                archs = [f"{major}{minor}"]
    except Exception:
        archs = []
    if not archs:
        archs = ["80", "90"]
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]


def _why_not() -> str | None:
    try:
        import torch
    except Exception as exc:  # pragma: no cover
        return f"torch import failed: {exc}"
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    if torch.version.cuda is None:
        return "torch was built without CUDA"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return f"GPU compute capability {major}.x < 8.0 (the kernel needs sm_80+)"
    if find_nvcc() is None:
        return "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    return None


def load(verbose: bool = False):
    """Build (first use) and return the extension module; raises RuntimeError if it cannot be built."""
    global _module, _reason, _tried
    with _lock:
        if _module is not None:
            return _module
        if _tried and _reason is not None:
            raise RuntimeError(_reason)
        _tried = True
        reason = _why_not()
        if reason is not None:
            _reason = reason
            raise RuntimeError(reason)
        try:
            from torch.utils.cpp_extension import load as _load

            flags = gencode_flags()
            tag = "_".join(f.rsplit("_", 1)[-1] for f in flags)
            extra = shlex.split(os.environ.get("MUSTAFAR_NVCC_EXTRA", ""))  # experiments, e.g. -DMUSTAFAR_MIN_BLOCKS=5
            if extra:
                tag += "_x" + hashlib.sha1(" ".join(extra).encode()).hexdigest()[:8]
            name = f"{EXT_NAME}_{tag}"
            build_dir = os.path.join(cache_root(), name)
            os.makedirs(build_dir, exist_ok=True)
            nvcc = find_nvcc()
            if nvcc and not os.environ.get("CUDA_HOME"):
                os.environ["CUDA_HOME"] = os.path.dirname(os.path.dirname(nvcc))
            _module = _load(
                name=name,
                sources=SOURCES,
                extra_cflags=["-O3", "-std=c++17"],
                extra_cuda_cflags=["-O3", "--use_fast_math", "-std=c++17", *flags, *extra],
                build_directory=build_dir,
                verbose=verbose,
            )
            log.info("mustafar: CUDA sparse decode extension ready (%s)", build_dir)
            return _module
        except Exception as exc:  # build or import failure
            _reason = f"building the CUDA extension failed: {type(exc).__name__}: {exc}"
            raise RuntimeError(_reason) from exc


def available() -> bool:
    """True if the extension is built (or builds now) for the current CUDA device."""
    try:
        load()
        return True
    except Exception:
        return False


def unavailable_reason() -> str | None:
    """Why `available()` is False (None when it is True or was not asked yet)."""
    if _module is not None:
        return None
    return _reason if _reason is not None else _why_not()
