"""Profile decode steps of the e2e benchmark (dense preallocated vs Mustafar) to see where the time goes."""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from models.bench_e2e import decode_steps, fill_cache
from models.cache import MustafarConfig
from models.loading import load_model

B, L = int(sys.argv[1]), int(sys.argv[2])
model, _ = load_model("random:llama3-8b", dtype="float16", device="cuda")
for label, cfg in [("dense-prealloc", MustafarConfig(k_method="none", v_method="none", k_sparsity=0, v_sparsity=0,
                                                     backend="simulated")),
                   ("mustafar0.7", MustafarConfig(k_sparsity=0.7, v_sparsity=0.7, backend="compressed"))]:
    cache = fill_cache(model, cfg, B, L, 64)
    med, mean = decode_steps(model, cache, B, steps=8)
    print(f"== {label}: median step {med*1e3:.1f} ms, mean {mean*1e3:.1f} ms", flush=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        decode_steps(model, cache, B, steps=3, warmup=0)
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=60))
    del cache
    torch.cuda.empty_cache()
