"""Tokenization with deterministic, reusable ``datasets`` caches.

``tokenize_pairs`` tokenizes a ``load_glue`` dataset for sequence classification; ``chunk_for_lm``
tokenizes a ``text`` dataset and packs it into fixed-length blocks. Both map with a fingerprint
built from ``_CACHE_VERSION``, the input dataset's fingerprint and ``_tokenizer_fingerprint``, so
cached results are reused across runs (``cache_dir`` adds an explicit cache file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unikd.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    from transformers import PreTrainedTokenizerBase

_CACHE_VERSION = "unikd-data-v1"  # bump when the output of a cached map changes


def _tokenizer_fingerprint(tokenizer: "PreTrainedTokenizerBase") -> str:
    """A deterministic hash of what determines a tokenizer's output.

    datasets' own hashing of a tokenizer object is not stable (fast tokenizers carry mutable
    truncation/padding state), so cached maps use this together with the input fingerprint.
    """
    import hashlib
    import json

    vocab = tokenizer.get_vocab()
    parts = [
        type(tokenizer).__name__,
        str(getattr(tokenizer, "name_or_path", "")),
        sorted(vocab.items()),
        sorted((k, str(v)) for k, v in tokenizer.special_tokens_map.items()),
        list(tokenizer.model_input_names),
        getattr(tokenizer, "padding_side", None),
        getattr(tokenizer, "truncation_side", None),
        getattr(tokenizer, "do_lower_case", None),
    ]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        try:  # normalizer / pre-tokenizer / post-processor settings, without the runtime state
            spec = json.loads(backend.to_str())
            spec.pop("truncation", None)
            spec.pop("padding", None)
            spec.pop("model", None)  # covered by the vocab above
            parts.append(json.dumps(spec, sort_keys=True))
        except Exception:  # noqa: BLE001 - an exotic backend's spec: the fingerprint keeps the vocab alone
            pass
    return hashlib.sha256(json.dumps(parts, default=str).encode("utf-8")).hexdigest()[:32]


def _map_cached(ds, fn, *, fingerprint: str, cache_dir, remove_columns, desc: str, batched=True, num_proc=None):
    kwargs: dict[str, Any] = dict(
        num_proc=num_proc,
        batched=batched,
        remove_columns=remove_columns,
        new_fingerprint=fingerprint,
        desc=desc,
        load_from_cache_file=True,
    )
    if cache_dir is not None:
        cache_dir = Path(cache_dir).expanduser()
        cache_dir.mkdir(parents=True, exist_ok=True)
        kwargs["cache_file_name"] = str(cache_dir / f"{desc.split()[0].lower()}-{fingerprint}.arrow")
    return ds.map(fn, **kwargs)


def _check_length(tokenizer, value: int, field_name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(field_name, f"must be a positive integer, got {value!r}", "use e.g. 128")
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < 1_000_000 and value > model_max:
        raise ConfigError(
            field_name,
            f"{value} exceeds the tokenizer's model_max_length {model_max} (the model has no position embeddings beyond it)",
            f"use a value <= {model_max}",
        )


def tokenize_pairs(
    ds: "datasets.Dataset",
    tokenizer: "PreTrainedTokenizerBase",
    max_length: int,
    cache_dir: str | os.PathLike | None = None,
) -> "datasets.Dataset":
    """Tokenize a ``load_glue`` dataset for sequence classification.

    Returns a dataset with ``input_ids``, ``attention_mask``, ``token_type_ids`` (only if the
    tokenizer produces them; pairs get segment ids 0 and 1) and ``labels`` (from ``label``).
    Sequences are truncated to ``max_length`` (longest-first for pairs) and left unpadded:
    ``classification_collator`` pads per batch. All other columns are dropped.

    The map has a deterministic fingerprint (input dataset + tokenizer vocab/settings +
    max_length), so datasets' cache is reused across runs for datasets backed by cache files
    (hub datasets); pass ``cache_dir`` to cache datasets built in memory (local TSVs) as well, in
    ``<cache_dir>/tokenize-<fingerprint>.arrow``.
    """
    from datasets.fingerprint import Hasher

    _check_length(tokenizer, max_length, "data.max_length")
    if "text_a" not in ds.column_names:
        raise ConfigError(
            "data",
            f"dataset has no 'text_a' column (columns: {ds.column_names})",
            "pass a dataset from unikd.data.load_glue",
        )
    has_b = "text_b" in ds.column_names
    has_label = "label" in ds.column_names
    keep = set(tokenizer.model_input_names) | {"input_ids", "attention_mask"}

    def fn(batch):
        args = (batch["text_a"], batch["text_b"]) if has_b else (batch["text_a"],)
        enc = tokenizer(*args, truncation=True, max_length=max_length)
        out = {k: v for k, v in enc.items() if k in keep}
        if has_label:
            out["labels"] = batch["label"]
        return out

    fingerprint = Hasher.hash(
        [
            _CACHE_VERSION,
            "tokenize_pairs",
            ds._fingerprint,
            _tokenizer_fingerprint(tokenizer),
            max_length,
            has_b,
            has_label,
        ]
    )
    return _map_cached(
        ds, fn, fingerprint=fingerprint, cache_dir=cache_dir, remove_columns=ds.column_names, desc="Tokenize pairs"
    )


def _appends_eos(tokenizer) -> bool:
    """True when the tokenizer has an EOS token that it does not add itself (GPT-2 style)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return not ids or ids[-1] != eos


def chunk_for_lm(
    ds: "datasets.Dataset",
    tokenizer: "PreTrainedTokenizerBase",
    block_size: int,
    cache_dir: str | os.PathLike | None = None,
) -> "datasets.Dataset":
    """Tokenize a ``text`` dataset and pack it into blocks of exactly ``block_size`` tokens.

    This is the usual ``group_texts``: every row is tokenized (with the tokenizer's special tokens,
    e.g. ``[CLS] ... [SEP]`` for BERT; for tokenizers that add no EOS themselves, GPT-2 style, an
    EOS is appended to separate documents), all rows are concatenated and cut into consecutive
    blocks; the remainder shorter than ``block_size`` is dropped. Columns: ``input_ids``,
    ``attention_mask`` (all ones) and ``token_type_ids`` when the tokenizer makes them. Labels are
    made by ``lm_collator``. Caching works as in ``tokenize_pairs``.
    """
    from datasets.fingerprint import Hasher

    _check_length(tokenizer, block_size, "data.block_size")
    if "text" not in ds.column_names:
        raise ConfigError(
            "data",
            f"dataset has no 'text' column (columns: {ds.column_names})",
            "pass a dataset from unikd.data.load_text_corpus",
        )
    keep = set(tokenizer.model_input_names) | {"input_ids", "attention_mask"}
    add_eos = _appends_eos(tokenizer)
    eos = tokenizer.eos_token_id

    def fn(batch):
        # model_max_length warnings are expected here: the text is packed, not fed as-is
        enc = tokenizer(batch["text"], verbose=False)
        columns = [k for k in enc.keys() if k in keep]
        concat: dict[str, list[int]] = {k: [] for k in columns}
        for i in range(len(batch["text"])):
            for k in columns:
                seq = enc[k][i]
                concat[k].extend(seq)
                if add_eos:
                    concat[k].append(eos if k == "input_ids" else (1 if k == "attention_mask" else 0))
        total = (len(concat["input_ids"]) // block_size) * block_size
        return {k: [v[i : i + block_size] for i in range(0, total, block_size)] for k, v in concat.items()}

    fingerprint = Hasher.hash(
        [_CACHE_VERSION, "chunk_for_lm", ds._fingerprint, _tokenizer_fingerprint(tokenizer), block_size, add_eos]
    )
    return _map_cached(
        ds, fn, fingerprint=fingerprint, cache_dir=cache_dir, remove_columns=ds.column_names, desc="Chunk text"
    )


def tokenize_words(
    ds: "datasets.Dataset",
    tokenizer: "PreTrainedTokenizerBase",
    max_length: int,
    tag_names: tuple[str, ...] = (),
    label_all_tokens: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> "datasets.Dataset":
    """Tokenize a token-classification dataset (``tokens``: words, ``tags``: one tag id per word) into sub-tokens.

    Each word's first sub-token gets the word's tag; its other sub-tokens and the special tokens get -100 (no
    loss, no KD, not scored), as in transformers' ``run_ner.py``. With ``label_all_tokens`` every sub-token is
    labelled, a ``B-X`` word's later sub-tokens with ``I-X`` (when ``tag_names`` has it). Words cut off by
    ``max_length`` are dropped. Needs a fast tokenizer (``word_ids``). Caching works as in ``tokenize_pairs``.
    """
    from datasets.fingerprint import Hasher

    _check_length(tokenizer, max_length, "data.max_length")
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            "teacher.path",
            f"token classification needs a fast tokenizer (word ids); {type(tokenizer).__name__} is not one",
            "save the teacher with a tokenizer.json (AutoTokenizer.from_pretrained(..., use_fast=True))",
        )
    index = {name: i for i, name in enumerate(tag_names)}
    b_to_i = [index.get("I-" + n[2:], i) if n.startswith("B-") else i for i, n in enumerate(tag_names)]
    keep = set(tokenizer.model_input_names) | {"input_ids", "attention_mask"}

    def fn(batch):
        enc = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
        out = {k: v for k, v in enc.items() if k in keep}
        labels = []
        for row, tags in enumerate(batch["tags"]):
            previous, aligned = None, []
            for word in enc.word_ids(row):
                if word is None:
                    aligned.append(-100)
                elif word != previous:
                    aligned.append(tags[word])
                else:
                    aligned.append(b_to_i[tags[word]] if label_all_tokens and b_to_i else -100)
                previous = word
            labels.append(aligned)
        out["labels"] = labels
        return out

    fingerprint = Hasher.hash(
        [
            _CACHE_VERSION,
            "tokenize_words",
            ds._fingerprint,
            _tokenizer_fingerprint(tokenizer),
            max_length,
            list(tag_names),
            label_all_tokens,
        ]
    )
    return _map_cached(
        ds, fn, fingerprint=fingerprint, cache_dir=cache_dir, remove_columns=ds.column_names, desc="Tokenize words"
    )
