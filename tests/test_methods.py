"""Each pruning method prunes exactly what its formula says (hand-computed cases) and reaches the sparsity."""
import pytest
import torch

from kernel.format import pruned_count
from models.methods import METHODS, PruneContext, PruneState, get_method


def ctx(s, state=None, g=4, start=0, rule="exact"):
    return PruneContext(sparsity=s, prune_rule=rule, group_size=g, state=state or PruneState(), start=start)


def test_registry_names():
    assert set(METHODS) == {"none", "Kt_Mag", "Kc_Mag", "Kt_Opt", "Kc_Opt", "ThinK",
                            "Vt_Mag", "Vc_Mag", "Vt_Opt", "Vc_Opt", "ThinV"}
    with pytest.raises(ValueError, match="valid names: .*Kt_Mag"):
        get_method("Kt_Magnitude", "k")
    with pytest.raises(ValueError, match="v_method"):
        get_method("Kt_Mag", "v")  # a key method is not a value method


def test_kt_mag_hand_case():
    x = torch.tensor([[[[0.1, -3.0, 2.0, -0.5, 0.0, 1.0, -1.5, 0.2]]]])
    keep = get_method("Kt_Mag", "k").keep_mask(x, ctx(0.5))
    # the four largest |x|: -3.0, 2.0, -1.5, 1.0
    assert keep[0, 0, 0].tolist() == [False, True, True, False, False, True, True, False]


def test_kt_mag_ties_go_to_lower_channel():
    x = torch.ones(1, 1, 1, 8)
    keep = get_method("Kt_Mag", "k").keep_mask(x, ctx(0.5))
    assert keep[0, 0, 0].tolist() == [True] * 4 + [False] * 4


def test_kt_opt_uses_query_weight():
    x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]])
    st = PruneState(q_abs=torch.tensor([[[10.0, 1.0, 1.0, 0.1]]]))
    # scores 10, 2, 3, 0.4 -> keep channels 0 and 2
    keep = get_method("Kt_Opt", "k").keep_mask(x, ctx(0.5, st))
    assert keep[0, 0, 0].tolist() == [True, False, True, False]


def test_vt_opt_is_degenerate_equal_to_vt_mag():
    torch.manual_seed(0)
    v = torch.randn(2, 3, 17, 64)
    a = torch.rand(2, 3, 17) + 0.01  # attention received per token (positive)
    literal = (v.abs() * a[..., None])
    from kernel.format import topk_keep_mask
    k = 64 - pruned_count(64, 0.7)
    lit_mask = topk_keep_mask(literal, k)
    assert torch.equal(lit_mask, get_method("Vt_Opt", "v").keep_mask(v, ctx(0.7)))
    assert torch.equal(lit_mask, get_method("Vt_Mag", "v").keep_mask(v, ctx(0.7)))


def test_kc_opt_is_degenerate_equal_to_kc_mag():
    torch.manual_seed(1)
    x = torch.randn(2, 2, 8, 32)
    st = PruneState(q_abs=torch.rand(2, 2, 32) + 0.1)
    a = get_method("Kc_Opt", "k").keep_mask(x, ctx(0.5, st, g=4))
    b = get_method("Kc_Mag", "k").keep_mask(x, ctx(0.5, st, g=4))
    assert torch.equal(a, b)


def test_kc_mag_hand_case_per_channel_in_groups():
    # 4 tokens (one group), 2 channels... head dim must be a multiple of 32 only for storage; methods take any D
    x = torch.tensor([[[[1.0, -4.0], [-3.0, 1.0], [2.0, 0.5], [0.1, 3.0]]]])
    keep = get_method("Kc_Mag", "k").keep_mask(x, ctx(0.5, g=4))
    # channel 0 keeps tokens 1 (|-3|) and 2 (2.0); channel 1 keeps tokens 0 (|-4|) and 3 (3.0)
    assert keep[0, 0, :, 0].tolist() == [False, True, True, False]
    assert keep[0, 0, :, 1].tolist() == [True, False, False, True]


def test_vc_opt_weights_tokens_by_attention():
    x = torch.tensor([[[[1.0], [2.0], [3.0], [4.0]]]])
    st = PruneState(token_attn=torch.tensor([[[0.0, 0.0, 5.0, 4.0, 9.0, 9.0]]]))
    # chunk starts at global token 2: weights 5, 4, 9, 9 -> scores 5, 8, 27, 36 -> keep tokens 2, 3
    keep = get_method("Vc_Opt", "v").keep_mask(x, ctx(0.5, st, g=4, start=2))
    assert keep[0, 0, :, 0].tolist() == [False, False, True, True]
    st.token_attn = torch.tensor([[[0.0, 0.0, 100.0, 50.0, 0.1, 0.1]]])
    # scores 100, 100, 0.3, 0.4 -> keep tokens 0, 1
    keep = get_method("Vc_Opt", "v").keep_mask(x, ctx(0.5, st, g=4, start=2))
    assert keep[0, 0, :, 0].tolist() == [True, True, False, False]


def test_channel_method_refuses_partial_group():
    with pytest.raises(ValueError, match="groups of 4"):
        get_method("Vc_Mag", "v").keep_mask(torch.randn(1, 1, 6, 32), ctx(0.5, g=4))


def test_think_drops_whole_channels_by_query_key_norm():
    b, h, g, obs, n, d = 1, 1, 2, 3, 5, 4
    k = torch.ones(b, h, n, d) * torch.tensor([1.0, 5.0, 2.0, 0.1])
    q = torch.ones(b, h * g, obs, d) * torch.tensor([1.0, 0.1, 3.0, 1.0])
    m = get_method("ThinK", "k")
    c = ctx(0.5)
    m.init_from_prefill(k, q, None, c)
    # scores ~ qn*kn: [1, 0.5, 6, 0.1] (up to common factors) -> keep channels 0 and 2
    assert c.state.k_channels[0, 0].tolist() == [True, False, True, False]
    keep = m.keep_mask(torch.randn(b, h, 7, d), c)
    assert keep.all(dim=2).tolist() == [[[True, False, True, False]]]
    assert (~keep).all(dim=2).tolist() == [[[False, True, False, True]]]


def test_thinv_uses_attention_output_norm():
    b, h, n, d = 1, 1, 3, 4
    v = torch.tensor([[[[1.0, 0.0, 0.0, 9.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]]])
    attn = torch.tensor([[[[0.0, 0.5, 0.5]]]])  # one query head, one observed query; never looks at token 0
    m = get_method("ThinV", "v")
    c = ctx(0.5)
    m.init_from_prefill(v, None, attn, c)
    assert c.state.v_channels[0, 0].tolist() == [False, True, True, False]


@pytest.mark.parametrize("name", ["Kt_Mag", "Kt_Opt", "Vt_Mag", "Vt_Opt", "Kc_Mag", "Vc_Mag", "Vc_Opt"])
@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.7, 0.9])
def test_reaches_requested_sparsity(name, s):
    torch.manual_seed(0)
    side = name[0].lower()
    x = torch.randn(2, 3, 32, 64)
    st = PruneState(q_abs=torch.rand(2, 3, 64), token_attn=torch.rand(2, 3, 64))
    keep = get_method(name, side).keep_mask(x, ctx(s, st, g=32))
    achieved = 1 - keep.float().mean().item()
    n = 64 if name[1] == "t" else 32
    assert achieved == pytest.approx(pruned_count(n, s) / n)
    assert abs(achieved - s) <= 0.5 / n + 1e-9


def test_paper_prune_rule():
    # the original pruned int(s*D) - 1 values: 49.2 % at s=0.5 and 68.75 % at s=0.7 for D=128
    assert pruned_count(128, 0.5, "paper") == 63
    assert pruned_count(128, 0.7, "paper") == 88
    assert pruned_count(128, 0.7, "exact") == 90
