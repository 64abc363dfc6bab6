"""Which SDPA path does decode attention take for the dense baselines? (contiguous vs capacity-view K/V)"""
import time

import torch
import torch.nn.functional as F


def t(fn, n=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
    return sorted(ts)[n // 2] * 1e3


B, Hq, H, L, D = 16, 32, 8, 16384, 128
q = torch.randn(B, Hq, 1, D, device="cuda", dtype=torch.float16)
kc = torch.randn(B, H, L, D, device="cuda", dtype=torch.float16)
vc = torch.randn_like(kc)
kb = torch.randn(B, H, L + 64, D, device="cuda", dtype=torch.float16)
vb = torch.randn_like(kb)
kv, vv = kb[:, :, :L], vb[:, :, :L]
print("contiguous K/V   us", t(lambda: F.scaled_dot_product_attention(q, kc, vc, enable_gqa=True)))
print("capacity view    us", t(lambda: F.scaled_dot_product_attention(q, kv, vv, enable_gqa=True)))
qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # HF's query layout ([B, L, H, D] transposed)
print("HF-layout q view us", t(lambda: F.scaled_dot_product_attention(qt, kv, vv, enable_gqa=True)))
for name, be in [("flash", torch.nn.attention.SDPBackend.FLASH_ATTENTION),
                 ("efficient", torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION),
                 ("cudnn", torch.nn.attention.SDPBackend.CUDNN_ATTENTION)]:
    for lab, (k, v, qq) in {"contig": (kc, vc, q), "view": (kv, vv, qt)}.items():
        try:
            with torch.nn.attention.sdpa_kernel([be]):
                print(f"{name:9s} {lab:6s} us", t(lambda: F.scaled_dot_product_attention(qq, k, v, enable_gqa=True)))
        except Exception as ex:
            print(f"{name:9s} {lab:6s} not available: {str(ex)[:120]}")
m = torch.ones(B, 1, 1, L, device="cuda", dtype=torch.bool)
print("with bool mask (repeat_kv as HF does) us",
      t(lambda: F.scaled_dot_product_attention(q, kc.repeat_interleave(4, 1), vc.repeat_interleave(4, 1), attn_mask=m)))
