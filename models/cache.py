"""The Mustafar KV cache: a transformers `Cache` whose layers prune K and V element by element.

How it plugs into a stock model (no modeling code is copied or patched):
  * `MustafarCache` is a `transformers.Cache` holding one `MustafarLayer` (a `CacheLayerMixin`) per attention layer;
    pass it to `model(...)` / `model.generate(...)` as `past_key_values`.
  * `MustafarLayer.update()` stores the new K (after RoPE) and V and returns the layer itself in place of the
    key/value tensors; the attention function registered under the name "mustafar" in transformers'
    `AttentionInterface` recognises it and asks the layer to attend. Given plain tensors (a forward without our
    cache), it is exactly transformers' SDPA attention.

Timeline of one layer (paper-compatible defaults):
  prefill  dense, unpruned attention over the prompt; then every token except the `window` most recent is pruned
           per KV head and moved to the pruned store.
  decode   the new token joins the dense window; the query attends to [pruned | window | current] with one softmax;
           afterwards the oldest token leaves the window and is pruned once (channel-wise methods: groups of
           `group_size` tokens leave together, so the window holds window .. window + group_size - 1 tokens).

Two storage backends behind one interface:
  simulated   one dense buffer; pruned entries are set to zero (the paper's accuracy path; saves no memory).
  compressed  the bitmap format of `kernel/format.py` (really smaller), decode attention on it through
              `kernel.attention.sparse_decode_attention` (CUDA kernel on GPU, PyTorch reference elsewhere),
              merged with the dense window by log-sum-exp.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from kernel.format import pruned_count, words_per_token
from models.methods import K_METHODS, V_METHODS, PruneContext, PruneState, get_method

BACKENDS = ("simulated", "compressed")
PRUNE_RULES = ("exact", "paper")


@dataclass
class MustafarConfig:
    k_method: str = "Kt_Mag"
    v_method: str = "Vt_Mag"
    k_sparsity: float = 0.5
    v_sparsity: float = 0.5
    window: int = 32
    group_size: int = 32
    backend: str = "simulated"
    prune_rule: str = "exact"
    obs_window: int | None = None  # prefill queries observed by output-aware/structured methods (default: window)
    capacity: int | None = None    # tokens to preallocate per sequence (prompt + new tokens); grows past it if needed

    def validate(self) -> "MustafarConfig":
        for flag in ("k_sparsity", "v_sparsity"):
            s = getattr(self, flag)
            if not isinstance(s, (int, float)) or isinstance(s, bool) or not (0.0 <= float(s) < 1.0) or math.isnan(s):
                raise ValueError(f"{flag} must be a number in [0, 1), got {s!r}")
        if self.k_method not in K_METHODS:
            raise ValueError(f"unknown k_method {self.k_method!r}; valid names: {', '.join(K_METHODS)}")
        if self.v_method not in V_METHODS:
            raise ValueError(f"unknown v_method {self.v_method!r}; valid names: {', '.join(V_METHODS)}")
        if not isinstance(self.window, int) or self.window < 0:
            raise ValueError(f"window must be an integer >= 0, got {self.window!r}")
        if not isinstance(self.group_size, int) or self.group_size <= 0:
            raise ValueError(f"group_size must be an integer > 0, got {self.group_size!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; valid: {', '.join(BACKENDS)}")
        if self.prune_rule not in PRUNE_RULES:
            raise ValueError(f"unknown prune_rule {self.prune_rule!r}; valid: {', '.join(PRUNE_RULES)}")
        if self.obs_window is not None and (not isinstance(self.obs_window, int) or self.obs_window < 1):
            raise ValueError(f"obs_window must be an integer >= 1, got {self.obs_window!r}")
        if self.capacity is not None and (not isinstance(self.capacity, int) or self.capacity < 1):
            raise ValueError(f"capacity must be an integer >= 1, got {self.capacity!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def _sdpa(module, query, key, value, attention_mask, scaling):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    backends = contextlib.nullcontext()
    if query.is_cuda and query.shape[2] == 1:
        # Decode: the KV length changes every step, and PyTorch's cuDNN SDPA backend builds a new plan for every
        # new length (~1.5 ms of CPU per call on an H200); flash/efficient kernels read the same bytes without it.
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backends = sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
    with backends:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=0.0)[0]


def _grow(buf: torch.Tensor, used: int, need: int, dim: int = 2) -> torch.Tensor:
    """Capacity doubling along `dim`: amortised O(1) appends."""
    if need <= buf.shape[dim]:
        return buf
    shape = list(buf.shape)
    shape[dim] = max(need, buf.shape[dim] + buf.shape[dim] // 2)  # geometric growth (x1.5)
    new = torch.zeros(shape, dtype=buf.dtype, device=buf.device)
    new.narrow(dim, 0, used).copy_(buf.narrow(dim, 0, used))
    return new


# ---------------------------------------------------------------------------------------------------------------
# Storage backends
# ---------------------------------------------------------------------------------------------------------------
class SimulatedStorage:
    """One dense buffer per side: tokens [0, n_comp) are pruned (zeros in place), [n_comp, n_total) the window."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, capacity: int | None = None):
        b, h, n, d = k.shape
        cap = max(n, capacity or 16)
        self.k = torch.zeros(b, h, cap, d, dtype=k.dtype, device=k.device)
        self.v = torch.zeros(b, h, cap, v.shape[-1], dtype=v.dtype, device=v.device)
        self.n_total = 0
        self.n_comp = 0

    @property
    def n_win(self):
        return self.n_total - self.n_comp

    def append(self, k, v):
        n = k.shape[2]
        self.k = _grow(self.k, self.n_total, self.n_total + n)
        self.v = _grow(self.v, self.n_total, self.n_total + n)
        self.k[:, :, self.n_total:self.n_total + n] = k
        self.v[:, :, self.n_total:self.n_total + n] = v
        self.n_total += n

    def window(self):
        return self.k[:, :, self.n_comp:self.n_total], self.v[:, :, self.n_comp:self.n_total]

    def evict(self, n, k_keep, v_keep):
        sl = slice(self.n_comp, self.n_comp + n)
        self.k[:, :, sl].masked_fill_(~k_keep, 0)
        self.v[:, :, sl].masked_fill_(~v_keep, 0)
        self.n_comp += n

    def dense_kv(self):
        return self.k[:, :, : self.n_total], self.v[:, :, : self.n_total]

    def decode_attention(self, module, query, attention_mask, scaling, valid_start, need_lse):
        k, v = self.dense_kv()
        out = _sdpa(module, query, k, v, attention_mask, scaling)
        lse = None
        if need_lse:
            lse = _masked_lse(query[:, :, 0], k, scaling, valid_start)
        return out, lse

    def nbytes(self) -> int:
        return (self.n_total * self.k.shape[-1] * self.k.element_size() * 2) * self.k.shape[0] * self.k.shape[1]

    def nbytes_allocated(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()

    def select_batch(self, index):
        self.k, self.v = self.k[index], self.v[index]


def _masked_lse(q, k, scaling, valid_start):
    """log-sum-exp of the scaled scores of q [B, Hq, D] over k [B, H, T, D] (tokens before valid_start masked)."""
    b, hq, d = q.shape
    h = k.shape[1]
    s = torch.einsum("bhgd,bhtd->bhgt", q.float().reshape(b, h, hq // h, d), k.float()) * scaling
    if valid_start is not None:
        pos = torch.arange(k.shape[2], device=k.device)
        s = s.masked_fill((pos[None, :] < valid_start[:, None])[:, None, None, :], float("-inf"))
    return torch.logsumexp(s, -1).reshape(b, hq)


class CompressedStorage:
    """Pruned tokens in the sparse bitmap format (kernel/format.py), the window in a small dense buffer.

    The window is the slice [w0, w0 + n_win) of its buffer: evicting advances w0 (no copy) and the live tokens are
    moved back to the front only when the buffer's end is reached, so a decode step moves O(1) dense bytes."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, k_fixed: int | None, v_fixed: int | None, slack: int,
                 capacity: int | None = None, k_mean: float | None = None, v_mean: float | None = None):
        from kernel.format import SparseStore

        b, h, n, d = k.shape
        words_per_token(d)  # refuses head dims the bitmap cannot hold
        cap = max(n, capacity or 64)
        self.k_store = SparseStore(b, h, d, k.dtype, k.device, k_fixed, capacity_tokens=cap, values_per_token=k_mean)
        self.v_store = SparseStore(b, h, v.shape[-1], v.dtype, v.device, v_fixed, capacity_tokens=cap,
                                   values_per_token=v_mean)
        self.slack = slack + 16  # steady-state window buffer: the window, one eviction chunk, and room to advance
        self.wk = torch.zeros(b, h, max(n, self.slack), d, dtype=k.dtype, device=k.device)
        self.wv = torch.zeros(b, h, max(n, self.slack), v.shape[-1], dtype=v.dtype, device=v.device)
        self.w0 = 0
        self.n_win = 0

    @property
    def n_comp(self):
        return self.k_store.n_tokens

    @property
    def n_total(self):
        return self.n_comp + self.n_win

    def _compact(self, size: int):
        """Move the live window to the front of a buffer of `size` tokens (reallocating if the size changes)."""
        w0, n = self.w0, self.n_win
        if size != self.wk.shape[2]:
            wk = torch.zeros(*self.wk.shape[:2], size, self.wk.shape[3], dtype=self.wk.dtype, device=self.wk.device)
            wv = torch.zeros(*self.wv.shape[:2], size, self.wv.shape[3], dtype=self.wv.dtype, device=self.wv.device)
            wk[:, :, :n] = self.wk[:, :, w0:w0 + n]
            wv[:, :, :n] = self.wv[:, :, w0:w0 + n]
            self.wk, self.wv = wk, wv
        elif w0:
            self.wk[:, :, :n] = self.wk[:, :, w0:w0 + n].clone()
            self.wv[:, :, :n] = self.wv[:, :, w0:w0 + n].clone()
        self.w0 = 0

    def append(self, k, v):
        n = k.shape[2]
        end = self.w0 + self.n_win
        if end + n > self.wk.shape[2]:
            self._compact(max(self.wk.shape[2], self.n_win + n))
            end = self.n_win
        self.wk[:, :, end:end + n] = k
        self.wv[:, :, end:end + n] = v
        self.n_win += n

    def window(self):
        return self.wk[:, :, self.w0:self.w0 + self.n_win], self.wv[:, :, self.w0:self.w0 + self.n_win]

    def evict(self, n, k_chunk, v_chunk):
        self.k_store.append(k_chunk)
        self.v_store.append(v_chunk)
        self.w0 += n
        self.n_win -= n
        if self.wk.shape[2] > 2 * self.slack and self.n_win < self.slack:
            self._compact(self.slack)  # after a long prefill, give the prompt-sized window buffer back

    def dense_kv(self):
        kc = self.k_store.decompress()
        vc = self.v_store.decompress()
        k, v = self.window()
        return torch.cat([kc.to(k.dtype), k], 2), torch.cat([vc.to(v.dtype), v], 2)

    def decode_attention(self, module, query, attention_mask, scaling, valid_start, need_lse):
        from kernel.attention import sparse_decode_attention

        n_comp = self.n_comp
        comp_start = win_start = None  # None: every stored token is valid (no left padding)
        if valid_start is not None:
            comp_start = valid_start.clamp(max=n_comp).to(torch.int32)
            win_start = (valid_start - n_comp).clamp(min=0).to(torch.int32)
        kw, vw = self.window()
        res = sparse_decode_attention(
            query[:, :, 0], self.k_store.as_chunk(), self.v_store.as_chunk(), kw, vw, self.n_win, scaling,
            comp_start=comp_start, comp_end=None, win_start=win_start, return_lse=need_lse)
        out, lse = res if need_lse else (res, None)
        return out[:, None].to(query.dtype), lse  # [B, 1, Hq, D]

    def nbytes(self) -> int:
        d = self.wk.shape[-1]
        win = self.n_win * d * self.wk.element_size() * 2 * self.wk.shape[0] * self.wk.shape[1]
        return self.k_store.nbytes_used() + self.v_store.nbytes_used() + win

    def nbytes_allocated(self) -> int:
        return (self.k_store.nbytes_allocated() + self.v_store.nbytes_allocated()
                + self.wk.numel() * self.wk.element_size() + self.wv.numel() * self.wv.element_size())

    def select_batch(self, index):
        self.k_store.select_batch(index)
        self.v_store.select_batch(index)
        self.wk, self.wv = self.wk[index], self.wv[index]


# ---------------------------------------------------------------------------------------------------------------
# One layer
# ---------------------------------------------------------------------------------------------------------------
class MustafarLayer(CacheLayerMixin):
    is_compileable = False
    is_sliding = False

    def __init__(self, config: MustafarConfig, layer_idx: int = 0):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.k_method = get_method(config.k_method, "k")
        self.v_method = get_method(config.v_method, "v")
        self.chunk = max(self.k_method.chunk_multiple(config.group_size), self.v_method.chunk_multiple(config.group_size))
        self.storage = None
        self.state = PruneState()
        self.valid_start = None  # [B] int64: first non-padding token (left padding)
        self._pending_prefill = False
        self._n_new = 0
        self.kept = {"k": 0, "v": 0}     # kept entries among pruned tokens (int or device tensor)
        self.seen = {"k": 0, "v": 0}     # entries of pruned tokens

    # -- CacheLayerMixin interface -------------------------------------------------------------------------------
    def lazy_initialization(self, key_states, value_states):
        cfg = self.config
        self.device, self.dtype = key_states.device, key_states.dtype
        if cfg.backend == "simulated":
            self.storage = SimulatedStorage(key_states, value_states, cfg.capacity)
        else:
            d = key_states.shape[-1]
            ctx_k, ctx_v = self._ctx("k", 0), self._ctx("v", 0)
            kf = self.k_method.kept_per_token(d, ctx_k)
            vf = self.v_method.kept_per_token(value_states.shape[-1], ctx_v)
            g = cfg.group_size  # channel-wise methods keep g - round(s*g) of every g tokens in each channel
            km = d * (g - pruned_count(g, cfg.k_sparsity, cfg.prune_rule)) / g
            vm = value_states.shape[-1] * (g - pruned_count(g, cfg.v_sparsity, cfg.prune_rule)) / g
            self.storage = CompressedStorage(key_states, value_states, kf, vf, slack=cfg.window + self.chunk + 1,
                                             capacity=cfg.capacity, k_mean=km, v_mean=vm)
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._pending_prefill = self.storage.n_total == 0
        self._n_new = key_states.shape[2]
        self.storage.append(key_states, value_states)
        return self, self

    def get_seq_length(self) -> int:
        return 0 if self.storage is None else self.storage.n_total

    def ingest(self, key_states, value_states):
        """Store tokens and prune what leaves the window, without attention (benchmarks fill caches this way).
        Methods that observe prefill queries or attention cannot be used here."""
        for m in (self.k_method, self.v_method):
            if m.needs_queries or m.needs_attention or m.needs_prefill_obs:
                raise ValueError(f"{m.name} needs prefill queries; ingest() serves query-free methods only")
        self.update(key_states, value_states)
        self._pending_prefill = False
        self._evict()

    def get_mask_sizes(self, query_length):
        if isinstance(query_length, torch.Tensor):  # early 5.x passes cache_position instead of the query length
            query_length = query_length.shape[0]
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def get_max_cache_shape(self) -> int:  # the name of get_max_length in transformers < 5.1x
        return -1

    def reset(self):
        self.__init__(self.config, self.layer_idx)

    def reorder_cache(self, beam_idx):
        self.batch_select_indices(beam_idx)

    def batch_select_indices(self, indices):
        if self.storage is None:
            return
        indices = indices.to(self.device)
        self.storage.select_batch(indices)
        for name in ("q_abs", "token_attn", "k_channels", "v_channels"):
            t = getattr(self.state, name)
            if t is not None:
                setattr(self.state, name, t[indices])
        if self.valid_start is not None:
            self.valid_start = self.valid_start[indices]

    def batch_repeat_interleave(self, repeats: int):
        if self.storage is not None:
            b = self.storage_batch()
            self.batch_select_indices(torch.arange(b, device=self.device).repeat_interleave(repeats))

    def storage_batch(self):
        return (self.storage.k if isinstance(self.storage, SimulatedStorage) else self.storage.wk).shape[0]

    def crop(self, tokens_to_remove: int):
        raise NotImplementedError("MustafarCache cannot crop: pruned tokens cannot be un-pruned")

    # -- attention ---------------------------------------------------------------------------------------------------
    def _ctx(self, side, start):
        cfg = self.config
        s = cfg.k_sparsity if side == "k" else cfg.v_sparsity
        return PruneContext(sparsity=s, prune_rule=cfg.prune_rule, group_size=cfg.group_size, state=self.state,
                            start=start)

    @property
    def _needs_queries(self):
        return self.k_method.needs_queries or self.v_method.needs_queries

    @property
    def _needs_attention(self):
        return self.k_method.needs_attention or self.v_method.needs_attention

    def attend(self, module, query, attention_mask, scaling):
        """query [B, Hq, Lq, D] -> attention output [B, Lq, Hq, D]."""
        lq = query.shape[2]
        if self._pending_prefill:
            self._pending_prefill = False
            k, v = self.storage.window()
            out = _sdpa(module, query, k, v, attention_mask, scaling)
            self._observe_prefill(query, k, v, attention_mask, scaling)
        elif lq == 1:
            if self._needs_queries:
                self._add_query_magnitude(query)
            out, lse = self.storage.decode_attention(module, query, attention_mask, scaling, self.valid_start,
                                                     self._needs_attention)
            if self._needs_attention:
                self._add_window_attention(query[:, :, 0], lse, scaling)
        else:
            # several new tokens on top of an existing cache (e.g. assisted decoding): attend densely over the
            # decompressed cache; query magnitudes are recorded, window attention is not accumulated on this path
            if self._needs_queries:
                self._add_query_magnitude(query)
            k, v = self.storage.dense_kv()
            out = _sdpa(module, query, k, v, attention_mask, scaling)
        self._evict()
        return out

    def _observe_prefill(self, query, k, v, attention_mask, scaling):
        b, hq, lq, d = query.shape
        h = k.shape[1]
        g = hq // h
        n = k.shape[2]
        if attention_mask is not None:
            allowed = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
            last = allowed[:, 0, -1, :].expand(b, -1) if allowed.shape[0] == b else allowed[:, 0, -1, :].expand(b, -1)
            self.valid_start = torch.argmax(last.to(torch.int8), dim=-1).to(torch.long)
        methods = (self.k_method, self.v_method)
        if not any(m.needs_queries or m.needs_attention or m.needs_prefill_obs for m in methods):
            return
        obs = min(self.config.obs_window or max(self.config.window, 1), lq)
        q_obs = query[:, :, lq - obs:]
        if self.valid_start is not None:
            # padding positions must not vote: zero their queries and keys for the statistics
            qpos = torch.arange(n - obs, n, device=query.device)
            q_obs = q_obs.masked_fill((qpos[None, :] < self.valid_start[:, None])[:, None, :, None], 0)
            kpos = torch.arange(n, device=query.device)
            pad = (kpos[None, :] < self.valid_start[:, None])[:, None, :, None]
            k, v = k.masked_fill(pad, 0), v.masked_fill(pad, 0)
        if self._needs_queries:
            self.state.q_abs = q_obs.float().abs().reshape(b, h, g, obs, d).sum((2, 3))
        attn = None
        if self._needs_attention or any(m.needs_prefill_obs for m in methods):
            s = torch.einsum("bhgod,bhnd->bhgon", q_obs.float().reshape(b, h, g, obs, d), k.float()) * scaling
            qpos = torch.arange(n - obs, n, device=query.device)
            kpos = torch.arange(n, device=query.device)
            bad = (kpos[None, :] > qpos[:, None])[None, None, None]
            if self.valid_start is not None:
                bad = bad | (kpos[None, :] < self.valid_start[:, None])[:, None, None, None, :]
            s = s.masked_fill(bad, float("-inf"))
            attn = torch.softmax(s, -1)  # [B, H, G, obs, n]
            attn = torch.nan_to_num(attn, nan=0.0)
        if self._needs_attention:
            self.state.token_attn = torch.zeros(b, h, max(n, 64), dtype=torch.float32, device=query.device)
            self.state.token_attn[:, :, :n] = attn.sum((2, 3))
        attn_flat = None if attn is None else attn.reshape(b, hq, obs, n)
        for m, x in ((self.k_method, k), (self.v_method, v)):
            if m.needs_prefill_obs:
                m.init_from_prefill(x, q_obs, attn_flat, self._ctx(m.side, 0))

    def _add_query_magnitude(self, query):
        b, hq, lq, d = query.shape
        h = self.storage.window()[0].shape[1]
        self.state.q_abs = self.state.q_abs + query.float().abs().reshape(b, h, hq // h, lq, d).sum((2, 3))

    def _add_window_attention(self, q, lse, scaling):
        """Add this step's attention probabilities of the dense-window tokens to their running totals."""
        kw, _ = self.storage.window()
        b, hq, d = q.shape
        h = kw.shape[1]
        n_comp, n_win = self.storage.n_comp, self.storage.n_win
        s = torch.einsum("bhgd,bhtd->bhgt", q.float().reshape(b, h, hq // h, d), kw.float()) * scaling
        p = torch.exp(s - lse.float().reshape(b, h, hq // h, 1))
        if self.valid_start is not None:
            pos = torch.arange(n_comp, n_comp + n_win, device=q.device)
            p = p.masked_fill((pos[None, :] < self.valid_start[:, None])[:, None, None, :], 0.0)
        ta = _grow(self.state.token_attn, n_comp + n_win - 1, n_comp + n_win)
        ta[:, :, n_comp:n_comp + n_win] += p.sum(2)
        self.state.token_attn = ta

    def _evict(self):
        excess = self.storage.n_win - self.config.window
        n = (excess // self.chunk) * self.chunk if excess > 0 else 0
        if n <= 0:
            return
        start = self.storage.n_comp
        kw, vw = self.storage.window()
        xk, xv = kw[:, :, :n], vw[:, :, :n]
        ctx_k, ctx_v = self._ctx("k", start), self._ctx("v", start)
        if isinstance(self.storage, SimulatedStorage):
            k_keep = self.k_method.keep_mask(xk, ctx_k)
            v_keep = self.v_method.keep_mask(xv, ctx_v)
            self._count("k", k_keep, xk)
            self._count("v", v_keep, xv)
            self.storage.evict(n, k_keep, v_keep)
        else:
            ck = self._compress(self.k_method, xk, ctx_k)
            cv = self._compress(self.v_method, xv, ctx_v)
            self._count("k", ck, xk)
            self._count("v", cv, xv)
            self.storage.evict(n, ck, cv)

    def _compress(self, method, x, ctx):
        from kernel.compress import compress_masked, prune_compress_topk

        d = x.shape[-1]
        if method.granularity in ("token", "none"):
            return prune_compress_topk(x, method.kept_per_token(d, ctx), method.channel_weight(ctx))
        keep = method.keep_mask(x, ctx)
        k = method.kept_per_token(d, ctx)
        n = x.shape[2]
        if k is not None:
            n_values = n * k
        else:  # channel-wise: every channel keeps g - round(s*g) tokens of each group of g
            g = ctx.group_size
            n_values = (n // g) * d * (g - pruned_count(g, ctx.sparsity, ctx.prune_rule))
        return compress_masked(x, keep, k, n_values=n_values)

    def _count(self, side, kept, x):
        self.seen[side] += x.numel()
        if isinstance(kept, torch.Tensor):
            self.kept[side] = self.kept[side] + kept.sum()
        else:  # a compressed chunk: every row holds the same number of values
            self.kept[side] += kept.values.shape[-1] * kept.values.shape[0] * kept.values.shape[1]


# ---------------------------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------------------------
class MustafarCache(Cache):
    """A transformers Cache of `MustafarLayer`s. Create a fresh one for every generate() call."""

    def __init__(self, config: MustafarConfig, num_layers: int):
        config.validate()
        self.mustafar_config = config
        super().__init__(layers=[MustafarLayer(config, i) for i in range(num_layers)])

    def stats(self) -> dict:
        """Achieved sparsity and bytes, measured from what the layers hold."""
        out = {"backend": self.mustafar_config.backend}
        for side in ("k", "v"):
            seen = sum(l.seen[side] for l in self.layers)
            kept = sum(float(l.kept[side]) for l in self.layers)
            total_tokens_entries = 0
            for l in self.layers:
                if l.storage is not None:
                    kw = l.storage.window()[0]
                    total_tokens_entries += l.storage.n_total * kw.shape[0] * kw.shape[1] * kw.shape[-1]
            out[f"{side}_pruned_entries"] = int(seen - kept)
            out[f"{side}_sparsity_pruned_region"] = (1 - kept / seen) if seen else 0.0
            out[f"{side}_sparsity_overall"] = ((seen - kept) / total_tokens_entries) if total_tokens_entries else 0.0
        dense = 0
        for l in self.layers:
            if l.storage is not None:
                kw = l.storage.window()[0]
                dense += 2 * l.storage.n_total * kw.shape[0] * kw.shape[1] * kw.shape[-1] * kw.element_size()
        out["dense_bytes"] = dense
        out["stored_bytes"] = sum(l.storage.nbytes() for l in self.layers if l.storage is not None)
        out["allocated_bytes"] = sum(l.storage.nbytes_allocated() for l in self.layers if l.storage is not None)
        out["rho"] = out["stored_bytes"] / dense if dense else float("nan")
        out["tokens"] = self.layers[0].get_seq_length() if self.layers else 0
        return out


def layer_kept_fraction(head_dim: int, sparsity: float, prune_rule: str = "exact") -> float:
    return 1 - pruned_count(head_dim, sparsity, prune_rule) / head_dim


def cache_kwargs(model, cache) -> dict:
    """The generate()/forward() keyword for a cache: `cache` on transformers versions that renamed it, else
    `past_key_values` (the name every 5.x accepts)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}
