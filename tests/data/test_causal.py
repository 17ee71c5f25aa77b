"""Causal-LM task data (unikd.data.causal): layouts from the columns, plain and chat rendering with exact ids and
labels, truncation that keeps part of every response, and the errors for rows it cannot use."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import word_tokenizer

from unikd.config import DataConfig
from unikd.data.causal import causal_collator, is_causal_lm, load_causal_task, tokenize_causal
from unikd.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


def _ds(rows):
    import datasets

    return datasets.Dataset.from_list(rows)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    "columns,causal",
    [
        (["prompt", "response"], True),
        (["prompt", "completion"], True),  # TRL's names as they are
        (["id", "question", "answer"], True),  # GSM8K
        (["messages"], True),
        (["text"], True),
        (["text", "label"], False),
        (["sentence", "label"], False),
        (["question", "sentence", "label"], False),  # QNLI: a label column makes it classification
    ],
)
def test_causal_lm_is_inferred_from_the_columns(columns, causal):
    assert is_causal_lm(DataConfig(), columns) is causal


def test_task_type_overrides_the_columns():
    assert is_causal_lm(DataConfig(task_type="causal-lm"), ["text", "label"])
    assert not is_causal_lm(DataConfig(task_type="classification"), ["prompt", "response"])


def test_plain_pair_scores_the_response_and_its_eos_only(tok):
    data = DataConfig(max_length=32)
    split = tokenize_causal(_ds([{"prompt": "3 plus 4 is ?", "response": "7 d"}]), tok, data, 32, "train")
    row = split.rows[0]
    prompt, response = _ids(tok, "3 plus 4 is ?"), _ids(tok, "7 d")
    assert row["input_ids"] == prompt + response + [tok.eos_token_id]
    assert row["labels"] == [-100] * len(prompt) + response + [tok.eos_token_id]
    assert row["prompt_length"] == len(prompt) and row["attention_mask"] == [1] * len(row["input_ids"])
    on_prompt = tokenize_causal(
        _ds([{"prompt": "3 plus 4 is ?", "response": "7 d"}]), tok, DataConfig(train_on_prompt=True), 32, "train"
    )
    assert on_prompt.rows[0]["labels"] == row["input_ids"]


def test_chat_rendering_scores_every_assistant_turn_and_nothing_else(tok):
    conversation = [
        {"role": "user", "content": "1 plus 1 is ?"},
        {"role": "assistant", "content": "2 b"},
        {"role": "user", "content": "2 plus 3 is ?"},
        {"role": "assistant", "content": "5 c"},
    ]
    row = tokenize_causal(_ds([{"messages": conversation}]), tok, DataConfig(), 64, "train").rows[0]
    text = tok.apply_chat_template(conversation, tokenize=False)
    assert row["input_ids"] == _ids(tok, text)
    scored = [tok.convert_ids_to_tokens(i) for i in row["labels"] if i != -100]
    # each assistant turn's content and its end-of-turn token; the roles, the user turns and <s> markup are not
    assert scored == ["2", "b", "</s>", "5", "c", "</s>"]
    first = row["labels"].index(next(i for i in row["labels"] if i != -100))
    assert row["prompt_length"] == first
    assert tok.decode(row["input_ids"][:first]) == "<s> user 1 plus 1 is ? </s> <s> assistant"


def test_a_pair_rendered_as_chat_is_a_user_then_an_assistant_turn(tok):
    row = tokenize_causal(
        _ds([{"prompt": "3 plus 4 is ?", "response": "7 d"}]), tok, DataConfig(render="chat"), 64, "train"
    ).rows[0]
    assert tok.decode(row["input_ids"]) == "<s> user 3 plus 4 is ? </s> <s> assistant 7 d </s>"
    assert [tok.convert_ids_to_tokens(i) for i in row["labels"] if i != -100] == ["7", "d", "</s>"]


def test_truncation_keeps_the_response_start_and_the_prompt_end(tok):
    prompt = " ".join(str(i % 10) for i in range(20))  # 20 tokens
    response = " ".join("abcdefghij")  # 10 tokens + EOS
    split = tokenize_causal(_ds([{"prompt": prompt, "response": response}]), tok, DataConfig(), 16, "train")
    row = split.rows[0]
    assert len(row["input_ids"]) == 16 and split.truncated == 1 and split.dropped == 0
    # the response gets 16 - min(20, 8) = 8 tokens (its beginning; the EOS is cut), the prompt its last 8
    assert row["input_ids"][8:] == _ids(tok, "a b c d e f g h")
    assert row["input_ids"][:8] == _ids(tok, prompt)[-8:]
    assert row["labels"][:8] == [-100] * 8


def test_empty_responses_are_dropped_and_counted_and_none_left_is_an_error(tok):
    rows = [{"prompt": "1 plus 1 is ?", "response": "2 b"}, {"prompt": "1 plus 2 is ?", "response": "  "}]
    split = tokenize_causal(_ds(rows), tok, DataConfig(), 32, "train")
    assert len(split.rows) == 1 and split.dropped == 1 and split.rows[0]["idx"] == 0
    with pytest.raises(DataError) as info:
        tokenize_causal(_ds(rows[1:]), tok, DataConfig(), 32, "validation")
    assert info.value.field == "data.max_length" and "validation" in str(info.value)


def test_a_tokenizer_without_a_chat_template_is_a_clear_error_unless_one_is_given(tok):
    bare = word_tokenizer(chat_template=False)
    rows = _ds([{"messages": [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}]}])
    with pytest.raises(ConfigError) as info:
        tokenize_causal(rows, bare, DataConfig(), 32, "train")
    assert info.value.field == "data.chat_template" and "Fix:" in str(info.value)
    template = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
    row = tokenize_causal(rows, bare, DataConfig(chat_template=template), 32, "train").rows[0]
    assert bare.decode(row["input_ids"]) == "user 1 </s> assistant 2 </s>"


def test_a_conversation_without_an_assistant_turn_names_its_row(tok):
    rows = _ds([{"messages": [{"role": "user", "content": "1"}]}])
    with pytest.raises(DataError) as info:
        tokenize_causal(rows, tok, DataConfig(), 32, "train")
    assert info.value.field == "data.columns.messages" and "row 0" in str(info.value)


def test_a_named_column_that_is_missing_is_a_config_error(tok):
    with pytest.raises(ConfigError) as info:
        tokenize_causal(
            _ds([{"prompt": "1", "response": "2"}]),
            tok,
            DataConfig(columns={"prompt": "prompt", "response": "reply"}),
            32,
            "train",
        )
    assert info.value.field == "data.columns.response"


def test_collator_pads_inputs_and_labels(tok):
    rows = [{"prompt": "1 plus 1 is ?", "response": "2 b"}, {"prompt": "1 is ?", "response": "1"}]
    split = tokenize_causal(_ds(rows), tok, DataConfig(), 32, "train")
    batch = causal_collator(tok)([split.rows[0], split.rows[1]])
    assert set(batch) == {"input_ids", "attention_mask", "labels", "idx", "prompt_length"}
    short = len(split.rows[1]["input_ids"])
    assert batch["attention_mask"][1].tolist() == [1] * short + [0] * (batch["input_ids"].shape[1] - short)
    assert (batch["labels"][1, short:] == -100).all()
    assert torch.equal(batch["idx"], torch.tensor([0, 1]))


def test_files_holdout_and_limits(tmp_path, tok):
    rows = [{"prompt": f"{i % 10} is ?", "response": f"{i % 10} a"} for i in range(30)]
    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = {"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "validation.jsonl")}
    task = load_causal_task(DataConfig(files=files, train_limit=12, eval_limit=5), tok, seed=1)
    assert task.spec.task_type == "causal-lm" and task.spec.model_kind == "causal-lm"
    assert len(task.train.rows) == 12 and len(task.validation.rows) == 5
    held = load_causal_task(DataConfig(files=files, holdout=6), tok, seed=1)
    assert len(held.train.rows) == 24 and len(held.validation.rows) == 6
