import os
import sys

# Before anything imports triton: on a machine without a GPU, Triton kernels run in its CPU interpreter.
# Model-level tests then use the PyTorch compression path (fast); tests/test_triton_compress.py checks the Triton
# kernels bit for bit against it (and forces impl="triton").
try:
    import torch as _torch
    if not _torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ.setdefault("MUSTAFAR_COMPRESS_IMPL", "torch")
except ImportError:  # pragma: no cover
    pass

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_collection_modifyitems(config, items):
    try:
        import torch
        has_gpu = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
