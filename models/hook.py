"""The attention hook: one function registered in transformers' AttentionInterface under "mustafar".

The model keeps its stock classes; `apply_mustafar` only switches `config._attn_implementation` to "mustafar" and
returns a factory of fresh `MustafarCache`s. The registered function receives whatever the cache layer's
`update()` returned: a `MustafarLayer` (our cache: the layer attends over its own storage) or plain tensors (any
other cache, or none: exactly transformers' SDPA attention).
"""
from __future__ import annotations

from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from models.cache import MustafarCache, MustafarConfig, MustafarLayer

ATTN_NAME = "mustafar"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def mustafar_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    if isinstance(key, MustafarLayer):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return key.attend(module, query, attention_mask, scale), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def register() -> None:
    AttentionInterface.register(ATTN_NAME, mustafar_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)


def check_model_config(config) -> None:
    """Refuse, before any work, a model whose attention this hook cannot serve."""
    mt = getattr(config, "model_type", None)
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model type {mt!r} is not supported by the Mustafar attention hook; "
                         f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    sw = getattr(config, "sliding_window", None)
    uses_sw = getattr(config, "use_sliding_window", mt == "mistral")
    layer_types = getattr(config, "layer_types", None) or []
    if (sw is not None and uses_sw) or any(t != "full_attention" for t in layer_types):
        raise ValueError(f"{mt} model uses sliding-window attention (sliding_window={sw}); the Mustafar cache keeps "
                         "full attention only")
    for name in ("attn_logit_softcapping",):
        if getattr(config, name, None):
            raise ValueError(f"{mt} model uses {name}; the Mustafar attention hook does not implement it")


def apply_mustafar(model, config: MustafarConfig):
    """Validate, switch the model's attention to the Mustafar hook, and return `cache_factory()`.

    Usage: `cache = factory(); model.generate(..., past_key_values=cache); cache.stats()`.
    """
    config.validate()
    check_model_config(model.config)
    if config.backend == "compressed":
        hd = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
        if hd % 32:
            raise ValueError(f"backend 'compressed' needs head_dim divisible by 32, got {hd}; use backend 'simulated'")
    register()
    model.set_attn_implementation(ATTN_NAME)
    num_layers = model.config.num_hidden_layers

    def cache_factory() -> MustafarCache:
        return MustafarCache(config, num_layers)

    cache_factory.config = config
    return cache_factory
