"""Tiny random models of every supported family (2 layers) for fast CPU tests."""
import copy

import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

COMMON = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              max_position_embeddings=1024, attn_implementation="sdpa")

SPECS = {
    "llama_mha_d64": (LlamaConfig, LlamaForCausalLM, dict(num_attention_heads=4, num_key_value_heads=4, head_dim=64)),
    "llama_gqa_d128": (LlamaConfig, LlamaForCausalLM, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=128)),
    "mistral_gqa_d64": (MistralConfig, MistralForCausalLM,
                        dict(num_attention_heads=6, num_key_value_heads=2, head_dim=64, sliding_window=None)),
    "qwen2_gqa_d64": (Qwen2Config, Qwen2ForCausalLM, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=64)),
    "qwen3_gqa_d128": (Qwen3Config, Qwen3ForCausalLM, dict(num_attention_heads=4, num_key_value_heads=1, head_dim=128)),
}


def tiny_model(name="llama_gqa_d128", seed=0, dtype=torch.float32):
    cfg_cls, model_cls, extra = SPECS[name]
    torch.manual_seed(seed)
    cfg = cfg_cls(**COMMON, **extra)
    model = model_cls(cfg).eval().to(dtype)
    # larger-than-init weights make attention sharper, so pruning visibly changes outputs
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "proj" in n:
                p.mul_(3.0)
    return model


def clone(model):
    return copy.deepcopy(model)
