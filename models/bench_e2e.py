"""End-to-end decode benchmark: dense (transformers SDPA + preallocated StaticCache) vs the Mustafar cache.

Decode throughput is measured on a cache filled with synthetic K/V of the model's real shapes: a random-weight
model reads the same bytes as a trained one, and filling the cache directly lets batch x context reach sizes whose
prefill activations (not the KV cache) would not fit. Time to first token is measured separately with a real
prefill through the model, where the Mustafar cache prunes and compresses inside the prefill.
KV bytes come from the CUDA allocator (memory_allocated before and after filling the cache), not from a formula.
"""
from __future__ import annotations

import time

import torch

from models.cache import MustafarConfig, cache_kwargs
from models.hook import apply_mustafar


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _mem(device):
    return torch.cuda.memory_allocated(device) if torch.device(device).type == "cuda" else 0


def _kv_shape(model, batch, n):
    c = model.config
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return (batch, c.num_key_value_heads, n, hd)


def fill_cache(model, cfg: MustafarConfig | None, batch: int, ctx_len: int, gen_len: int, seed: int = 0):
    """A cache holding `ctx_len` tokens of random K/V per layer. cfg None -> dense StaticCache."""
    from transformers import StaticCache

    p = next(model.parameters())
    device, dtype = p.device, p.dtype
    g = torch.Generator(device=device).manual_seed(seed)
    if cfg is None:
        cache = StaticCache(config=model.config, max_cache_len=ctx_len + gen_len)
    else:
        cfg.capacity = ctx_len + gen_len
        cache = apply_mustafar(model, cfg)()
    pos = torch.arange(ctx_len, device=device)
    shape = _kv_shape(model, batch, ctx_len)
    for i in range(model.config.num_hidden_layers):
        k = torch.randn(shape, generator=g, device=device, dtype=dtype)
        v = torch.randn(shape, generator=g, device=device, dtype=dtype)
        if cfg is None:
            cache.update(k, v, i, {"cache_position": pos})
        else:
            cache.layers[i].ingest(k, v)
        del k, v
    _sync(device)
    return cache


def decode_steps(model, cache, batch: int, steps: int, warmup: int = 2, seed: int = 0):
    """Greedy-free decode of `steps` tokens (random input ids); returns seconds per step (median of per-step)."""
    p = next(model.parameters())
    device = p.device
    g = torch.Generator(device=device).manual_seed(seed)
    vocab = model.config.vocab_size
    kw = cache_kwargs(model, cache)
    times = []
    with torch.inference_mode():
        for i in range(warmup + steps):
            ids = torch.randint(0, vocab, (batch, 1), generator=g, device=device)
            _sync(device)
            t0 = time.perf_counter()
            model(input_ids=ids, use_cache=True, logits_to_keep=1, **kw)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], sum(times) / len(times)


def gpu_warmup(device, seconds: float = 3.0) -> None:
    """Keep the GPU busy for `seconds` (fp16 matmuls) so timing starts at working clocks: the first timings on a
    freshly started machine ran at idle clocks (seen: 345 MHz at start, a 5x slower dense kernel)."""
    if torch.device(device).type != "cuda":
        return
    x = torch.randn(4096, 4096, device=device, dtype=torch.float16)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            x = (x @ x).clamp_(-1, 1)
        _sync(device)
    del x


def gpu_ms_per_step(model, cache, batch: int, steps: int = 4, seed: int = 1):
    """Summed device time of the kernels of one decode step (ms, mean over `steps`), from torch.profiler.

    Eager decode steps are host-bound (tens of small launches per layer), so the wall time per step mostly measures
    the CPU; this is what the GPU itself spends, the part the kernels can change. None on CPU or if the profiler
    gives no device events."""
    p = next(model.parameters())
    device = p.device
    if device.type != "cuda" or steps < 1:
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator(device=device).manual_seed(seed)
    kw = cache_kwargs(model, cache)
    with torch.inference_mode():
        ids = [torch.randint(0, model.config.vocab_size, (batch, 1), generator=g, device=device) for _ in range(steps)]
        _sync(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for x in ids:
                model(input_ids=x, use_cache=True, logits_to_keep=1, **kw)
            _sync(device)
    total_us = 0.0
    for e in prof.events():
        if getattr(e, "device_type", None) == DeviceType.CUDA:
            total_us += e.time_range.elapsed_us()
    return total_us / 1e3 / steps if total_us > 0 else None


def measure_decode(model, cfg, batch, ctx_len, gen_len, steps=None):
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    m0 = _mem(device)
    cache = fill_cache(model, cfg, batch, ctx_len, gen_len)
    kv_bytes = _mem(device) - m0
    warmup = 2
    prof_steps = 4 if device.type == "cuda" else 0
    steps = min(steps or 32, gen_len - warmup - prof_steps)  # the StaticCache holds ctx_len + gen_len tokens
    if steps < 1:
        raise ValueError(f"gen_len must exceed the {warmup + prof_steps} warm-up / profiled steps, got {gen_len}")
    med, mean = decode_steps(model, cache, batch, steps, warmup=warmup)
    try:
        gpu_ms = gpu_ms_per_step(model, cache, batch, prof_steps)
    except Exception as exc:  # the profiler is optional: the timing above stands without it
        print(f"gpu_ms_per_step: profiler failed ({type(exc).__name__}: {exc})", flush=True)
        gpu_ms = None
    from mem_spd_test import _label

    row = {"method": _label(cfg), "backend": "static-sdpa" if cfg is None else cfg.backend, "batch": batch,
           "context": ctx_len,
           "step_ms_median": med * 1e3, "step_ms_mean": mean * 1e3, "decode_tok_s": batch / med,
           "gpu_ms_per_step": gpu_ms,
           "kv_bytes_allocator": kv_bytes,
           "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}
    if cfg is not None:
        st = cache.stats()
        row.update(kv_bytes_stored=st["stored_bytes"], k_sparsity_achieved=st["k_sparsity_pruned_region"],
                   v_sparsity_achieved=st["v_sparsity_pruned_region"])
    del cache
    return row


def time_to_first_token(model, cfg, prompt_len, batch=1, repeats=3):
    """Real prefill of random prompt ids through the model (dense DynamicCache vs Mustafar); median seconds."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    g = torch.Generator(device=device).manual_seed(1)
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=g, device=device)
    factory = None if cfg is None else apply_mustafar(model, cfg)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            cache = DynamicCache() if cfg is None else factory()
            _sync(device)
            t0 = time.perf_counter()
            model(input_ids=ids, use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))
            _sync(device)
            if i:
                times.append(time.perf_counter() - t0)
            del cache
    times.sort()
    return times[len(times) // 2]


def max_batch_in_budget(model, cfg, ctx_len, gen_len, budget_bytes, probe=(1, 2)):
    """Largest batch whose peak memory (weights + KV + decode activations) stays within budget_bytes.

    Peak memory is measured at two small batches and is affine in the batch; the prediction is then verified by
    running at the predicted batch (and stepping down while it does not fit)."""
    device = next(model.parameters()).device
    peaks = []
    for b in probe:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        cache = fill_cache(model, cfg, b, ctx_len, gen_len)
        decode_steps(model, cache, b, steps=2, warmup=0)
        peaks.append(torch.cuda.max_memory_allocated(device))
        del cache
    per_seq = (peaks[1] - peaks[0]) / (probe[1] - probe[0])
    base = peaks[0] - per_seq * probe[0]
    b = max(int((budget_bytes - base) // per_seq), 0)
    while b > 0:
        try:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            cache = fill_cache(model, cfg, b, ctx_len, gen_len)
            decode_steps(model, cache, b, steps=2, warmup=0)
            peak = torch.cuda.max_memory_allocated(device)
            del cache
            if peak <= budget_bytes:
                return b, per_seq, base
        except torch.OutOfMemoryError:
            pass
        b -= 1
    return 0, per_seq, base
