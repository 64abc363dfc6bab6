"""KV-cache byte report: dense vs simulated vs compressed (token-major bitmap format) vs the earlier tile format.

    python -m kernel.report --layers 32 --kv-heads 8 --head-dim 128 --context 32768 --batch 8 \
        --k-sparsity 0.7 --v-sparsity 0.7
    python -m kernel.report --shape llama3-8b --context 32768 --batch 8 --k-sparsity 0.7 --v-sparsity 0.7

Byte model (per token per KV head, D = head_dim, e = bytes per value, k = kept values of the token):
  dense          e*D
  simulated      e*D                          (pruned entries are stored as zeros)
  compressed     D/8 + e*k (+4 in variable mode: the int32 offset), see kernel/format.py; the dense window of the
                 most recent `window` tokens stays e*D
  tile format    per 64-element tile: 8 B bitmap + 4 B offset + values padded to a multiple of 8; the padding is
                 modelled by its expectation, 3.5 values per tile (kept counts per tile vary: residues mod 8 are
                 taken as uniform). This is PERF.md's model of the earlier Mustafar format.
Variable-mode sides (channel-wise methods) are charged the same average kept count as a per-token side.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from kernel.format import kept_per_token, token_bytes

MIB = 1024 ** 2
TILE = 64
TILE_META_BYTES = 8 + 4          # 64-bit bitmap + int32 offset
TILE_VALUE_ALIGN = 8
TILE_EXPECTED_PAD = (TILE_VALUE_ALIGN - 1) / 2  # 3.5 values per tile on average
SHAPES_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "model_shapes.json")


def tile_token_bytes(head_dim: int, kept: float, elem_bytes: int = 2) -> float:
    """Expected bytes of one token of one KV head in the earlier 64-element tile format."""
    tiles = math.ceil(head_dim / TILE)
    return tiles * TILE_META_BYTES + elem_bytes * (kept + tiles * TILE_EXPECTED_PAD)


def kv_bytes_report(num_layers: int, num_kv_heads: int, head_dim: int, context_len: int, batch: int = 1,
                    k_sparsity: float = 0.5, v_sparsity: float = 0.5, window: int = 32, dtype_bytes: int = 2,
                    k_variable: bool = False, v_variable: bool = False, prune_rule: str = "exact") -> dict:
    """Bytes of the whole KV cache (all layers, K and V, the batch) for one context length."""
    for name, s in (("k_sparsity", k_sparsity), ("v_sparsity", v_sparsity)):
        if not 0.0 <= s < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {s}")
    if head_dim % 32:
        raise ValueError(f"head_dim must be a multiple of 32 for the bitmap format, got {head_dim}")
    if min(num_layers, num_kv_heads, batch) < 1 or context_len < 0 or window < 0:
        raise ValueError("layers, kv heads and batch must be >= 1; context and window >= 0")

    rows = num_layers * num_kv_heads * batch            # (layer, head, sequence) rows per side
    window_tokens = min(window, context_len)
    comp_tokens = context_len - window_tokens
    dense_tok = dtype_bytes * head_dim                  # one token, one head, one side

    sides = {}
    for side, s, variable in (("k", k_sparsity, k_variable), ("v", v_sparsity, v_variable)):
        kept = kept_per_token(head_dim, s, prune_rule)
        tok = token_bytes(head_dim, kept, dtype_bytes, variable)
        tile_tok = tile_token_bytes(head_dim, kept, dtype_bytes)
        sides[side] = {
            "sparsity": s, "kept_per_token": kept, "achieved_sparsity": 1 - kept / head_dim,
            "variable": variable,
            "token_bytes": tok, "rho_token": tok / dense_tok,
            "tile_token_bytes": tile_tok, "tile_rho_token": tile_tok / dense_tok,
            "compressed_bytes": rows * (comp_tokens * tok + window_tokens * dense_tok),
            "tile_bytes": rows * (comp_tokens * tile_tok + window_tokens * dense_tok),
        }

    dense = 2 * rows * context_len * dense_tok
    compressed = sides["k"]["compressed_bytes"] + sides["v"]["compressed_bytes"]
    tile = sides["k"]["tile_bytes"] + sides["v"]["tile_bytes"]
    per_tok_rows = num_layers * num_kv_heads            # per sequence token: all layers and heads, K + V
    return {
        "num_layers": num_layers, "num_kv_heads": num_kv_heads, "head_dim": head_dim, "context_len": context_len,
        "batch": batch, "window": window, "dtype_bytes": dtype_bytes, "prune_rule": prune_rule,
        "compressed_tokens": comp_tokens, "window_tokens": window_tokens,
        "dense_bytes": dense,
        "simulated_bytes": dense,
        "compressed_bytes": compressed,
        "tile_format_bytes": tile,
        "rho": compressed / dense if dense else float("nan"),
        "tile_rho": tile / dense if dense else float("nan"),
        "rho_compressed_part": (sides["k"]["token_bytes"] + sides["v"]["token_bytes"]) / (2 * dense_tok),
        "dense_bytes_per_token": 2 * per_tok_rows * dense_tok,
        "compressed_bytes_per_token": per_tok_rows * (sides["k"]["token_bytes"] + sides["v"]["token_bytes"]),
        "tile_bytes_per_token": per_tok_rows * (sides["k"]["tile_token_bytes"] + sides["v"]["tile_token_bytes"]),
        "k": sides["k"], "v": sides["v"],
    }


def load_shape(name: str, path: str = SHAPES_FILE) -> dict:
    """(num_layers, num_kv_heads, head_dim) of a named shape in config/model_shapes.json."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: give --layers/--kv-heads/--head-dim instead of --shape")
    with open(path) as f:
        shapes = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    if name not in shapes:
        raise KeyError(f"unknown shape {name!r}; known: {', '.join(sorted(shapes))}")
    cfg = shapes[name]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return {"num_layers": cfg["num_hidden_layers"],
            "num_kv_heads": cfg.get("num_key_value_heads", cfg.get("num_attention_heads")),
            "head_dim": head_dim}


def format_report(r: dict) -> str:
    def side(s):
        d = r[s]
        mode = "variable, +4 B offset" if d["variable"] else "fixed"
        return (f"{s.upper()}: sparsity {d['sparsity']:.2f} -> {d['kept_per_token']}/{r['head_dim']} kept per token "
                f"({d['achieved_sparsity'] * 100:.1f} % pruned, {mode}): rho per token {d['rho_token']:.4f} "
                f"(tile format {d['tile_rho_token']:.4f})")

    lines = [
        f"KV cache: {r['num_layers']} layers x {r['num_kv_heads']} KV heads x d {r['head_dim']}, context "
        f"{r['context_len']}, batch {r['batch']}, {r['dtype_bytes']} B/value, dense window {r['window_tokens']} "
        f"tokens, prune rule {r['prune_rule']}",
        side("k"), side("v"),
        "",
        f"{'storage':<36}{'MiB':>14}{'rho':>8}{'B/token':>11}",
        f"{'dense':<36}{r['dense_bytes'] / MIB:>14.1f}{1.0:>8.4f}{r['dense_bytes_per_token']:>11.0f}",
        f"{'simulated (pruned zeros stored)':<36}{r['simulated_bytes'] / MIB:>14.1f}{1.0:>8.4f}"
        f"{r['dense_bytes_per_token']:>11.0f}",
        f"{'compressed (token bitmap + window)':<36}{r['compressed_bytes'] / MIB:>14.1f}{r['rho']:>8.4f}"
        f"{r['compressed_bytes_per_token']:>11.0f}",
        f"{'earlier tile format (64-elem tiles)':<36}{r['tile_format_bytes'] / MIB:>14.1f}{r['tile_rho']:>8.4f}"
        f"{r['tile_bytes_per_token']:>11.1f}",
        "",
        "B/token: one sequence token over all layers and KV heads, K + V, outside the window.",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kernel.report", description=__doc__.split("\n")[0])
    p.add_argument("--shape", help="a model shape name from config/model_shapes.json (e.g. llama3-8b)")
    p.add_argument("--layers", type=int)
    p.add_argument("--kv-heads", type=int)
    p.add_argument("--head-dim", type=int)
    p.add_argument("--context", type=int, required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--k-sparsity", type=float, default=0.5)
    p.add_argument("--v-sparsity", type=float, default=0.5)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--dtype-bytes", type=int, default=2)
    p.add_argument("--k-variable", action="store_true", help="K uses variable mode (channel-wise method)")
    p.add_argument("--v-variable", action="store_true", help="V uses variable mode (channel-wise method)")
    p.add_argument("--prune-rule", choices=("exact", "paper"), default="exact")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    a = p.parse_args(argv)

    shape = {}
    if a.shape:
        try:
            shape = load_shape(a.shape)
        except (FileNotFoundError, KeyError) as exc:
            p.error(str(exc.args[0]))
    for key, val in (("num_layers", a.layers), ("num_kv_heads", a.kv_heads), ("head_dim", a.head_dim)):
        if val is not None:
            shape[key] = val
    missing = [k for k in ("num_layers", "num_kv_heads", "head_dim") if k not in shape]
    if missing:
        p.error(f"missing {', '.join(missing)}: give --shape or --layers/--kv-heads/--head-dim")
    try:
        r = kv_bytes_report(**shape, context_len=a.context, batch=a.batch, k_sparsity=a.k_sparsity,
                            v_sparsity=a.v_sparsity, window=a.window, dtype_bytes=a.dtype_bytes,
                            k_variable=a.k_variable, v_variable=a.v_variable, prune_rule=a.prune_rule)
    except ValueError as exc:
        p.error(str(exc))
    print(json.dumps(r, indent=2) if a.json else format_report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
