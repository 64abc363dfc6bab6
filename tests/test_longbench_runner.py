"""Runner (resume, truncation, sharding), data loading errors, evaluation and the CLIs."""
import dataclasses
import json
import os
import subprocess
import sys
import types

import pytest

from longbench import data as D
from longbench import runner as R
from longbench.data import JsonlError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_samples(n=7):
    return [{"input": f"q{i}", "context": f"context {i}", "answers": [f"ans{i}"],
             "length": 1000 * i, "all_classes": None, "_id": f"id{i:02d}",
             "dataset": "hotpotqa", "language": "en"} for i in range(n)]


def fake_gen(sample):
    return f"pr\u00e9diction {sample['_id']}"


class Killed(Exception):
    pass


def killing_gen(after):
    calls = []

    def gen(sample):
        if len(calls) >= after:
            raise Killed()
        calls.append(sample["_id"])
        return fake_gen(sample)

    gen.calls = calls
    return gen


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def reference(tmp_path):
    out = tmp_path / "ref" / "hotpotqa.jsonl"
    R.run_task("hotpotqa", make_samples(), fake_gen, str(out), progress=False)
    return read_bytes(out)


# ------------------------------------------------------------------ runner

def test_record_format(reference):
    lines = reference.decode("utf-8").splitlines()
    assert len(lines) == 7
    rec = json.loads(lines[0])
    assert list(rec) == ["pred", "answers", "all_classes", "length", "_id"]
    assert "\u00e9" in lines[0]                      # ensure_ascii=False


def test_resume_after_kill_identical(tmp_path, reference):
    out = str(tmp_path / "run" / "hotpotqa.jsonl")
    with pytest.raises(Killed):
        R.run_task("hotpotqa", make_samples(), killing_gen(3), out, progress=False)
    assert len(read_bytes(out).splitlines()) == 3
    gen = killing_gen(100)
    R.run_task("hotpotqa", make_samples(), gen, out, progress=False)
    assert gen.calls == ["id03", "id04", "id05", "id06"]
    assert read_bytes(out) == reference
    gen = killing_gen(0)                              # complete: nothing is regenerated
    R.run_task("hotpotqa", make_samples(), gen, out, progress=False)
    assert read_bytes(out) == reference


def test_truncated_last_line_dropped(tmp_path, reference):
    out = tmp_path / "hotpotqa.jsonl"
    lines = reference.decode().splitlines(keepends=True)
    out.write_text("".join(lines[:4]) + lines[4][:17], encoding="utf-8")
    gen = killing_gen(100)
    R.run_task("hotpotqa", make_samples(), gen, str(out), progress=False)
    assert gen.calls == ["id04", "id05", "id06"]
    assert read_bytes(out) == reference


def test_non_prefix_resume_reordered(tmp_path, reference):
    out = tmp_path / "hotpotqa.jsonl"
    lines = reference.decode().splitlines(keepends=True)
    out.write_text(lines[5] + lines[1], encoding="utf-8")
    gen = killing_gen(100)
    R.run_task("hotpotqa", make_samples(), gen, str(out), progress=False)
    assert gen.calls == ["id00", "id02", "id03", "id04", "id06"]
    assert read_bytes(out) == reference


def test_malformed_middle_line_names_file_and_line(tmp_path, reference):
    out = tmp_path / "hotpotqa.jsonl"
    lines = reference.decode().splitlines(keepends=True)
    out.write_text(lines[0] + "{not json\n" + lines[2], encoding="utf-8")
    with pytest.raises(JsonlError) as ei:
        R.run_task("hotpotqa", make_samples(), fake_gen, str(out), progress=False)
    assert f"{out}:2:" in str(ei.value)


def test_stats_aggregated(tmp_path):
    out = tmp_path / "hotpotqa.jsonl"

    def gen(s):
        i = int(s["_id"][2:])
        return fake_gen(s), {"k_sparsity": 0.5 + 0.01 * i, "note": "x"}

    R.run_task("hotpotqa", make_samples(3), gen, str(out), progress=False)
    stats = json.loads((tmp_path / "hotpotqa.stats.json").read_text())
    assert stats["n_samples"] == 3
    assert stats["mean"]["k_sparsity"] == pytest.approx(0.51)
    assert stats["max"]["k_sparsity"] == pytest.approx(0.52)


def test_shards_without_process_group(tmp_path, reference):
    out = str(tmp_path / "hotpotqa.jsonl")
    r1 = R.run_task("hotpotqa", make_samples(), fake_gen, out, rank=1, world_size=2,
                    progress=False)
    assert r1.endswith(".part1of2") and not os.path.exists(out)
    r0 = R.run_task("hotpotqa", make_samples(), fake_gen, out, rank=0, world_size=2,
                    progress=False)
    assert r0 == out and read_bytes(out) == reference
    assert not any(".part" in n for n in os.listdir(tmp_path))


def _shard_worker(rank, world, init_file, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        R.run_task("hotpotqa", make_samples(), fake_gen, out, rank=rank, world_size=world,
                   progress=False)
    finally:
        dist.destroy_process_group()


def test_sharded_gloo_two_processes(tmp_path, reference):
    import torch.multiprocessing as mp

    out = str(tmp_path / "run" / "hotpotqa.jsonl")
    os.makedirs(os.path.dirname(out))
    mp.spawn(_shard_worker, args=(2, str(tmp_path / "dist_init"), out), nprocs=2, join=True)
    assert read_bytes(out) == reference
    assert os.listdir(os.path.dirname(out)) == ["hotpotqa.jsonl"]


# ------------------------------------------------------------------ data loading

def _write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")


def test_load_task_local_and_errors(tmp_path):
    _write_jsonl(tmp_path / "hotpotqa.jsonl", make_samples(5))
    assert [s["_id"] for s in D.load_task("hotpotqa", str(tmp_path), max_samples=2)] == \
        ["id00", "id01"]
    with pytest.raises(ValueError) as ei:
        D.load_task("no_such_task", str(tmp_path))
    assert "narrativeqa" in str(ei.value) and "repobench-p" in str(ei.value)
    _write_jsonl(tmp_path / "qasper.jsonl", [make_samples(1)[0], "{broken"])
    with pytest.raises(JsonlError, match=r"qasper\.jsonl:2:"):
        D.load_task("qasper", str(tmp_path))
    bad = make_samples(2)
    del bad[1]["answers"]
    _write_jsonl(tmp_path / "musique.jsonl", bad)
    with pytest.raises(JsonlError, match=r"musique\.jsonl:2: .*answers"):
        D.load_task("musique", str(tmp_path))
    with pytest.raises(FileNotFoundError):
        D.load_task("lcc", str(tmp_path))
    with pytest.raises(ValueError, match="LongBench-E"):
        D.load_task("narrativeqa", str(tmp_path), e=True)
    _write_jsonl(tmp_path / "qasper_e.jsonl", make_samples(2))
    assert len(D.load_task("qasper", str(tmp_path), e=True)) == 2


def test_hub_failure_message(monkeypatch):
    import datasets
    import huggingface_hub

    def boom(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)
    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(RuntimeError, match="--data_dir"):
        D.load_task("hotpotqa")


# ------------------------------------------------------------------ evaluation

import eval_long_bench as E  # noqa: E402


def _rec(pred, answers, length=100, all_classes=None, _id="x"):
    return {"pred": pred, "answers": answers, "all_classes": all_classes, "length": length,
            "_id": _id}


def make_run(d, scale=1):
    os.makedirs(d, exist_ok=True)
    _write_jsonl(os.path.join(d, "qasper.jsonl"), [_rec("yes", ["no"])])               # 0
    _write_jsonl(os.path.join(d, "hotpotqa.jsonl"), [
        _rec("Paris", ["Paris"], 100, _id="a"),
        _rec("The Eiffel Tower, in Paris.", ["Paris"], 5000, _id="b")])                # 70
    _write_jsonl(os.path.join(d, "2wikimqa.jsonl"), [_rec("Rome", ["Rome"])])          # 100
    cls = ["City", "Country"]
    _write_jsonl(os.path.join(d, "trec.jsonl"), [
        _rec("\nCity\nCountry", ["City"], all_classes=cls, _id="a"),
        _rec("Country" if scale else "City", ["City"], all_classes=cls, _id="b")])    # 50 / 100
    _write_jsonl(os.path.join(d, "passage_count.jsonl"), [_rec("7", ["7"], 9000)])     # 100
    _write_jsonl(os.path.join(d, "hotpotqa.samplestats.jsonl"), [{"_id": "a"}])        # ignored
    return d


def test_eval_hand_computed(tmp_path):
    run = make_run(str(tmp_path / "RUN_A"))
    r = E.evaluate_run(run)
    assert r["scores"] == {"qasper": 0.0, "hotpotqa": 70.0, "2wikimqa": 100.0, "trec": 50.0,
                           "passage_count": 100.0}
    assert r["task_mean"] == 64.0
    assert r["category_means"] == {"Single-Doc QA": 0.0, "Multi-Doc QA": 85.0,
                                   "Few-shot": 50.0, "Synthetic": 100.0}
    assert r["category_mean"] == 58.75
    assert E.main(["--model", run]) == 0
    saved = json.load(open(os.path.join(run, "result.json")))
    assert saved["category_mean"] == 58.75
    md = open(os.path.join(run, "result.md")).read()
    assert "| hotpotqa | 70.00 |" in md and "**Task mean**" in md


def test_eval_compare_with_baseline(tmp_path, capsys):
    a = make_run(str(tmp_path / "RUN_A"))
    base = make_run(str(tmp_path / "DENSE"), scale=0)
    assert E.main(["--runs", a, "--baseline", base]) == 0
    out = capsys.readouterr().out
    assert "| trec | 100.00 | 50.00 (-50.00) |" in out
    assert "| hotpotqa | 70.00 | 70.00 (+0.00) |" in out
    assert os.path.isfile(os.path.join(base, "result.json"))


def test_eval_e_buckets(tmp_path):
    run = make_run(str(tmp_path / "RUN_E"))
    r = E.evaluate_run(run, e=True)
    assert r["scores"]["hotpotqa"]["0-4k"] == 100.0 and r["scores"]["hotpotqa"]["4-8k"] == 40.0
    assert r["scores"]["passage_count"]["8k+"] == 100.0
    assert E.main(["--model", run, "--e"]) == 0
    saved = json.load(open(os.path.join(run, "result.json")))
    assert saved["scores"]["qasper"]["8k+"] is None           # empty bucket (NaN) -> null


def test_eval_errors(tmp_path, capsys):
    empty = tmp_path / "EMPTY"
    empty.mkdir()
    with pytest.raises(E.EvalError, match="no prediction files"):
        E.evaluate_run(str(empty))
    assert E.main(["--model", str(empty)]) == 2
    assert "no prediction files" in capsys.readouterr().err
    bad = tmp_path / "BAD"
    bad.mkdir()
    _write_jsonl(bad / "hotpotqa.jsonl", [_rec("x", ["y"]), "{oops", _rec("x", ["y"])])
    assert E.main(["--model", str(bad)]) == 2
    assert f"{bad / 'hotpotqa.jsonl'}:2:" in capsys.readouterr().err
    assert E.main(["--model", "does-not-exist-run"]) == 2


# ------------------------------------------------------------------ pred_long_bench CLI

import pred_long_bench as PLB  # noqa: E402


class FakeCache:
    def stats(self):
        return {"k_sparsity": 0.5, "v_sparsity": 0.5}


@dataclasses.dataclass
class FakeCfg:
    k_method: str = "Kt_Mag"
    v_method: str = "Vt_Mag"
    k_sparsity: float = 0.5
    v_sparsity: float = 0.5
    window: int = 32
    group_size: int = 32
    backend: str = "simulated"
    prune_rule: str = "exact"

    def validate(self):
        if self.k_method not in FAKE_METHODS:
            raise ValueError("k_method")


FAKE_METHODS = {"none": None, "Kt_Mag": None, "Vt_Mag": None}


class FakeModel:
    def __init__(self, tok):
        import torch

        self.tok = tok
        self.device = torch.device("cpu")
        self.config = types.SimpleNamespace(max_position_embeddings=8192, _name_or_path="smollm2")
        self.generation_config = types.SimpleNamespace(eos_token_id=None)
        self.caches = []

    def generate(self, input_ids, attention_mask=None, past_key_values=None, **kw):
        import torch

        self.caches.append(past_key_values)
        new = self.tok.encode(" Paris\nfox", add_special_tokens=False)[:kw["max_new_tokens"]]
        return torch.cat([input_ids, torch.tensor([new])], dim=1)


@pytest.fixture
def fake_models(monkeypatch):
    from test_longbench_prompts import make_tokenizer

    state = {"loaded": 0, "allow": True}
    tok = make_tokenizer()

    def load_model(name, dtype="auto", device="cpu"):
        assert state["allow"], "model loaded before argument validation finished"
        state["loaded"] += 1
        state["model"] = FakeModel(tok)
        return state["model"], tok

    mod = types.ModuleType("models")
    mod.load_model = load_model
    mod.MustafarConfig = FakeCfg
    mod.apply_mustafar = lambda model, cfg: FakeCache
    mod.METHODS = FAKE_METHODS
    monkeypatch.setitem(sys.modules, "models", mod)
    return state


@pytest.mark.parametrize("argv,flag", [
    (["--k_sparsity", "1.0"], "--k_sparsity"),
    (["--v_sparsity", "-0.1"], "--v_sparsity"),
    (["--k_method", "Bogus"], "--k_method"),
    (["--group_size", "0"], "--group_size"),
    (["--data_dir", "/no/such/dir"], "--data_dir"),
    (["--model_name_or_path", "./no/such/model"], "--model_name_or_path"),
    (["--model_name_or_path", "not-a-known-name"], "--model_name_or_path"),
    (["--datasets", "hotpotqa,nope"], "--datasets"),
    (["--datasets", "narrativeqa", "--e"], "--datasets"),
    (["--max_samples", "0"], "--max_samples"),
])
def test_cli_validation_before_model_load(fake_models, capsys, argv, flag):
    fake_models["allow"] = False
    with pytest.raises(SystemExit) as ei:
        PLB.main(argv + ["--datasets", "hotpotqa"] if "--datasets" not in argv else argv)
    assert ei.value.code == 2
    assert flag in capsys.readouterr().err
    assert fake_models["loaded"] == 0


def test_cli_subprocess_k_sparsity():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "pred_long_bench.py"),
                        "--k_sparsity", "1.0"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--k_sparsity" in p.stderr


def test_cli_end_to_end_with_fake_model(fake_models, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    _write_jsonl(data / "hotpotqa.jsonl", make_samples(3))
    trec = [dict(s, all_classes=["Paris", "Rome"], answers=["Paris"]) for s in make_samples(2)]
    _write_jsonl(data / "trec.jsonl", trec)
    args = ["--data_dir", str(data), "--datasets", "hotpotqa,trec", "--output_dir",
            str(tmp_path / "pred"), "--no_progress"]
    assert PLB.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    run_dir = out[-1].split("=", 1)[1]
    assert out[-1].startswith("RUN_DIR=")
    assert os.path.basename(run_dir) == "SmolLM2-135M-Instruct_7500_Kt_Mag0.5_Vt_Mag0.5_w32_simulated"
    recs = [json.loads(x) for x in open(os.path.join(run_dir, "hotpotqa.jsonl"))]
    assert [r["pred"] for r in recs] == [" Paris\nfox"] * 3
    assert all(isinstance(c, FakeCache) for c in fake_models["model"].caches)
    cfg = json.load(open(os.path.join(run_dir, "config.json")))
    assert cfg["args"]["k_sparsity"] == 0.5 and cfg["seed"] == 42 and "torch" in cfg["versions"]
    stats = json.load(open(os.path.join(run_dir, "hotpotqa.stats.json")))
    assert stats["mean"]["k_sparsity"] == 0.5 and stats["n_samples"] == 3
    r = E.evaluate_run(run_dir)
    assert r["scores"]["trec"] == 100.0                      # first line "Paris"
    # resuming into the same run dir with different settings is refused
    with pytest.raises(SystemExit, match="different settings"):
        PLB.main(args + ["--seed", "7"])
    # dense mode: separate run dir, no Mustafar methods
    assert PLB.main(args + ["--mode", "dense"]) == 0
    dense_dir = capsys.readouterr().out.strip().splitlines()[-1].split("=", 1)[1]
    assert os.path.basename(dense_dir) == "SmolLM2-135M-Instruct_7500_dense"
    cfg = json.load(open(os.path.join(dense_dir, "config.json")))
    assert cfg["identity"]["k_method"] == "none"


def test_long_test_sh_propagates_failure():
    p = subprocess.run(["bash", os.path.join(ROOT, "long_test.sh"), "1.0", "0.5"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "--k_sparsity" in p.stderr
    p = subprocess.run(["bash", os.path.join(ROOT, "long_test.sh")], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 2 and "usage" in p.stderr


def test_offline_task_hook(tmp_path, monkeypatch):
    from longbench import tasks as T

    calls = []

    def ensure_task_file(task, cache_dir, e=False):
        calls.append((task, cache_dir, e))
        os.makedirs(cache_dir, exist_ok=True)
        path = os.path.join(cache_dir, f"{task}.jsonl")
        _write_jsonl(path, make_samples(2))
        return path

    fake = types.ModuleType("longbench.offline")
    fake.ensure_task_file = ensure_task_file
    fake.DEFAULT_TASKS = ["toy_offline"]
    monkeypatch.setitem(sys.modules, "longbench.offline", fake)
    monkeypatch.setattr(D, "DEFAULT_OFFLINE_CACHE", str(tmp_path / "cache"))
    T.register_task("toy_offline", "qa_f1_score", 8, "{context}\n{input}", "Synthetic", "en")
    try:
        assert T.default_offline_tasks() == ["toy_offline"]
        assert len(D.load_task("toy_offline")) == 2
        assert calls[-1] == ("toy_offline", str(tmp_path / "cache"), False)
        assert len(D.load_task("toy_offline", data_dir=str(tmp_path), max_samples=1)) == 1
        assert calls[-1][1] == str(tmp_path)
    finally:
        T.unregister_task("toy_offline")
