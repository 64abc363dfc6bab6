"""Pruning methods: small objects that say which K or V entries survive.

Every method works on one layer's chunk of tokens leaving the dense window, per KV head:
x is [batch, kv_heads, n, head_dim] (keys after RoPE). It returns a bool keep-mask of the same shape.
Shared state (accumulated query magnitudes, accumulated attention, structured channel choices) lives in a
`PruneState` owned by the cache layer, so it persists across decode steps.

Name grammar (the paper's): K/V = key or value cache; t = per token (rank the head_dim channels of each token),
c = per channel (rank the tokens of each channel inside a group of `group_size` tokens); Mag = magnitude,
Opt = output-aware (magnitude weighted by how much the entry reaches the attention output).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kernel.format import pruned_count, topk_keep_mask


@dataclass
class PruneState:
    """Per-layer state shared by the K and V methods. Tensors are float32 and persist for the whole sequence."""
    q_abs: torch.Tensor | None = None        # [B, H, D]  sum over observed queries of |q|, summed over the GQA group
    token_attn: torch.Tensor | None = None   # [B, H, cap] attention each token received, summed over group + queries
    k_channels: torch.Tensor | None = None   # [B, H, D] bool, ThinK's kept key channels
    v_channels: torch.Tensor | None = None   # [B, H, D] bool, ThinV's kept value channels
    extra: dict = field(default_factory=dict)


@dataclass
class PruneContext:
    sparsity: float
    prune_rule: str
    group_size: int
    state: PruneState
    start: int  # global index of the chunk's first token (to look up per-token state)


class PruneMethod:
    name = "base"
    side = "kv"              # "k", "v" or "kv"
    granularity = "token"    # "token" (fixed k per token), "channel" (variable per token), "structured", "none"
    needs_queries = False    # accumulate |q| (keys, output-aware)
    needs_attention = False  # accumulate attention received per token (values, output-aware)
    needs_prefill_obs = False

    def kept_per_token(self, head_dim: int, ctx: PruneContext) -> int | None:
        """Values kept per token when the method keeps a fixed count (fixed-k storage), else None."""
        if self.granularity == "token":
            return head_dim - pruned_count(head_dim, ctx.sparsity, ctx.prune_rule)
        return None

    def chunk_multiple(self, group_size: int) -> int:
        """Tokens leave the window in multiples of this many tokens."""
        return 1

    def channel_weight(self, ctx: PruneContext) -> torch.Tensor | None:
        """Per-channel weight for token-wise methods (score = |x| * weight), None for plain magnitude."""
        return None

    def keep_mask(self, x: torch.Tensor, ctx: PruneContext) -> torch.Tensor:
        raise NotImplementedError

    def init_from_prefill(self, x_all: torch.Tensor, q_obs: torch.Tensor | None, attn_obs: torch.Tensor | None,
                          ctx: PruneContext) -> None:
        """Called once after prefill with all prefill tokens of this side (structured methods choose channels)."""


# ---------------------------------------------------------------------------------------------------------------
class Dense(PruneMethod):
    """`none`: keep everything (dense baseline through the same code path)."""
    name, granularity = "none", "none"

    def kept_per_token(self, head_dim, ctx):
        return head_dim

    def keep_mask(self, x, ctx):
        return torch.ones_like(x, dtype=torch.bool)


class TokenMagnitude(PruneMethod):
    """Kt_Mag / Vt_Mag: per token keep the k = D - round(s*D) channels of largest |x|."""
    granularity = "token"

    def keep_mask(self, x, ctx):
        k = self.kept_per_token(x.shape[-1], ctx)
        w = self.channel_weight(ctx)
        score = x.abs().float() if w is None else x.abs().float() * w[:, :, None, :]
        return topk_keep_mask(score, k, dim=-1)


class KtMag(TokenMagnitude):
    """Kt_Mag: score(t, c) = |K[t, c]|, top-k over the channels of each token."""
    name, side = "Kt_Mag", "k"


class KtOpt(TokenMagnitude):
    """Kt_Opt: score(t, c) = |K[t, c]| * sum_{queries q seen so far} sum_{heads g in the GQA group} |q_g[c]|.

    A channel that queries weight heavily contributes more to q.k, so its key entries are kept preferentially.
    The query magnitudes accumulate from the last `obs_window` prefill queries and every decode query."""
    name, side, needs_queries = "Kt_Opt", "k", True

    def channel_weight(self, ctx):
        return ctx.state.q_abs


class VtMag(TokenMagnitude):
    """Vt_Mag: score(t, c) = |V[t, c]|, top-k over the channels of each token."""
    name, side = "Vt_Mag", "v"


class VtOpt(VtMag):
    """Vt_Opt: score(t, c) = |V[t, c]| * a_t, with a_t the attention token t received.

    Degenerate: a_t is the same for every channel of token t, so inside a token it ranks channels exactly like
    |V[t, c]| (Vt_Mag) whenever a_t > 0. Implemented as Vt_Mag; tests/test_methods.py checks the equivalence."""
    name = "Vt_Opt"


class ChannelMagnitude(PruneMethod):
    """Per channel, inside each group of `group_size` consecutive tokens, keep the G - round(s*G) tokens of
    largest score. Every group keeps exactly D * (G - round(s*G)) values; a single token may keep any count."""
    granularity = "channel"

    def chunk_multiple(self, group_size):
        return group_size

    def token_weight(self, x, ctx) -> torch.Tensor | None:
        return None

    def channel_weight(self, ctx):
        return None

    def keep_mask(self, x, ctx):
        b, h, n, d = x.shape
        g = ctx.group_size
        if n % g:
            raise ValueError(f"{self.name} prunes whole groups of {g} tokens, got a chunk of {n}")
        score = x.abs().float()
        cw = self.channel_weight(ctx)
        if cw is not None:
            score = score * cw[:, :, None, :]
        tw = self.token_weight(x, ctx)
        if tw is not None:
            score = score * tw[..., None]
        kept = g - pruned_count(g, ctx.sparsity, ctx.prune_rule)
        keep = topk_keep_mask(score.reshape(b, h, n // g, g, d), kept, dim=3)
        return keep.reshape(b, h, n, d)


class KcMag(ChannelMagnitude):
    """Kc_Mag: score(t, c) = |K[t, c]|, top tokens per channel within each group."""
    name, side = "Kc_Mag", "k"


class KcOpt(KcMag):
    """Kc_Opt: score(t, c) = |K[t, c]| * sum |q[c]| (as Kt_Opt).

    Degenerate: the query weight is constant along a channel, and Kc ranks tokens within a channel, so the ranking
    equals Kc_Mag's. Computed literally (the weight is applied); tests check the equivalence."""
    name, needs_queries = "Kc_Opt", True

    def channel_weight(self, ctx):
        return ctx.state.q_abs


class VcMag(ChannelMagnitude):
    """Vc_Mag: score(t, c) = |V[t, c]|, top tokens per channel within each group."""
    name, side = "Vc_Mag", "v"


class VcOpt(VcMag):
    """Vc_Opt: score(t, c) = |V[t, c]| * a_t, a_t = attention token t received, summed over the GQA group's query
    heads and over the observed queries (the last `obs_window` prefill queries, then every decode query while the
    token sat in the dense window). A token that is rarely attended contributes little to the output."""
    name, needs_attention = "Vc_Opt", True

    def token_weight(self, x, ctx):
        n = x.shape[2]
        return ctx.state.token_attn[:, :, ctx.start:ctx.start + n]


class Structured(PruneMethod):
    """Structured channel pruning: drop the same round(s*D) channels of a KV head for every token (chosen once,
    at prefill), so each token keeps exactly D - round(s*D) values."""
    granularity = "structured"
    needs_prefill_obs = True
    slot = "k_channels"

    def kept_per_token(self, head_dim, ctx):
        return head_dim - pruned_count(head_dim, ctx.sparsity, ctx.prune_rule)

    def channel_scores(self, x_all, q_obs, attn_obs) -> torch.Tensor:
        raise NotImplementedError

    def init_from_prefill(self, x_all, q_obs, attn_obs, ctx):
        score = self.channel_scores(x_all, q_obs, attn_obs)  # [B, H, D]
        k = self.kept_per_token(x_all.shape[-1], ctx)
        setattr(ctx.state, self.slot, topk_keep_mask(score, k, dim=-1))

    def keep_mask(self, x, ctx):
        chans = getattr(ctx.state, self.slot)
        if chans is None:
            raise RuntimeError(f"{self.name}: channels are chosen at prefill, but no prefill was seen")
        return chans[:, :, None, :].expand_as(x).clone()


class ThinK(Structured):
    """ThinK (keys): channel score_c = sum_g ||Q_obs[g, :, c]||_2 * ||K[:, c]||_2 over the prefill keys and the last
    `obs_window` prefill queries of the group's heads g; the lowest-scoring channels are dropped."""
    name, side, slot = "ThinK", "k", "k_channels"

    def channel_scores(self, x_all, q_obs, attn_obs):
        b, h, _, d = x_all.shape
        q = q_obs.float().reshape(b, h, -1, q_obs.shape[-2], d)   # [B, H, G, obs, D]
        qn = q.norm(dim=3).sum(2)                               # [B, H, D]
        kn = x_all.float().norm(dim=2)                          # [B, H, D]
        return qn * kn


class ThinV(Structured):
    """ThinV (values): channel score_c = sum_g ||(A_obs[g] @ V)[:, c]||_2, the norm of channel c of the attention
    output of the last `obs_window` prefill queries; the channels that reach the output least are dropped."""
    name, side, slot = "ThinV", "v", "v_channels"

    def channel_scores(self, x_all, q_obs, attn_obs):
        b, h, n, d = x_all.shape
        a = attn_obs.float().reshape(b, h, -1, attn_obs.shape[-2], n)  # [B, H, G, obs, n]
        out = torch.einsum("bhgon,bhnd->bhgod", a, x_all.float())
        return out.norm(dim=3).sum(2)


METHODS: dict[str, type[PruneMethod]] = {
    cls.name: cls for cls in (Dense, KtMag, KcMag, KtOpt, KcOpt, ThinK, VtMag, VcMag, VtOpt, VcOpt, ThinV)
}
K_METHODS = [n for n, c in METHODS.items() if c.side in ("k", "kv")]
V_METHODS = [n for n, c in METHODS.items() if c.side in ("v", "kv")]


def get_method(name: str, side: str) -> PruneMethod:
    valid = K_METHODS if side == "k" else V_METHODS
    if name not in METHODS or name not in valid:
        flag = "k_method" if side == "k" else "v_method"
        raise ValueError(f"unknown {flag} {name!r}; valid names: {', '.join(valid)}")
    return METHODS[name]()
