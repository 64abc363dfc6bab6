"""The sparse KV format: layout, byte cost, and the PyTorch reference (the executable specification).

Token-major bitmap format ("TBM"), one store per cache side (K or V) of one attention layer:

    bitmap  int32 [B, H, T_cap, D/32]   bit (c % 32) of word (c // 32) is set iff channel c of the token is kept
    values  dtype [B, H, V_cap]          the kept values of each token, in ascending channel order, tokens one
                                         after another (a per-(batch, head) value stream)
    offsets int32 [B, H, T_cap] or None  start of each token's values in the stream ("variable" mode);
                                         None in "fixed" mode, where every token keeps exactly k values and
                                         token t starts at t * k (an affine address, no metadata)

Byte cost per token per KV head (D = head_dim, e = bytes per value, n = kept values of the token):
    fixed mode:    D/8 + e*k              (D=128, fp16: 16 + 2k  -> rho = 0.5625 at 50 %, 0.3594 at 70 %:
                                           k = 128 - round(0.7 * 128) = 38)
    variable mode: D/8 + e*n + 4          (the int32 offset: +1.6 % of a dense fp16 token at D=128)
Dense: e*D.  rho = compressed / dense.

Per-token methods (Kt_*, Vt_*) and the structured ThinK/ThinV keep the same number of values in every token
and use fixed mode. Channel-wise methods (Kc_*, Vc_*) keep a fixed number of tokens per channel inside each
group of `group_size` tokens, so each token keeps a variable count but each group keeps exactly
D * kept_per_channel values: the stream position of every group is known on the host without a device sync.

Padded (left-padding) or ragged rows are expressed at attention time by a per-row token range
[comp_start[b], comp_end[b]) of the store; the store itself holds the same token count for every row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

WORD_BITS = 32
SUPPORTED_HEAD_DIMS = (64, 128)


def words_per_token(head_dim: int) -> int:
    if head_dim % WORD_BITS:
        raise ValueError(f"head_dim must be a multiple of {WORD_BITS} for the bitmap format, got {head_dim}")
    return head_dim // WORD_BITS


def kept_per_token(head_dim: int, sparsity: float, prune_rule: str = "exact") -> int:
    """Values kept per token for a per-token method.

    exact: prune round(s * D) values (s=0.5 -> 50 %, s=0.7 at D=128 -> 90 of 128 = 70.3 %).
    paper: the original kept every value >= the int(s*D)-th smallest magnitude, i.e. pruned int(s*D) - 1 values
           (49.2 % at s=0.5, 68.75 % at s=0.7 for D=128).
    """
    return head_dim - pruned_count(head_dim, sparsity, prune_rule)


def pruned_count(n: int, sparsity: float, prune_rule: str = "exact") -> int:
    if prune_rule == "exact":
        return min(n, int(math.floor(sparsity * n + 0.5)))
    if prune_rule == "paper":
        return max(int(sparsity * n) - 1, 0)
    raise ValueError(f"unknown prune_rule {prune_rule!r}; valid: 'exact', 'paper'")


def token_bytes(head_dim: int, kept: float, elem_bytes: int = 2, variable: bool = False) -> float:
    """Bytes of one compressed token of one KV head (bitmap + values [+ offset])."""
    return head_dim / 8 + elem_bytes * kept + (4 if variable else 0)


def rho(head_dim: int, kept: float, elem_bytes: int = 2, variable: bool = False) -> float:
    return token_bytes(head_dim, kept, elem_bytes, variable) / (elem_bytes * head_dim)


# ----------------------------------------------------------------------------------------------------------
# Bit packing
# ----------------------------------------------------------------------------------------------------------
def pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """bool [..., D] -> int32 [..., D/32] (bit c%32 of word c//32 = keep[c])."""
    d = keep.shape[-1]
    w = words_per_token(d)
    bits = keep.reshape(*keep.shape[:-1], w, WORD_BITS).to(torch.int64)
    shifts = torch.arange(WORD_BITS, device=keep.device, dtype=torch.int64)
    words = (bits << shifts).sum(-1)
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def unpack_bits(words: torch.Tensor, head_dim: int) -> torch.Tensor:
    """int32 [..., D/32] -> bool [..., D]."""
    shifts = torch.arange(WORD_BITS, device=words.device, dtype=torch.int64)
    bits = (words.to(torch.int64).unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*words.shape[:-1], head_dim).bool()


# ----------------------------------------------------------------------------------------------------------
# Reference prune / compress / decompress
# ----------------------------------------------------------------------------------------------------------
def topk_keep_mask(score: torch.Tensor, k: int, dim: int = -1) -> torch.Tensor:
    """Keep the k largest scores along `dim`; ties go to the lower index (the rule every kernel must follow)."""
    n = score.shape[dim]
    if k >= n:
        return torch.ones_like(score, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(score, dtype=torch.bool)
    order = torch.sort(score.float(), dim=dim, descending=True, stable=True).indices
    keep = torch.zeros_like(score, dtype=torch.bool)
    keep.scatter_(dim, order.narrow(dim, 0, k), True)
    return keep


@dataclass
class Chunk:
    """A compressed run of tokens for all (batch, head) rows, ready to append to a SparseStore."""
    bitmap: torch.Tensor            # int32 [B, H, n, W]
    values: torch.Tensor            # [B, H, n_values]  (same n_values for every row)
    offsets: torch.Tensor | None    # int32 [B, H, n], relative to the chunk start; None in fixed mode
    k: int | None                   # fixed mode: values per token

    @property
    def n_tokens(self) -> int:
        return self.bitmap.shape[2]


def compress_reference(x: torch.Tensor, keep: torch.Tensor, k: int | None = None) -> Chunk:
    """Pack the kept entries of x [B, H, n, D] (keep: bool, same shape).

    Fixed mode (k given): every token must keep exactly k values. Variable mode (k None): every (b, h) row must
    keep the same total number of values over the chunk (true for the channel-wise methods); the per-token
    start offsets are stored.
    """
    b, h, n, d = x.shape
    counts = keep.sum(-1)  # [B, H, n]
    if k is not None:
        if not bool((counts == k).all()):
            raise ValueError(f"fixed-k compression needs exactly {k} kept values per token")
    row_tot = counts.sum(-1)
    if row_tot.numel() and not bool((row_tot == row_tot.flatten()[0]).all()):
        raise ValueError("every (batch, head) row of a chunk must keep the same number of values")
    n_values = int(row_tot.flatten()[0]) if row_tot.numel() else 0
    # Boolean selection walks (b, h, t, c) in row-major order: token-major, channel ascending within each row,
    # and every row holds the same count, so the selected values reshape to the [B, H, n_values] stream.
    values = x.masked_select(keep).reshape(b, h, n_values)
    offsets = None
    if k is None:
        offsets = (torch.cumsum(counts, -1) - counts).to(torch.int32)
    return Chunk(pack_bits(keep), values, offsets, k)


def decompress_chunk(chunk: Chunk, head_dim: int, dtype=None) -> torch.Tensor:
    keep = unpack_bits(chunk.bitmap, head_dim)  # [B,H,n,D]
    out = torch.zeros(keep.shape, dtype=dtype or chunk.values.dtype, device=chunk.values.device)
    values = chunk.values
    if not values.is_contiguous():  # a view into a larger store: take the used prefix of every row
        values = values.contiguous()
    return out.masked_scatter_(keep, values.to(out.dtype))


# ----------------------------------------------------------------------------------------------------------
# The growable store
# ----------------------------------------------------------------------------------------------------------
class SparseStore:
    """Preallocated, growable (geometric x1.5 growth: O(1) amortised appends) storage of one cache side.

    `n_tokens` and `n_values` are host integers known without a device sync: fixed mode adds k values per token,
    variable mode adds each chunk's fixed total.
    """

    def __init__(self, batch: int, heads: int, head_dim: int, dtype: torch.dtype, device, k: int | None,
                 capacity_tokens: int = 256, values_per_token: float | None = None):
        self.batch, self.heads, self.head_dim = batch, heads, head_dim
        self.words = words_per_token(head_dim)
        self.dtype, self.device, self.k = dtype, torch.device(device), k
        self.n_tokens = 0
        self.n_values = 0
        cap = max(int(capacity_tokens), 1)
        self.bitmap = torch.zeros(batch, heads, cap, self.words, dtype=torch.int32, device=self.device)
        # variable mode: the caller's expected mean kept count per token (else the worst case, head_dim)
        vcap = int(math.ceil(cap * (k if k is not None else (values_per_token or head_dim))))
        self.values = torch.zeros(batch, heads, max(vcap, 1), dtype=dtype, device=self.device)
        self.offsets = None if k is not None else torch.zeros(batch, heads, cap, dtype=torch.int32,
                                                              device=self.device)

    @property
    def variable(self) -> bool:
        return self.k is None

    @property
    def token_capacity(self) -> int:
        return self.bitmap.shape[2]

    def _grow(self, need_tokens: int, need_values: int):
        if need_tokens > self.token_capacity:
            cap = max(need_tokens, self.token_capacity + self.token_capacity // 2)
            nb = torch.zeros(self.batch, self.heads, cap, self.words, dtype=torch.int32, device=self.device)
            nb[:, :, : self.n_tokens] = self.bitmap[:, :, : self.n_tokens]
            self.bitmap = nb
            if self.offsets is not None:
                no = torch.zeros(self.batch, self.heads, cap, dtype=torch.int32, device=self.device)
                no[:, :, : self.n_tokens] = self.offsets[:, :, : self.n_tokens]
                self.offsets = no
        if need_values > self.values.shape[-1]:
            cap = max(need_values, self.values.shape[-1] + self.values.shape[-1] // 2)
            nv = torch.zeros(self.batch, self.heads, cap, dtype=self.dtype, device=self.device)
            nv[:, :, : self.n_values] = self.values[:, :, : self.n_values]
            self.values = nv

    def append(self, chunk: Chunk) -> None:
        n, nv = chunk.n_tokens, chunk.values.shape[-1]
        if (chunk.k is None) != self.variable or (self.k is not None and chunk.k != self.k):
            raise ValueError("chunk mode does not match the store (fixed k vs variable)")
        self._grow(self.n_tokens + n, self.n_values + nv)
        t0, v0 = self.n_tokens, self.n_values
        self.bitmap[:, :, t0:t0 + n] = chunk.bitmap
        self.values[:, :, v0:v0 + nv] = chunk.values.to(self.dtype)
        if self.offsets is not None:
            self.offsets[:, :, t0:t0 + n] = chunk.offsets + v0
        self.n_tokens += n
        self.n_values += nv

    def as_chunk(self) -> Chunk:
        """A view of everything stored (no copy)."""
        offs = None if self.offsets is None else self.offsets[:, :, : self.n_tokens]
        return Chunk(self.bitmap[:, :, : self.n_tokens], self.values[:, :, : self.n_values], offs, self.k)

    def decompress(self, dtype=None) -> torch.Tensor:
        return decompress_chunk(self.as_chunk(), self.head_dim, dtype)

    def nbytes_used(self) -> int:
        """Bytes holding stored tokens (bitmap + values + offsets), from the tensors' element sizes."""
        per_row = self.n_tokens * self.words * self.bitmap.element_size() + self.n_values * self.values.element_size()
        if self.offsets is not None:
            per_row += self.n_tokens * self.offsets.element_size()
        return per_row * self.batch * self.heads

    def nbytes_allocated(self) -> int:
        total = self.bitmap.numel() * self.bitmap.element_size() + self.values.numel() * self.values.element_size()
        if self.offsets is not None:
            total += self.offsets.numel() * self.offsets.element_size()
        return total

    def select_batch(self, index: torch.Tensor) -> None:
        self.bitmap = self.bitmap[index]
        self.values = self.values[index]
        if self.offsets is not None:
            self.offsets = self.offsets[index]
        self.batch = self.bitmap.shape[0]


# ----------------------------------------------------------------------------------------------------------
# Reference decode attention over [compressed | dense window] (float32), the specification for the kernels
# ----------------------------------------------------------------------------------------------------------
def sparse_decode_attention_reference(
    q: torch.Tensor,                 # [B, Hq, D]
    k_store: Chunk, v_store: Chunk,  # compressed K and V (n_comp tokens)
    k_win: torch.Tensor, v_win: torch.Tensor,  # [B, H, Wn, D] dense window (current token included)
    scale: float,
    comp_start: torch.Tensor | None = None,  # int [B]: first valid compressed token (left padding)
    comp_end: torch.Tensor | None = None,    # int [B]: one past the last valid compressed token
    win_start: torch.Tensor | None = None,   # int [B]: first valid window token
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out [B, Hq, D] float32, lse [B, Hq] float32 natural-log sum of exp(scaled scores))."""
    b, hq, d = q.shape
    h = k_win.shape[1]
    g = hq // h
    kc = decompress_chunk(k_store, d, torch.float32)
    vc = decompress_chunk(v_store, d, torch.float32)
    n_comp = kc.shape[2]
    keys = torch.cat([kc, k_win.float()], 2)
    vals = torch.cat([vc, v_win.float()], 2)
    pos = torch.arange(keys.shape[2], device=q.device)
    valid = torch.ones(b, keys.shape[2], dtype=torch.bool, device=q.device)
    if comp_start is not None:
        valid &= ~((pos[None] < n_comp) & (pos[None] < comp_start.to(q.device)[:, None].long()))
    if comp_end is not None:
        valid &= ~((pos[None] < n_comp) & (pos[None] >= comp_end.to(q.device)[:, None].long()))
    if win_start is not None:
        valid &= ~((pos[None] >= n_comp) & (pos[None] - n_comp < win_start.to(q.device)[:, None].long()))
    qf = q.float().reshape(b, h, g, d)
    s = torch.einsum("bhgd,bhtd->bhgt", qf, keys) * scale
    s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None])
    out = torch.einsum("bhgt,bhtd->bhgd", p, vals)
    return out.reshape(b, hq, d), lse.reshape(b, hq)
