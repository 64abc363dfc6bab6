import json

import pytest

from kernel.format import rho
from kernel.report import SHAPES_FILE, kv_bytes_report, load_shape, main, tile_token_bytes

MIB = 1024 ** 2


def test_token_rho_hand_numbers():
    # D=128 fp16: 16 B bitmap + 2 B per kept value over 256 dense bytes.
    r = kv_bytes_report(32, 8, 128, 4096, k_sparsity=0.5, v_sparsity=0.5, window=0)
    assert r["k"]["kept_per_token"] == 64
    assert r["k"]["rho_token"] == pytest.approx(0.5625)
    assert r["rho"] == pytest.approx(0.5625)  # no window: the whole cache is compressed
    # s=0.7, exact rule: prune round(89.6)=90 of 128, keep 38 -> (16 + 76) / 256
    r = kv_bytes_report(32, 8, 128, 4096, k_sparsity=0.7, v_sparsity=0.7, window=0)
    assert r["k"]["kept_per_token"] == 38
    assert r["rho_compressed_part"] == pytest.approx(92 / 256)
    # The 0.3672 quoted in kernel/format.py is k=39 (89 pruned = floor(0.7 * 128)).
    assert rho(128, 39) == pytest.approx(0.3672, abs=1e-4)


def test_absolute_bytes_with_window():
    layers, heads, d, ctx, batch, win = 2, 4, 64, 100, 3, 32
    r = kv_bytes_report(layers, heads, d, ctx, batch=batch, k_sparsity=0.5, v_sparsity=0.75, window=win)
    rows = layers * heads * batch
    dense = 2 * rows * ctx * d * 2
    assert r["dense_bytes"] == dense and r["simulated_bytes"] == dense
    k_tok = 64 / 8 + 2 * 32          # 50 % of 64 kept
    v_tok = 64 / 8 + 2 * 16          # 75 % pruned
    comp = rows * ((ctx - win) * (k_tok + v_tok) + 2 * win * d * 2)
    assert r["compressed_bytes"] == pytest.approx(comp)
    assert r["rho"] == pytest.approx(comp / dense)
    assert r["compressed_tokens"] == ctx - win and r["window_tokens"] == win
    assert r["dense_bytes_per_token"] == layers * heads * 2 * d * 2
    assert r["compressed_bytes_per_token"] == pytest.approx(layers * heads * (k_tok + v_tok))


def test_window_longer_than_context_is_dense():
    r = kv_bytes_report(1, 1, 128, 10, window=32)
    assert r["compressed_bytes"] == r["dense_bytes"] and r["rho"] == 1.0


def test_variable_mode_adds_offset():
    fixed = kv_bytes_report(1, 1, 128, 1000, window=0)
    var = kv_bytes_report(1, 1, 128, 1000, window=0, k_variable=True)
    assert var["k"]["token_bytes"] - fixed["k"]["token_bytes"] == 4
    assert var["v"]["token_bytes"] == fixed["v"]["token_bytes"]


def test_tile_format_comparison():
    # PERF.md: ~24 B metadata + 2 * (kept + ~7) B per token at D=128 -> ~0.66 at 50 %, ~0.46 at 70 %.
    assert tile_token_bytes(128, 64) == pytest.approx(24 + 2 * (64 + 7))
    r50 = kv_bytes_report(32, 8, 128, 8192, k_sparsity=0.5, v_sparsity=0.5, window=0)
    r70 = kv_bytes_report(32, 8, 128, 8192, k_sparsity=0.7, v_sparsity=0.7, window=0)
    assert r50["tile_rho"] == pytest.approx(0.66, abs=0.015)
    assert r70["tile_rho"] == pytest.approx(0.46, abs=0.02)
    assert r50["tile_rho"] > r50["rho"] and r70["tile_rho"] > r70["rho"]
    rp = kv_bytes_report(32, 8, 128, 8192, k_sparsity=0.7, v_sparsity=0.7, window=0, prune_rule="paper")
    assert rp["tile_rho"] == pytest.approx(0.461, abs=1e-3)


def test_bad_input():
    with pytest.raises(ValueError):
        kv_bytes_report(1, 1, 128, 10, k_sparsity=1.0)
    with pytest.raises(ValueError):
        kv_bytes_report(1, 1, 100, 10)


def test_cli_table(capsys):
    assert main(["--layers", "32", "--kv-heads", "8", "--head-dim", "128", "--context", "32768", "--batch", "8",
                 "--k-sparsity", "0.7", "--v-sparsity", "0.7"]) == 0
    out = capsys.readouterr().out
    assert "dense" in out and "simulated" in out and "compressed" in out and "tile format" in out
    assert "32768.0" in out  # dense MiB: 2 * 32 * 8 * 8 * 32768 * 128 * 2 B


def test_cli_shape(capsys, tmp_path):
    try:
        shape = load_shape("llama3-8b")
    except (FileNotFoundError, KeyError):
        pytest.skip("config/model_shapes.json has no llama3-8b")
    assert shape == {"num_layers": 32, "num_kv_heads": 8, "head_dim": 128}
    assert main(["--shape", "llama3-8b", "--context", "1024", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["num_layers"] == 32 and r["dense_bytes"] == 2 * 32 * 8 * 1024 * 128 * 2


def test_load_shape_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_shape("llama3-8b", str(tmp_path / "none.json"))
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"m": {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 256}}))
    assert load_shape("m", str(p)) == {"num_layers": 2, "num_kv_heads": 4, "head_dim": 64}
    assert SHAPES_FILE.endswith("model_shapes.json")
