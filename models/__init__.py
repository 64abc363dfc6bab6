"""Mustafar core: pruning methods, the Mustafar KV cache, the attention hook, model loading."""
from models.cache import MustafarCache, MustafarConfig, MustafarLayer, cache_kwargs  # noqa: F401
from models.hook import apply_mustafar, check_model_config  # noqa: F401
from models.methods import K_METHODS, METHODS, V_METHODS, get_method  # noqa: F401


def load_model(*args, **kwargs):
    """See models/loading.py (imported lazily: it pulls in the GGUF stack)."""
    from models.loading import load_model as _load

    return _load(*args, **kwargs)
