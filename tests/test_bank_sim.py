"""CPU: the shared-memory bank-conflict simulation behind the kernel's token skew (scripts/bank_conflict_sim.py)."""
import importlib.util
import os

import numpy as np

_spec = importlib.util.spec_from_file_location(
    "bank_conflict_sim", os.path.join(os.path.dirname(__file__), "..", "scripts", "bank_conflict_sim.py"))
sim = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sim)


def test_wavefronts_counts_distinct_words_per_bank():
    assert sim.wavefronts(np.array([], dtype=np.int64)) == 0
    assert sim.wavefronts(np.array([3, 3, 3])) == 1          # one word: broadcast
    assert sim.wavefronts(np.array([0, 32, 64, 1])) == 3     # three words in bank 0
    assert sim.wavefronts(np.arange(32)) == 1                # one word per bank


def test_skew_helps_where_token_runs_share_banks():
    # k = 64 at head_dim 128: 128-byte token runs all start in bank 0, the gap spreads them
    nat = sim.simulate(128, 64, False, tiles=6, seed=1)
    sk = sim.simulate(128, 64, True, tiles=6, seed=1)
    assert sk < 0.9 * nat
    # k = 24 at head_dim 64: runs already spread, the gap makes it worse (hence the kernel's k % 16 == 0 rule)
    assert sim.simulate(64, 24, True, tiles=6, seed=1) > sim.simulate(64, 24, False, tiles=6, seed=1)
