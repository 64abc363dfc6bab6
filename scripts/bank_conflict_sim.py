"""Shared-memory bank conflicts of the sparse decode kernel's value gathers, simulated on random bitmaps (CPU only).

The kernel (kernel/csrc/sparse_decode.cu) gathers each kept value with a 2-byte shared-memory load. One warp-wide
load instruction costs as many wavefronts as the largest number of distinct 4-byte words its active lanes touch in one
of the 32 banks. This script replays the lane -> (token, channel) pattern of one 16-token warp tile:

- K side (S^T = K Q^T): lane (gq, q4) walks token 8*jt + gq, channel region q4 (D/4 channels) as two chains of D/8;
- V side (O^T = V^T P^T): lane (q4, gq) walks tokens (2q4, 2q4+1) and (2q4+8, 2q4+9), channel region gq (D/8 channels)
  in two halves,

with token t's values at half-word offset base(t) + rank of the channel among the token's kept channels. It prints the
wavefronts per tile for the natural layout (base = t*k) and for the 16-byte token skew (base = t*(k+8)) that the
kernel uses when k % 16 == 0 and head_dim is 128 (docs/KERNEL_NOTES.md, v9).

    python scripts/bank_conflict_sim.py [--tiles 40] [--seed 0]
"""
from __future__ import annotations

import argparse

import numpy as np


def wavefronts(words: np.ndarray) -> int:
    """Wavefronts of one warp-wide load: max over banks of the distinct words addressed there (0 if no lane)."""
    if words.size == 0:
        return 0
    words = np.unique(words)
    return int(np.bincount(words % 32, minlength=32).max())


def tile_wavefronts(bm: np.ndarray, base: np.ndarray) -> int:
    """Gather wavefronts (K and V) of one 16-token tile; bm: [16, D] bool keep mask, base: [16] half-word offsets."""
    D = bm.shape[1]
    rk, rv = D // 4, D // 8
    rank = np.cumsum(bm, axis=1) - bm
    addr = base[:, None] + rank  # half-word offset of every (token, channel)
    total = 0

    def load(tokens, channels):
        t, c = np.asarray(tokens), np.asarray(channels)
        keep = bm[t, c]
        return wavefronts(addr[t, c][keep] // 2)

    gq, q4 = np.meshgrid(np.arange(8), np.arange(4), indexing="ij")
    gq, q4 = gq.ravel(), q4.ravel()
    for jt in range(2):  # K: token 8*jt + gq, region q4, chains lo/hi of rk/2 channels
        for chain in range(2):
            for i in range(rk // 2):
                total += load(8 * jt + gq, rk * q4 + (rk // 2) * chain + i)
    for pair in range(2):  # V: tokens 2q4 + which + 8*pair, region gq, halves of rv/2 channels
        for half in range(2):
            for i in range(rv // 2):
                for which in range(2):
                    total += load(2 * q4 + which + 8 * pair, gq * rv + (rv // 2) * half + i)
    return total


def simulate(D: int, k: int, skew: bool, tiles: int, seed: int) -> float:
    """Mean gather wavefronts per 16-token warp tile over random per-token top-k masks."""
    rng = np.random.default_rng(seed)
    stride = k + (8 if skew else 0)
    base = np.arange(16) * stride
    tot = 0
    for _ in range(tiles):
        bm = np.zeros((16, D), dtype=bool)
        for t in range(16):
            bm[t, rng.choice(D, k, replace=False)] = True
        tot += tile_wavefronts(bm, base)
    return tot / tiles


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print("| head_dim | k | natural | 16-byte skew |")
    print("|---|---|---|---|")
    for D, k in ((128, 64), (128, 48), (128, 40), (128, 38), (128, 96), (64, 32), (64, 24), (64, 19)):
        nat = simulate(D, k, False, args.tiles, args.seed)
        sk = simulate(D, k, True, args.tiles, args.seed)
        print(f"| {D} | {k} | {nat:.1f} | {sk:.1f} |", flush=True)


if __name__ == "__main__":
    main()
