"""Extractive QA data (unikd.data.qa): SQuAD JSON read as it is, windows whose labels point at the answer text,
span search over windows, SQuAD's EM/F1 against hand-computed values, and each bad input refused by name."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
from helpers import SHARED
from transformers import AutoTokenizer

from unikd.config import DataConfig
from unikd.data.qa import (
    QAConfig,
    answer,
    best_answers,
    check_answers,
    load_qa_task,
    read_squad_json,
    squad_scores,
    windows,
)
from unikd.divergences import MASKED_SPAN_LOGIT, span_logits
from unikd.errors import ConfigError

SQUAD = SHARED / "qa" / "squad"


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


def _rows(n=None):
    rows = read_squad_json(str(SQUAD / "train.json"), "data.files.train")
    return datasets.Dataset.from_list(rows[:n] if n else rows)


def test_the_official_json_reads_every_question():
    train, dev = read_squad_json(str(SQUAD / "train.json"), "f"), read_squad_json(str(SQUAD / "dev.json"), "f")
    assert (len(train), len(dev)) == (8582, 1988)  # the shared README's counts
    row = train[0]
    assert row["answers"]["text"][0] == "Denver Broncos" and row["context"][177:191] == "Denver Broncos"


def test_windows_label_the_answer_tokens_and_cls_where_it_is_not(tokenizer):
    ds = _rows(200)
    qa = QAConfig(stride=24)
    features = windows(ds, tokenizer, qa, 96, train=True)
    rows = features.rows
    assert len(rows) > len(ds)  # long contexts give several windows
    inside = 0
    for w in range(len(rows)):
        example, offset = features.example[w], features.offsets[w]
        s, e = rows[w]["start_positions"], rows[w]["end_positions"]
        first = ds[example]["answers"]
        if s == 0:
            assert e == 0
            continue
        inside += 1
        # the first and last tokens are those that hold the answer's first and last characters (a token may be
        # longer than the answer: "golden" for "gold")
        start_char = first["answer_start"][0]
        end_char = start_char + len(first["text"][0])
        assert offset[s][0] <= start_char < offset[s][1] and offset[e][0] < end_char <= offset[e][1]
        assert first["text"][0] in ds[example]["context"][offset[s][0] : offset[e][1]]
        mask = rows[w]["context_mask"]
        assert mask[0] == 1 and mask[s] == 1 and mask[e] == 1
        assert all(m == (o is not None) for m, o in zip(mask[1:], offset[1:]))
    assert inside >= len(ds) * 0.9  # nearly every question has its answer in some window
    # overlapping windows: consecutive windows of one question share `stride` context tokens
    w0 = next(i for i in range(len(rows) - 1) if features.example[i] == features.example[i + 1])
    ids0 = [t for t, m in zip(rows[w0]["input_ids"], features.offsets[w0]) if m is not None]
    ids1 = [t for t, m in zip(rows[w0 + 1]["input_ids"], features.offsets[w0 + 1]) if m is not None]
    assert ids0[-24:] == ids1[:24]


def test_best_answers_take_the_best_valid_span_over_windows(tokenizer):
    ds = _rows(30)
    qa = QAConfig(stride=24, max_answer_length=30)
    features = windows(ds, tokenizer, qa, 96, train=True)
    L = 96
    start, end = np.full((len(features.rows), L), -5.0), np.full((len(features.rows), L), -5.0)
    for w in range(len(features.rows)):
        s, e = features.rows[w]["start_positions"], features.rows[w]["end_positions"]
        if s:
            start[w, s], end[w, e] = 10.0, 10.0
        start[w, 0] = end[w, 0] = 50.0  # CLS is never an answer: the search only takes context positions
    answers = best_answers(ds, features, start, end, qa)
    expected = {}  # each question with its answer in a window: that window's labelled span, as text
    for w in range(len(features.rows)):
        s, e = features.rows[w]["start_positions"], features.rows[w]["end_positions"]
        if s:
            offset = features.offsets[w]
            expected[features.example[w]] = ds[features.example[w]]["context"][offset[s][0] : offset[e][1]]
    assert len(expected) >= 25 and all(answers[i] == text for i, text in expected.items())
    assert squad_scores(answers, ds, qa)["f1"] > 90.0
    # an end before the start, or a span past max_answer_length, is never chosen
    bad_start, bad_end = np.full_like(start, -5.0), np.full_like(end, -5.0)
    bad_start[:, 40], bad_end[:, 30] = 10.0, 10.0
    short = QAConfig(stride=24, max_answer_length=1)
    answers = best_answers(ds, features, bad_start, bad_end, short)
    assert all(len(tokenizer.tokenize(a)) <= 2 for a in answers)  # one token (a word piece or two chars of it)


def test_squad_scores_match_the_official_definitions():
    ds = datasets.Dataset.from_list(
        [
            {"answers": {"text": ["Denver Broncos", "the Broncos"], "answer_start": [0, 0]}},
            {"answers": {"text": ["Carolina Panthers"], "answer_start": [0]}},
            {"answers": {"text": ["1990"], "answer_start": [0]}},
        ]
    )
    qa = QAConfig()
    # 1: "The Broncos!" normalizes to "broncos": exact for the second reference; 2: "Panthers" vs "carolina
    # panthers": precision 1, recall 1/2, F1 2/3; 3: wrong: 0
    scores = squad_scores(["The Broncos!", "Panthers", "1991"], ds, qa)
    assert scores["exact_match"] == pytest.approx(100 / 3, abs=1e-3)
    assert scores["f1"] == pytest.approx((100 + 200 / 3 + 0) / 3, abs=1e-3)


def test_span_logits_mask_everything_but_the_context():
    start, end = torch.randn(2, 6), torch.randn(2, 6)
    mask = torch.tensor([[1, 0, 0, 1, 1, 0], [1, 0, 1, 1, 0, 0]])
    rows = span_logits(start, end, mask)
    assert rows.shape == (4, 6)
    torch.testing.assert_close(rows[0, [0, 3, 4]], start[0, [0, 3, 4]])
    torch.testing.assert_close(rows[3, [0, 2, 3]], end[1, [0, 2, 3]])
    assert (rows[0, [1, 2, 5]] == MASKED_SPAN_LOGIT).all() and (rows[2 + 1, [1, 4, 5]] == MASKED_SPAN_LOGIT).all()


def test_answer_uses_the_same_windows(tokenizer):
    from helpers import tiny_bert
    from transformers import BertForQuestionAnswering

    model = tiny_bert(2, 32, 4, positions=128, cls=BertForQuestionAnswering)
    ds = _rows(3)
    got = answer(model, tokenizer, ds["question"], ds["context"], max_length=96, qa=QAConfig(stride=24))
    assert len(got) == 3 and all(a in c for a, c in zip(got, ds["context"]))


# ---- bad input ----------------------------------------------------------------------------------------------------
def _data(tmp_path, train_rows, **fields):
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in train_rows))
    dev = tmp_path / "dev.jsonl"
    dev.write_text("\n".join(json.dumps(r) for r in train_rows))
    return DataConfig.model_validate(
        {"files": {"train": str(train), "validation": str(dev)}, "task_type": "extractive-qa", **fields}
    )


GOOD = {"question": "Who?", "context": "Ada Lovelace wrote it.", "answers": {"text": ["Ada"], "answer_start": [0]}}
OFF = {"question": "Who?", "context": "Ada Lovelace wrote it.", "answers": {"text": ["Ada"], "answer_start": [4]}}


def test_answer_starts_off_their_text_are_counted_and_refused_or_skipped(tmp_path, tokenizer):
    data = _data(tmp_path, [GOOD, OFF, OFF])
    with pytest.raises(ConfigError) as err:
        load_qa_task(data, tokenizer)
    assert err.value.field == "data.qa.answers" and "2 of 3" in err.value.problem
    kept = check_answers(datasets.Dataset.from_list([GOOD, OFF, OFF]), QAConfig(), "train", skip=True)
    assert len(kept) == 1


@pytest.mark.parametrize(
    "fields,rows,field",
    [
        ({}, [{"question": "Who?", "context": "Ada."}], "data.qa.answers"),  # no answers column
        ({"qa": {"context": "passage"}}, [GOOD], "data.qa.context"),  # a renamed column that is not there
        ({"max_length": 32, "qa": {"stride": 32}}, [GOOD], "data.qa.stride"),  # stride = window
        ({"max_length": 16, "qa": {"stride": 10}}, [dict(GOOD, question="why " * 8)], "data.qa.stride"),
    ],
)
def test_bad_qa_data_is_refused_by_name(tmp_path, tokenizer, fields, rows, field):
    with pytest.raises(ConfigError) as err:
        load_qa_task(_data(tmp_path, rows, **fields), tokenizer)
    assert err.value.field == field and err.value.fix


def test_max_answer_length_must_be_positive():
    with pytest.raises(ValueError, match="max_answer_length"):
        DataConfig.model_validate({"qa": {"max_answer_length": 0}})
