"""LongBench metrics: every reference value of LONGBENCH.md plus the reference quirks."""
import math
import random
import sys
import types
import warnings

import pytest

from longbench import metrics as M
from longbench.metrics import (classification_score, code_sim_score, count_score, f1_score,
                               fuzz_ratio, normalize_answer, normalize_zh_answer, qa_f1_score,
                               qa_f1_zh_score, retrieval_score, retrieval_zh_score, rouge_score,
                               rouge_zh_score)

# ------------------------------------------------------------------ LONGBENCH.md reference table

REFERENCE = [
    (qa_f1_score, ("The Eiffel Tower, in Paris.", "Paris"), {}, 0.4),
    (qa_f1_score, ("an apple a day", "the apple"), {}, 0.6666666666666666),
    (qa_f1_score, ("", "x"), {}, 0),
    (qa_f1_score, ("\u201cParis\u201d", "Paris"), {}, 0),
    (qa_f1_zh_score, ("Hello World", "hello world"), {}, 1.0),
    (rouge_score, ("the cat sat on the mat", "the cat is on the mat"), {}, 0.7999999950000002),
    (rouge_score, ("", "abc"), {}, 0.0),
    (classification_score, ("Other location, City", "City"),
     {"all_classes": ["City", "Other location", "Country"]}, 0.5),
    (retrieval_score, ("Paragraph 12 or Paragraph 3", "Paragraph 12"), {}, 0.5),
    (retrieval_zh_score, ("段落5", "段落5"), {}, 1.0),
    (count_score, ("There are 7 unique paragraphs out of 20.", "7"), {}, 0.5),
    (code_sim_score, ("\n# comment\n    return self.module(x, y)\n", "    return self.model(x)"), {},
     0.88),
    (code_sim_score, ("```python\nx = 1\n```", "x = 1"), {}, 1.0),
]


@pytest.mark.parametrize("fn,args,kwargs,expected", REFERENCE,
                         ids=[f"{r[0].__name__}-{i}" for i, r in enumerate(REFERENCE)])
def test_reference_values_exact(fn, args, kwargs, expected):
    assert fn(*args, **kwargs) == expected


# ------------------------------------------------------------------ normalisation / F1

def test_normalize_answer():
    assert normalize_answer("The  Cat, an apple!") == "cat apple"
    assert normalize_answer("theory anthem") == "theory anthem"  # whole words only
    assert normalize_answer("\u201cParis\u201d") == "\u201cparis\u201d"  # curly quotes survive


def test_normalize_zh_answer():
    assert normalize_zh_answer("北京，是 首都。A!") == "北京是首都a"


def test_f1_counter_overlap():
    assert f1_score(["a", "a", "b"], ["a", "c"]) == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    assert f1_score([], ["a"]) == 0


def test_qa_f1_zh():
    # jieba: 北京/是/中国/的/首都/。 -> 5 tokens after dropping the punctuation-only one
    assert qa_f1_zh_score("北京是中国的首都。", "北京") == pytest.approx(2 * 0.2 * 1 / 1.2)
    assert qa_f1_zh_score("。", "北京") == 0


# ------------------------------------------------------------------ quirks

def test_classification_removal_while_iterating_quirk():
    classes = ["New York", "York", "New York City"]
    # The reference removes "New York" and then skips "York" (it slid into the removed slot).
    assert classification_score("I say New York City", "New York City", all_classes=classes) == 0.5
    # Without any removal involved the score is 1/len(matches).
    assert classification_score("City and Country", "City",
                                all_classes=["City", "Country", "Other"]) == 0.5
    assert classification_score("nothing", "City", all_classes=["City"]) == 0.0


def test_rouge_exception_scores_zero(monkeypatch):
    assert rouge_score("...", "abc") == 0.0      # empty after rouge's own cleaning
    assert rouge_score("abc", "") == 0.0

    class Boom:
        def get_scores(self, *a, **k):
            raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(M, "_ROUGE", Boom())
    assert rouge_score("a b c", "a b c") == 0.0


def test_rouge_zh_is_rouge_on_jieba_tokens():
    pred, gold = "今天天气很好", "今天天气不错"
    expected = rouge_score(" ".join(M._jieba_cut(pred)), " ".join(M._jieba_cut(gold)))
    assert rouge_zh_score(pred, gold) == expected
    assert 0 < expected < 1


def test_code_sim_first_line_rule_empty_line_qualifies():
    # after stripping leading newlines the first qualifying line is the empty one -> score 0
    assert code_sim_score("\n\n# c\n\nx = 1", "x = 1") == 0.0
    assert code_sim_score("// js\n`x`\nx = 1", "x = 1") == 1.0
    assert code_sim_score("# only comments", "x = 1") == 0.0
    assert code_sim_score("x = 2", "x = 1") == fuzz_ratio("x = 2", "x = 1") / 100


def test_retrieval_and_count_without_integers():
    assert retrieval_score("no idea", "Paragraph 4") == 0.0
    assert retrieval_zh_score("不知道", "段落4") == 0.0
    assert count_score("many", "3") == 0.0
    assert count_score("3 3 4", "3") == pytest.approx(2 / 3)


# ------------------------------------------------------------------ fuzz_ratio

def test_fuzz_ratio_rules():
    assert fuzz_ratio("abc", "abc") == 100
    assert fuzz_ratio("", "") == 100          # equal first, as in fuzzywuzzy
    assert fuzz_ratio("", "a") == 0
    assert fuzz_ratio("a", "") == 0
    assert fuzz_ratio(None, "a") == 0


def _random_pairs(n=300):
    rng = random.Random(0)
    alphabet = "ab c()._=xyz\t"
    pairs = [("    return self.module(x, y)", "    return self.model(x)"), ("x=1", "x = 1")]
    for _ in range(n):
        a = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        b = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        pairs.append((a, b))
    return pairs


def test_fuzz_ratio_matches_fuzzywuzzy_without_levenshtein():
    try:
        import Levenshtein  # noqa: F401
        pytest.skip("python-Levenshtein installed: fuzzywuzzy would not use difflib")
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fuzzywuzzy import fuzz
    for a, b in _random_pairs():
        assert fuzz_ratio(a, b) == fuzz.ratio(a, b), (a, b)


def test_fuzz_ratio_independent_of_levenshtein(monkeypatch):
    fake = types.ModuleType("Levenshtein")
    fake.ratio = lambda a, b: 0.0
    monkeypatch.setitem(sys.modules, "Levenshtein", fake)
    assert fuzz_ratio("    return self.module(x, y)", "    return self.model(x)") == 88


# ------------------------------------------------------------------ tables and scorers

def test_dataset2metric_covers_21_tasks_and_e_suffix():
    assert len(M.dataset2metric) == 21
    assert M.dataset2metric["qasper_e"] is qa_f1_score
    assert "lcc_e" in M.dataset2metric
    assert M.dataset2metric["lsht"] is classification_score
    assert M.dataset2metric["dureader"] is rouge_zh_score
    with pytest.raises(KeyError):
        M.dataset2metric["nope"]


def test_scorer_first_line_and_rounding():
    # trec is first-line-only: "\nCity\nCountry" -> "City"
    classes = ["City", "Country"]
    s = M.scorer("trec", ["\nCity\nCountry", "Country", "City"], [["City"], ["City"], ["City"]],
                 classes)
    assert s == round(100 * 2 / 3, 2) == 66.67
    # max over gold answers
    assert M.scorer("hotpotqa", ["Paris"], [["London", "Paris"]], None) == 100.0
    # not first-line for hotpotqa: the second line counts
    assert M.scorer("hotpotqa", ["x\nParis"], [["Paris"]], None) == round(100 * 2 / 3, 2)


def test_scorer_e_buckets_and_nan():
    out = M.scorer_e("qasper_e", ["red", "blue", "green"], [["red"], ["x"], ["green"]],
                   [100, 3999, 8000], None)
    assert out["0-4k"] == 50.0
    assert math.isnan(out["4-8k"])
    assert out["8k+"] == 100.0
