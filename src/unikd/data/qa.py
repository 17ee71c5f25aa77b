"""Extractive question answering data (``data.task_type: extractive-qa``): SQuAD-style rows into windows, and the
windows' start/end logits back into answers.

Rows have a question, a context and ``answers`` (``{text: [...], answer_start: [...]}``, character offsets into the
context; ``data.qa.*`` renames the columns), from the usual sources (``data.files``: JSON/JSONL/CSV/Parquet,
``data.dataset``) or an official SQuAD v1.1 JSON file (``{"data": [{"paragraphs": [{"context", "qas"}]}]}``), read
directly. Training uses each question's first answer (SQuAD's train set has one; its dev set up to three, all of
which score).

============================  =======================================================================================
step                          what happens (Hugging Face's run_qa recipe)
============================  =======================================================================================
windows                       question + context, truncating the context only, ``data.max_length`` tokens; a longer
                              context gives more windows, each overlapping the last by ``data.qa.stride`` tokens
labels                        ``start_positions`` / ``end_positions``: the answer's first and last token when the
                              whole answer lies in the window, else the CLS position (0) for both
context mask                  ``context_mask``: 1 on the window's context tokens and on CLS, the positions the
                              logits KD compares (``unikd.divergences.span_logits``: the rest is -1e4 on both sides)
answers                       per question, the best span over all its windows: start <= end, at most
                              ``data.qa.max_answer_length`` tokens, among the ``data.qa.n_best`` best starts and ends
                              of each window, scored start logit + end logit; no valid span: the empty answer
score                         exact match and F1 of SQuAD v1.1 (normalized text, the best over the references), by
                              torchmetrics' port of the official script (``pip install 'unikd[qa]'``)
============================  =======================================================================================

A row whose ``answer_start`` does not point at its text (``context[start:start + len(text)] != text``) is counted
and refused, or skipped with ``data.skip_malformed``; a stride at or past the window is refused naming
``data.qa.stride``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from unikd.errors import ConfigError, warn

TASK_TYPE = "extractive-qa"


class QAConfig(BaseModel):
    """Extractive QA's columns and windows (``data.qa``)."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field("question", description="extractive-qa: the question column.")
    context: str = Field("context", description="extractive-qa: the context (passage) column.")
    answers: str = Field(
        "answers", description="extractive-qa: the answers column, {text: [...], answer_start: [...]} per row."
    )
    stride: int = Field(128, ge=0, description="extractive-qa: tokens two windows of a long context share.")
    max_answer_length: int = Field(30, gt=0, description="extractive-qa: the longest answer span, in tokens.")
    n_best: int = Field(20, ge=1, description="extractive-qa: start and end candidates per window.")


# ---- reading ------------------------------------------------------------------------------------------------------
def _is_squad_json(path: str) -> bool:
    if not str(path).endswith(".json"):
        return False
    with open(path, encoding="utf-8") as f:
        head = f.read(2048).lstrip()
    return head.startswith("{") and '"data"' in head[:200]


def has_squad_files(data: Any) -> bool:
    """Whether ``data.files`` names an official SQuAD JSON file (extractive-qa data without looking at columns)."""
    return any(_is_squad_json(p) for p in (data.files or {}).values())


def read_squad_json(path: str, field_name: str) -> list[dict]:
    """An official SQuAD v1.1 file's questions, one row each: id, title, question, context, answers."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = []
        for article in doc["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    rows.append(
                        {
                            "id": str(qa["id"]),
                            "title": article.get("title", ""),
                            "question": qa["question"],
                            "context": paragraph["context"],
                            "answers": {
                                "text": [a["text"] for a in qa.get("answers", [])],
                                "answer_start": [int(a["answer_start"]) for a in qa.get("answers", [])],
                            },
                        }
                    )
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            field_name,
            f"{path} is not SQuAD v1.1 JSON ({type(exc).__name__}: {exc})",
            'give {"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers"}]}]}]}, or flat rows',
        ) from None
    return rows


def is_extractive_qa(data: Any, columns: list[str]) -> bool:
    """``data.task_type`` when set, else a question, a context and an answers column (or SQuAD JSON's layout)."""
    if data.task_type is not None:
        return data.task_type == TASK_TYPE
    qa = data.qa
    return {qa.question, qa.context, qa.answers} <= set(columns) or {"data", "version"} == set(columns)


def read_qa_splits(data: Any):
    """(train, validation) as ``datasets.Dataset`` rows with the ``data.qa`` columns, limits applied."""
    import datasets

    from unikd.data.labelled import read_splits

    splits = []
    files = data.files or {}
    squad = {name: path for name, path in files.items() if _is_squad_json(path)}
    if squad:
        found = {}
        for name, path in files.items():
            rows = read_squad_json(path, f"data.files.{name}") if name in squad else None
            found[name] = datasets.Dataset.from_list(rows) if rows is not None else None
        train = found.get("train")
        dev = next((found[n] for n in ("validation", "dev", "valid", "val", "test") if found.get(n) is not None), None)
        if train is None or dev is None:
            raise ConfigError("data.files", f"needs train and validation SQuAD files, got {sorted(files)}", "give both")
        splits = [train, dev]
    else:
        splits = list(read_splits(data))[:2]
    qa = data.qa
    for split, name in zip(splits, ("train", "validation")):
        for column in (qa.question, qa.context, qa.answers):
            if column not in split.column_names:
                which = {qa.question: "question", qa.context: "context", qa.answers: "answers"}[column]
                raise ConfigError(
                    f"data.qa.{which}",
                    f"extractive-qa data: {column!r} is not a column of the {name} split ({split.column_names})",
                    f"name the {which} column with data.qa.{which}",
                )
    train, dev = splits
    if data.train_limit:
        train = train.shuffle(seed=0).select(range(min(data.train_limit, len(train))))
    if data.eval_limit:
        dev = dev.select(range(min(data.eval_limit, len(dev))))
    return train, dev


def check_answers(ds, qa: QAConfig, split: str, skip: bool):
    """Rows whose first answer's ``answer_start`` points at its text (a training label needs one); the others are
    refused, or dropped with ``data.skip_malformed`` (said once)."""
    bad = []
    for i, (context, answers) in enumerate(zip(list(ds[qa.context]), list(ds[qa.answers]))):
        texts, starts = (answers or {}).get("text") or [], (answers or {}).get("answer_start") or []
        if not texts or not starts or context[starts[0] : starts[0] + len(texts[0])] != texts[0]:
            bad.append(i)
    if not bad:
        return ds
    if not skip:
        raise ConfigError(
            f"data.qa.{'answers'}",
            f"{len(bad)} of {len(ds)} {split} rows have no answer or an answer_start that does not point at the "
            f"answer's text (first: row {bad[0]})",
            "fix the offsets, or set data.skip_malformed=true to drop those rows",
        )
    warn(f"extractive-qa {split}: {len(bad)} of {len(ds)} rows dropped (no answer, or answer_start off its text)")
    keep = sorted(set(range(len(ds))) - set(bad))
    return ds.select(keep)


# ---- windows --------------------------------------------------------------------------------------------------------
def _windows(ds, tokenizer, qa: QAConfig, max_length: int):
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            "teacher.path", "extractive-qa maps answers through token offsets, which need a fast tokenizer", "use one"
        )
    if qa.stride >= max_length:
        raise ConfigError(
            "data.qa.stride",
            f"{qa.stride} tokens shared by two windows of {max_length} (data.max_length)",
            f"use a stride below the window, e.g. {max_length // 3}",
        )
    pad_right = tokenizer.padding_side == "right"
    questions, contexts = list(ds[qa.question]), list(ds[qa.context])
    # the fast tokenizer panics (a BaseException) when a window has no room past the question for the stride:
    # checked here, with the rows it concerns, instead
    special = tokenizer.num_special_tokens_to_add(pair=True)
    longest = max((len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]), default=0)
    room = max_length - longest - special
    if room <= qa.stride:
        raise ConfigError(
            "data.qa.stride",
            f"the longest question takes {longest} of the {max_length} tokens of a window (data.max_length), "
            f"leaving {room} for the context, not more than the stride {qa.stride}",
            f"use data.qa.stride below {max(room, 1)} (e.g. {max(room // 3, 0)}), or a larger data.max_length",
        )
    enc = tokenizer(
        questions if pad_right else contexts,
        contexts if pad_right else questions,
        truncation="only_second" if pad_right else "only_first",
        max_length=max_length,
        stride=qa.stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )
    context_index = 1 if pad_right else 0
    return enc, context_index


@dataclass
class QAFeatures:
    """The windows of one split: ``rows`` (a ``datasets.Dataset`` of model inputs, ``context_mask`` and, for
    training, the positions), and per window its question (``example``) and character offsets (None off context)."""

    rows: Any
    example: list[int] = field(default_factory=list)
    offsets: list[list] = field(default_factory=list)


def windows(ds, tokenizer, qa: QAConfig, max_length: int, train: bool) -> QAFeatures:
    """``ds``'s questions as windows (the module's table)."""
    import datasets

    enc, ci = _windows(ds, tokenizer, qa, max_length)
    columns: dict[str, list] = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    masks, starts, ends, offsets = [], [], [], []
    cls = 0
    answer_rows = list(ds[qa.answers]) if train else []
    for w, example in enumerate(enc["overflow_to_sample_mapping"]):
        seq = enc.sequence_ids(w)
        offset = [o if s == ci else None for o, s in zip(enc["offset_mapping"][w], seq)]
        offsets.append(offset)
        masks.append([1 if (s == ci or i == cls) else 0 for i, s in enumerate(seq)])
        if not train:
            continue
        answers = answer_rows[example]
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        inside = [i for i, o in enumerate(offset) if o is not None]
        first, last = inside[0], inside[-1]
        if not (offset[first][0] <= start_char and offset[last][1] >= end_char):
            starts.append(cls)
            ends.append(cls)
            continue
        s = first
        while s <= last and offset[s][1] <= start_char:
            s += 1
        e = last
        while e >= first and offset[e][0] >= end_char:
            e -= 1
        starts.append(s)
        ends.append(e)
    columns["context_mask"] = masks
    if train:
        columns["start_positions"], columns["end_positions"] = starts, ends
    return QAFeatures(datasets.Dataset.from_dict(columns), list(enc["overflow_to_sample_mapping"]), offsets)


def qa_collator():
    """Windows are padded to ``data.max_length`` when made: a batch stacks them."""
    from transformers import default_data_collator

    return default_data_collator


# ---- answers --------------------------------------------------------------------------------------------------------
def best_answers(examples, features: QAFeatures, start_logits, end_logits, qa: QAConfig) -> list[str]:
    """Each question's answer text: the best span over its windows (the module's table). ``start_logits`` /
    ``end_logits``: [windows, L] arrays in the order of ``features``."""
    import numpy as np

    best: dict[int, tuple[float, str]] = {}
    contexts = list(examples[qa.context])
    for w, example in enumerate(features.example):
        offset = features.offsets[w]
        s_logits, e_logits = np.asarray(start_logits[w]), np.asarray(end_logits[w])
        s_top = np.argsort(s_logits)[::-1][: qa.n_best]
        e_top = np.argsort(e_logits)[::-1][: qa.n_best]
        for s in s_top:
            if s >= len(offset) or offset[s] is None:
                continue
            for e in e_top:
                if e >= len(offset) or offset[e] is None or e < s or e - s + 1 > qa.max_answer_length:
                    continue
                score = float(s_logits[s] + e_logits[e])
                if example not in best or score > best[example][0]:
                    best[example] = (score, contexts[example][offset[s][0] : offset[e][1]])
    return [best.get(i, (0.0, ""))[1] for i in range(len(examples))]


def answer(model, tokenizer, questions, contexts, *, max_length: int = 384, qa: QAConfig | None = None) -> list[str]:
    """An extractive-QA model's answers to ``questions`` about ``contexts``, by the windows and span search a run
    scores with: what ``pipeline("question-answering")`` did before transformers 5 removed it. ``model``: e.g.
    ``AutoModelForQuestionAnswering.from_pretrained("runs/x/export/hf")``, its tokenizer beside it."""
    import datasets
    import torch

    qa = qa or QAConfig()
    ds = datasets.Dataset.from_dict({qa.question: list(questions), qa.context: list(contexts)})
    features = windows(ds, tokenizer, qa, max_length, train=False)
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in features.rows.column_names]
    starts, ends = [], []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(features.rows), 32):
            part = features.rows[i : i + 32]
            out = model(**{k: torch.tensor(part[k]) for k in names})
            starts.append(out.start_logits.float())
            ends.append(out.end_logits.float())
    return best_answers(ds, features, torch.cat(starts).numpy(), torch.cat(ends).numpy(), qa)


def squad_scores(predictions: list[str], examples, qa: QAConfig) -> dict[str, float]:
    """Exact match and F1 (0-100) of SQuAD v1.1, by torchmetrics' port of the official script."""
    try:
        from torchmetrics.functional.text import squad
    except ImportError as exc:
        raise ConfigError(
            "data.task_type", "extractive-qa is scored by torchmetrics' SQuAD metric", "pip install 'unikd[qa]'"
        ) from exc
    preds = [{"prediction_text": p, "id": str(i)} for i, p in enumerate(predictions)]
    target = [
        {"answers": {"text": list(a["text"]), "answer_start": list(a["answer_start"])}, "id": str(i)}
        for i, a in enumerate(list(examples[qa.answers]))
    ]
    scores = squad(preds, target)
    return {"exact_match": float(scores["exact_match"]), "f1": float(scores["f1"])}


@dataclass
class QATask:
    """What ``load_qa_task`` made: the spec, the questions of each split, their windows and ``data.qa``."""

    spec: Any
    train: Any
    validation: Any
    train_features: QAFeatures
    eval_features: QAFeatures
    qa: QAConfig


def load_qa_task(data: Any, tokenizer) -> QATask:
    """The run's QA data (``data``: the run's data section), checked, windowed for training and for scoring."""
    from unikd.data.labelled import TaskSpec

    qa = data.qa
    train, dev = read_qa_splits(data)
    train = check_answers(train, qa, "train", data.skip_malformed)
    if len(dev) == 0 or not all((a or {}).get("text") for a in list(dev[qa.answers])):
        raise ConfigError(
            "data.qa.answers",
            "every dev question needs at least one reference answer, and some have none (or the split is empty)",
            "score on a split whose questions all carry answers",
        )
    spec = TaskSpec(data.name or "extractive-qa", TASK_TYPE)
    train_features = windows(train, tokenizer, qa, data.max_length, train=True)
    eval_features = windows(dev, tokenizer, qa, data.max_length, train=False)
    return QATask(spec, train, dev, train_features, eval_features, qa)


__all__ = [
    "answer",
    "QAConfig",
    "QAFeatures",
    "QATask",
    "TASK_TYPE",
    "best_answers",
    "check_answers",
    "has_squad_files",
    "is_extractive_qa",
    "load_qa_task",
    "qa_collator",
    "read_qa_splits",
    "read_squad_json",
    "squad_scores",
    "windows",
]
