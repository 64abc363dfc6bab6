"""Prompt building (LONGBENCH.md steps 1-5), task tables, generation settings, budgets."""
import json
import os

import pytest

from longbench import prompts as P
from longbench import tasks as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHAT_WITH_BOS = "{{ bos_token }}" + CHATML

_BASE = {}


def make_tokenizer(bos=True, chat_template=CHATML):
    """Tiny byte-level BPE trained offline, wrapped in PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if "tok" not in _BASE:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=300,
                                      special_tokens=["<s>", "<|im_start|>", "<|im_end|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        corpus = ["The quick brown fox jumps over the lazy dog.",
                  "Answer the question based on the given passages.",
                  "Paragraph 1: hello world\nParagraph 2: goodbye",
                  "Summarize the dialogue into a few short sentences."] * 5
        tok.train_from_iterator(corpus, trainer)
        _BASE["tok"] = tok.to_str()
    from tokenizers import Tokenizer as _T

    tok = _T.from_str(_BASE["tok"])
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    kw = {"tokenizer_object": tok, "eos_token": "<|im_end|>"}
    if bos:
        kw["bos_token"] = "<s>"
    if chat_template:
        kw["chat_template"] = chat_template
    return PreTrainedTokenizerFast(**kw)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


SAMPLE = {"input": "Where is the fox?", "context": "The quick brown fox jumps over the lazy dog. " * 6,
          "answers": ["dog"], "length": 54, "all_classes": None, "_id": "s1",
          "dataset": "hotpotqa", "language": "en"}


# ------------------------------------------------------------------ tables

def test_templates_verbatim_from_config():
    with open(os.path.join(ROOT, "config", "dataset2prompt.json"), encoding="utf-8") as f:
        prompts = json.load(f)
    with open(os.path.join(ROOT, "config", "dataset2maxlen.json"), encoding="utf-8") as f:
        maxlen = json.load(f)
    assert len(prompts) == 21 and list(prompts) == T.longbench_tasks()
    for t in prompts:
        spec = T.get_task(t)
        assert spec.prompt == prompts[t]
        assert spec.max_new_tokens == maxlen[t]
    assert "asconcisely" in T.get_task("narrativeqa").prompt
    shared = "/work/shared/longbench"
    for name in ("dataset2prompt.json", "dataset2maxlen.json"):
        if os.path.isfile(os.path.join(shared, name)):
            with open(os.path.join(shared, name), "rb") as a, \
                    open(os.path.join(ROOT, "config", name), "rb") as b:
                assert a.read() == b.read()


def test_task_registry_categories_and_flags():
    assert len(T.english_tasks()) == 16
    assert "multifieldqa_zh" not in T.english_tasks() and "lcc" in T.english_tasks()
    assert len(T.longbench_e_tasks()) == 13
    cats = {}
    for t in T.longbench_tasks():
        cats.setdefault(T.get_task(t).category, []).append(t)
    assert sorted(cats) == sorted(T.CATEGORIES)
    assert cats["Synthetic"] == ["passage_count", "passage_retrieval_en", "passage_retrieval_zh"]
    assert cats["Code"] == ["lcc", "repobench-p"]
    skip = {t for t in T.longbench_tasks() if not T.get_task(t).use_chat_template}
    assert skip == {"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"}
    first = {t for t in T.longbench_tasks() if T.get_task(t).first_line_only}
    assert first == {"trec", "triviaqa", "samsum", "lsht"}
    assert T.get_task("qasper_e").name == "qasper"
    with pytest.raises(ValueError, match="narrativeqa"):
        T.get_task("no_such_task")


def test_register_task_extra():
    try:
        spec = T.register_task("toy_qa_test", "qa_f1_score", 16, "Q: {input}\n{context}\nA:",
                               "Single-Doc QA", "en", first_line_only=True,
                               use_chat_template=False)
        assert T.get_task("toy_qa_test") is spec and T.is_offline_task("toy_qa_test")
        from longbench import metrics as M

        assert M.scorer("toy_qa_test", ["Paris\nno"], [["Paris"]], None) == 100.0
        with pytest.raises(ValueError):
            T.register_task("hotpotqa", "qa_f1_score", 8, "{input}", "Multi-Doc QA", "en")
    finally:
        T.unregister_task("toy_qa_test")


# ------------------------------------------------------------------ build_prompt

def test_build_prompt_no_truncation_chat(tok):
    ids, text = P.build_prompt("hotpotqa", SAMPLE, tok, max_length=100000)
    raw = T.get_task("hotpotqa").prompt.format(**SAMPLE)
    assert text == tok.apply_chat_template([{"role": "user", "content": raw}], tokenize=False,
                                           add_generation_prompt=True)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    assert ids == tok(text).input_ids


@pytest.mark.parametrize("budget", [10, 11, 2])
def test_middle_truncation(tok, budget):
    raw = T.get_task("hotpotqa").prompt.format(**SAMPLE)
    full = tok(raw).input_ids
    assert len(full) > budget
    half = int(budget / 2)
    expected = (tok.decode(full[:half], skip_special_tokens=True)
                + tok.decode(full[-half:], skip_special_tokens=True))
    ids, text = P.build_prompt("hotpotqa", SAMPLE, tok, max_length=budget, use_chat_template=False)
    assert text == expected
    assert "<s>" not in text                       # BOS skipped when decoding the halves
    assert ids == tok(expected).input_ids          # default special tokens on re-tokenization
    ids_c, text_c = P.build_prompt("hotpotqa", SAMPLE, tok, max_length=budget)
    assert expected in text_c and text_c.startswith("<|im_start|>user\n")


def test_no_truncation_at_exact_budget(tok):
    raw = T.get_task("trec").prompt.format(**SAMPLE)
    n = len(tok(raw).input_ids)
    _, text = P.build_prompt("trec", SAMPLE, tok, max_length=n)
    assert text == raw


@pytest.mark.parametrize("task", ["trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"])
def test_skip_list_not_wrapped(tok, task):
    s = dict(SAMPLE, all_classes=["A"])
    _, text = P.build_prompt(task, s, tok, max_length=100000)
    assert text == T.get_task(task).prompt.format(**s)


def test_chat_template_rules(tok):
    raw = T.get_task("qasper").prompt.format(**SAMPLE)
    _, text = P.build_prompt("qasper", SAMPLE, tok, 100000, use_chat_template=False)
    assert text == raw
    _, text = P.build_prompt("trec", SAMPLE, tok, 100000, use_chat_template=True)
    assert text.startswith("<|im_start|>user\n")
    plain = make_tokenizer(chat_template=None)     # base model: no chat template
    ids, text = P.build_prompt("qasper", SAMPLE, plain, 100000)
    assert text == raw and ids == plain(raw).input_ids


def test_bos_from_chat_template_not_doubled():
    t = make_tokenizer(chat_template=CHAT_WITH_BOS)
    ids, text = P.build_prompt("qasper", SAMPLE, t, 100000)
    assert text.startswith("<s><|im_start|>user")
    assert ids[0] == t.bos_token_id and ids[1] != t.bos_token_id


# ------------------------------------------------------------------ generation settings

def test_generation_kwargs(tok):
    kw = P.generation_kwargs("hotpotqa", tok)
    assert kw["max_new_tokens"] == 32 and kw["do_sample"] is False and kw["num_beams"] == 1
    assert "eos_token_id" not in kw and "min_new_tokens" not in kw
    assert P.generation_kwargs("gov_report_e", tok)["max_new_tokens"] == 512
    nl = tok.encode("\n", add_special_tokens=False)[-1]
    s = P.generation_kwargs("samsum", tok)
    assert s["max_new_tokens"] == 128 and s["min_new_tokens"] == 1
    assert s["eos_token_id"] == [tok.eos_token_id, nl]


def test_samsum_stops_at_first_newline_with_real_generate(tok):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=256, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.bos_token_id, pad_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg).eval()
    nl = tok.encode("\n", add_special_tokens=False)[-1]
    head = torch.nn.Linear(16, len(tok), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[nl] = 10.0                      # the model always wants a newline
    model.lm_head = head
    ids, _ = P.build_prompt("samsum", SAMPLE, tok, 64)
    x = torch.tensor([ids])
    out = model.generate(x, attention_mask=torch.ones_like(x), **P.generation_kwargs("samsum", tok))
    new = out[0, x.shape[1]:].tolist()
    # min_new_tokens=1 forbids the newline first, then it stops at the first newline
    assert len(new) == 2 and new[-1] == nl and new[0] != nl
    kw = P.generation_kwargs("hotpotqa", tok)
    out = model.generate(x, attention_mask=torch.ones_like(x), **kw)
    assert out.shape[1] - x.shape[1] == 32         # no newline stop outside samsum


# ------------------------------------------------------------------ budgets

def test_prompt_budget(capsys):
    assert P.prompt_budget("smollm2", "hotpotqa") == 7500
    assert P.prompt_budget("meta-llama/Llama-2-7b-hf", "qasper") == 4096
    assert P.prompt_budget("llama3-8b-inst", None) == 8192
    assert P.prompt_budget("/models/Mistral-7B-Instruct-v0.2/", "lcc") == 31500
    assert P.prompt_budget("Qwen/Qwen2.5-3B-Instruct", "lcc") == 31500
    assert P.model_basename("smollm2") == "SmolLM2-135M-Instruct"

    class Cfg:
        max_position_embeddings = 2048
        _name_or_path = "/x/my-model"

    assert P.prompt_budget("/x/my-model", "hotpotqa", Cfg()) == 2048 - 32
    assert "notice" in capsys.readouterr().out
    assert P.prompt_budget("/x/my-model", "gov_report", Cfg()) == 2048 - 512
    with pytest.raises(ValueError, match="--max_length"):
        P.prompt_budget("/x/my-model", "hotpotqa")
