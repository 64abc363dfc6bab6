"""CPU: the phase summary of scripts/gpu_kernel_trace.py on synthetic trace records."""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "gpu_kernel_trace", os.path.join(os.path.dirname(__file__), "..", "scripts", "gpu_kernel_trace.py"))
trace = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(trace)


def _line(s, h, b, nsplit, smid, last, t0, t1, t2, t3, t4, t5, t6):
    return f"MTRACE {s} {h} {b} {nsplit} {smid} {last} {t0} {t1} {t2} {t3} {t4} {t5} {t6}"


def test_summary_phases_and_per_sm(capsys):
    base = 10_000_000
    lines = ["unrelated output"]
    # two SMs with two split blocks each (nsplit = 2: s = 0, 1), one window block (s = 2), times in ns
    ends = {(0, 0): 30_000, (1, 0): 39_000, (0, 1): 31_000, (1, 1): 33_000}
    for (s, b), t2 in ends.items():
        sm = b
        last = 1 if s == 1 else 0
        lines.append(_line(s, 0, b, 2, sm, last, base, base + 5_000, base + t2, base + t2 + 1_500,
                           base + t2 + 5_000, base + 1_200, base + 4_000))
    lines.append(_line(2, 0, 0, 2, 2, 0, base, base + 4_000, base + 6_000, base + 7_000, base + 7_000,
                       base + 1_000, base + 3_000))
    assert trace.summarize(lines, "synthetic") == 0
    out = capsys.readouterr().out
    assert "5 blocks (4 split, 1 window) on 3 SMs" in out
    assert "2 SMs with 2 split blocks:" in out
    rows = {ln.split("p10")[0].strip(): ln for ln in out.splitlines() if "p10" in ln}
    # the SMs' last tile ends are 39 and 33 us; the spreads 9 and 2 us
    assert rows["last block's tiles end (t2)"].split()[-2] == "39.0"
    assert rows["spread of its blocks' tile ends"].split()[-2] == "9.0"
    assert rows["first stage ready (t1 - t0)"].split()[-2] == "5.0"


def test_summary_without_records(capsys):
    assert trace.summarize(["nothing here"], "empty") == 1
    assert "no trace lines" in capsys.readouterr().out
