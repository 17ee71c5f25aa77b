"""Causal-LM task data: prompt/response pairs, conversations and plain text for a decoder's task stage.

``data.task_type: causal-lm`` (inferred from the columns when unset) reads the same sources as labelled data
(``data.dataset``: a hub id or a ``save_to_disk`` directory; ``data.files``: JSON/JSONL/CSV/TSV/Parquet) in one of
three layouts, looked for in this order:

============  =======================================================  ==========================================
layout        columns (``data.columns.*`` renames them)                rendered as
============  =======================================================  ==========================================
messages      ``messages``: a list of ``{role, content}``              the tokenizer's chat template (or
                                                                       ``data.chat_template``); every assistant
                                                                       turn is scored
pair          ``prompt`` / ``question`` / ``instruction`` and          plain: prompt + ``data.prompt_separator``
              ``response`` / ``completion`` / ``answer`` / ``output``  + response + EOS; ``data.render: chat``: a
              (TRL's ``prompt``/``completion`` as they are)            user turn and the assistant's, templated
text          ``text`` alone (no label column)                         the text + EOS, every token scored
============  =======================================================  ==========================================

Rows become ``input_ids``, ``attention_mask``, ``labels`` (the token ids where the loss scores, -100 elsewhere:
the prompt and the template's own markup unless ``data.train_on_prompt``) and ``prompt_length`` (the tokens before
the first scored one: what generation is prompted with). HF's causal-LM loss shifts the labels itself, so
``labels[i]`` is the target of the logits at i - 1 (``unikd.knowledge.logits.scored_positions``).

Truncation to ``data.max_length`` keeps part of every response: a pair longer than the window gives its response
at most ``max_length - min(prompt, max_length // 2)`` tokens (its beginning: the EOS may be cut) and the prompt the
rest (its end, so the question next to the answer stays; a leading BOS is kept); a conversation the same way, its
prompt being everything before the first assistant token. A row with nothing left to score (an empty response, a conversation whose assistant turns all fall past the
window) is dropped; how many rows were truncated and dropped is said once per split (``CausalSplit``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unikd.errors import ConfigError, DataError, warn

PROMPT_COLUMNS = ("prompt", "question", "instruction")
RESPONSE_COLUMNS = ("response", "completion", "answer", "output")
MESSAGES_COLUMNS = ("messages",)
TEXT_COLUMNS = ("text",)
_LABEL_COLUMNS = ("label", "labels")


def layout(data: Any, columns: list[str]) -> str | None:
    """``messages``, ``pair`` or ``text`` when these columns are causal-LM data, else None."""
    given = data.columns
    if given.messages or any(c in columns for c in MESSAGES_COLUMNS):
        return "messages"
    prompt = given.prompt or next((c for c in PROMPT_COLUMNS if c in columns), None)
    response = given.response or next((c for c in RESPONSE_COLUMNS if c in columns), None)
    if prompt and response:
        return "pair"
    if (given.text or "text") in columns:
        return "text"
    return None


def is_causal_lm(data: Any, columns: list[str]) -> bool:
    """Whether the run's labelled source is causal-LM data: ``data.task_type`` when set, else its columns (no label
    column, and a messages, prompt/response or text column)."""
    if data.task_type is not None:
        return data.task_type == "causal-lm"
    if getattr(data, "task", None):
        return False
    if data.columns.prompt or data.columns.response or data.columns.messages:
        return True
    if data.columns.label or any(c in columns for c in _LABEL_COLUMNS):
        return False
    return layout(data, columns) is not None


@dataclass
class CausalSplit:
    """One tokenized split and what truncation did to it."""

    rows: Any  # datasets.Dataset: input_ids, attention_mask, labels, prompt_length, idx
    truncated: int
    dropped: int


def _column_for(data: Any, columns: list[str], role: str, defaults: tuple[str, ...], split: str) -> str:
    given = getattr(data.columns, role)
    name = given or next((c for c in defaults if c in columns), None)
    if name is None or name not in columns:
        what = f"the column {given!r}" if given else f"none of the usual {role} columns {list(defaults)}"
        raise ConfigError(
            f"data.columns.{role}",
            f"causal-lm data: {what} is not in the {split} split (its columns: {columns})",
            f"set data.columns.{role} to one of {columns}, or give the rows {role} values",
        )
    return name


def _chat_template(tokenizer, data: Any) -> str:
    template = data.chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ConfigError(
            "data.chat_template",
            f"the tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__!r} has no chat "
            "template, and chat rendering needs one (messages rows, or data.render: chat)",
            "give data.chat_template (a Jinja template), or data.render: plain for prompt/response rows",
        )
    return template


class _Renderer:
    """Rows of one layout -> (token ids, labels, prompt length, truncated?); None for a row with nothing to score."""

    def __init__(self, tokenizer, data: Any, kind: str, max_length: int):
        self.tok, self.data, self.kind, self.max_length = tokenizer, data, kind, max_length
        self.chat = kind == "messages" or data.render == "chat"
        self.template = _chat_template(tokenizer, data) if self.chat else None
        self.eos = tokenizer.eos_token_id
        if self.eos is None and not self.chat:
            raise ConfigError(
                "teacher.path",
                "the tokenizer has no EOS token, so responses cannot be ended",
                "use a decoder tokenizer",
            )
        ids = tokenizer("a")["input_ids"]
        self.adds_eos = bool(ids) and ids[-1] == self.eos
        self.bos = tokenizer.bos_token_id if ids and ids[0] == tokenizer.bos_token_id else None

    def _ids(self, text: str, special: bool) -> list[int]:
        ids = self.tok(text, add_special_tokens=special, verbose=False)["input_ids"]
        return ids[:-1] if special and self.adds_eos and ids and ids[-1] == self.eos else ids

    def text(self, text: str):
        ids = self._ids(text, special=True) + [self.eos]
        truncated = len(ids) > self.max_length
        ids = ids[: self.max_length]
        return (ids, list(ids), 0, truncated) if len(ids) > 1 else None

    def pair(self, prompt: str, response: str):
        if not response.strip():
            return None
        if self.chat:
            return self.messages([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])
        p = self._ids(prompt + self.data.prompt_separator, special=True)
        r = self._ids(response, special=False) + [self.eos]
        return self._fit(p, list(p) if self.data.train_on_prompt else [-100] * len(p), r, list(r))

    def _fit(self, p: list[int], p_labels: list[int], r: list[int], r_labels: list[int]):
        """Prompt + response cut to the window: the response keeps its beginning, at most max_length - min(prompt,
        max_length // 2) tokens; the prompt its end (a leading BOS kept). (ids, labels, prompt length, truncated)."""
        truncated = len(p) + len(r) > self.max_length
        if truncated:
            r_keep = min(len(r), self.max_length - min(len(p), self.max_length // 2))
            r, r_labels = r[:r_keep], r_labels[:r_keep]
            keep = self.max_length - r_keep
            head = 1 if self.bos is not None and p[:1] == [self.bos] and keep > 0 else 0
            tail = max(keep - head, 0)
            start = len(p) - tail
            p, p_labels = p[:head] + p[start:], p_labels[:head] + p_labels[start:]
        if all(label == -100 for label in r_labels):
            return None
        return p + r, p_labels + r_labels, len(p), truncated

    def messages(self, messages: list[dict]):
        render = lambda turns, **kw: self.tok.apply_chat_template(
            turns, tokenize=False, chat_template=self.template, **kw
        )
        full = render(messages)
        spans = []
        for k, turn in enumerate(messages):
            if turn.get("role") != "assistant":
                continue
            before = render(messages[:k], add_generation_prompt=True) if k else ""
            through = render(messages[: k + 1])
            if not (full.startswith(through) and through.startswith(before)):
                raise ConfigError(
                    "data.chat_template",
                    "the chat template does not render a conversation as the concatenation of its turns, so the "
                    "assistant's tokens cannot be told apart",
                    "give data.chat_template a template whose rendering of the first k turns is a prefix of the whole",
                )
            spans.append((len(before), len(through)))
        if not spans:
            return "no-assistant"
        enc = self.tok(full, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        scored = [any(a <= start < b for a, b in spans) for start, _ in offsets]
        if not any(scored):
            return None
        first = scored.index(True)
        labels = [i if s else -100 for i, s in zip(ids, scored)]
        p_labels = ids[:first] if self.data.train_on_prompt else labels[:first]
        return self._fit(ids[:first], p_labels, ids[first:], labels[first:])


def tokenize_causal(ds, tokenizer, data: Any, max_length: int, split: str) -> CausalSplit:
    """Tokenize one split of causal-LM rows (see the module docstring); rows without anything to score dropped."""
    columns = ds.column_names
    kind = layout(data, columns)
    if kind is None:
        raise ConfigError(
            "data.columns",
            f"causal-lm data needs messages, prompt/response or text columns; the {split} split has {columns}",
            "set data.columns.prompt and data.columns.response (or data.columns.messages / data.columns.text)",
        )
    renderer = _Renderer(tokenizer, data, kind, max_length)
    if kind == "messages":
        col = _column_for(data, columns, "messages", MESSAGES_COLUMNS, split)
        rows = ((renderer.messages(list(m or [])), i) for i, m in enumerate(ds[col]))
    elif kind == "pair":
        p = _column_for(data, columns, "prompt", PROMPT_COLUMNS, split)
        r = _column_for(data, columns, "response", RESPONSE_COLUMNS, split)
        rows = ((renderer.pair(str(a or ""), str(b or "")), i) for i, (a, b) in enumerate(zip(ds[p], ds[r])))
    else:
        col = data.columns.text or "text"
        rows = ((renderer.text(str(t or "")), i) for i, t in enumerate(ds[col]))
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "prompt_length": [], "idx": []}
    truncated = dropped = 0
    for row, i in rows:
        if row == "no-assistant":
            raise DataError(
                "data.columns.messages",
                f"row {i} of the {split} split is a conversation without an assistant turn: nothing to learn from",
                "give every conversation at least one {role: assistant} message, or drop those rows",
            )
        if row is None:
            dropped += 1
            continue
        ids, labels, prompt_length, cut = row
        truncated += cut
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append(labels)
        out["prompt_length"].append(prompt_length)
        out["idx"].append(i)
    if not out["input_ids"]:
        raise DataError(
            "data.max_length",
            f"no row of the {split} split has a response token left to score ({dropped} dropped: empty responses, "
            "or responses past the window)",
            "give the rows non-empty responses, or a larger data.max_length",
        )
    if truncated or dropped:
        warn(
            f"causal-lm {split}: {truncated} of {len(ds)} rows truncated to data.max_length={max_length} (responses "
            f"keep their beginning), {dropped} dropped with no response token left to score"
        )
    import datasets

    return CausalSplit(datasets.Dataset.from_dict(out), truncated, dropped)


def causal_collator(tokenizer):
    """``transformers.DataCollatorForSeq2Seq`` without a model: pads input_ids/attention_mask with the pad token and
    labels with -100 (right padding), per batch; ``idx`` and ``prompt_length`` (what on-policy batches prompt
    with) ride along as row columns."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    from unikd.data.collate import _with_pad_token

    pad = DataCollatorForSeq2Seq(_with_pad_token(tokenizer, "teacher.path"), label_pad_token_id=-100, padding=True)

    def collate(rows: list[dict]) -> dict:
        model_rows = [{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows]
        batch = dict(pad(model_rows))
        for column in ("idx", "prompt_length"):  # row columns: never model inputs (distiller.ROW_COLUMNS)
            if all(column in r for r in rows):
                batch[column] = torch.tensor([r[column] for r in rows])
        return batch

    return collate


@dataclass
class CausalTask:
    """What ``load_causal_task`` made: the spec (task type causal-lm), the tokenized splits."""

    spec: Any
    train: CausalSplit
    validation: CausalSplit


def load_causal_task(data: Any, tokenizer, seed: int) -> CausalTask:
    """The run's causal-LM source read, limited and tokenized: train keeps ``data.train_limit`` rows after a shuffle
    with ``seed``, dev its first ``data.eval_limit``; ``data.holdout`` = n scores on n seeded training rows instead."""
    from unikd.data.labelled import TaskSpec, _name, read_splits

    train, dev, dev_name = read_splits(data)
    if data.holdout:
        if data.holdout >= len(train):
            raise ConfigError(
                "data.holdout",
                f"holds out {data.holdout} of the {len(train)} training rows, leaving none to train on",
                f"use data.holdout below {len(train)}",
            )
        parts = train.train_test_split(test_size=data.holdout, seed=seed, shuffle=True)
        train, dev, dev_name = parts["train"], parts["test"], "holdout"
    if data.train_limit is not None:
        train = train.shuffle(seed=seed).select(range(min(data.train_limit, len(train))))
    if data.eval_limit is not None:
        dev = dev.select(range(min(data.eval_limit, len(dev))))
    spec = TaskSpec(_name(data), "causal-lm")
    return CausalTask(
        spec,
        tokenize_causal(train, tokenizer, data, data.max_length, "train"),
        tokenize_causal(dev, tokenizer, data, data.max_length, dev_name),
    )
