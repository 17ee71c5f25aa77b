"""Collators: ``lm_collator`` (MLM or CLM) and ``classification_collator`` (dynamic padding).

Both pad with the tokenizer's pad token, or with EOS on a copy of a tokenizer that has none
(GPT-2, Llama). ``transformers`` is imported when a collator is built.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from unikd.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase


def _with_pad_token(tokenizer: "PreTrainedTokenizerBase", field_name: str) -> "PreTrainedTokenizerBase":
    """Return ``tokenizer``, or a copy with ``pad_token = eos_token`` when it has no pad token."""
    if tokenizer.pad_token is not None:
        return tokenizer
    if tokenizer.eos_token is None:
        raise ConfigError(
            field_name,
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has neither a pad token nor an EOS token to pad with",
            "add a pad token to the tokenizer (tokenizer.add_special_tokens({'pad_token': ...})) and resize the model embeddings",
        )
    tok = copy.deepcopy(tokenizer)
    tok.pad_token = tok.eos_token
    return tok


def _make_lm_collator_class():
    from transformers import DataCollatorForLanguageModeling

    class LMCollator(DataCollatorForLanguageModeling):
        """``DataCollatorForLanguageModeling`` whose causal-LM labels mask padding by the attention
        mask rather than by the pad id, so that EOS tokens keep their labels when pad == eos."""

        def torch_call(self, examples):
            if self.mlm or not examples or not isinstance(examples[0], dict) or "attention_mask" not in examples[0]:
                return super().torch_call(examples)
            batch = super().torch_call(examples)
            labels = batch["input_ids"].clone()
            labels[batch["attention_mask"] == 0] = -100
            batch["labels"] = labels
            return batch

    return LMCollator


_LM_COLLATOR_CLASS = None


def lm_collator(
    tokenizer: "PreTrainedTokenizerBase",
    mlm: bool,
    mlm_probability: float = 0.15,
    seed: int | None = None,
):
    """A ``transformers.DataCollatorForLanguageModeling`` for MLM (``mlm=True``) or CLM.

    MLM: ``mlm_probability`` of the non-special tokens are selected (80% -> [MASK], 10% random,
    10% unchanged); ``labels`` are -100 everywhere else. CLM: ``labels = input_ids`` with padding
    positions (by attention mask) set to -100; the model shifts them. A tokenizer without a pad
    token (GPT-2, Llama) is copied with ``pad_token = eos_token``; the caller's tokenizer is left
    untouched. ``seed`` makes the masking reproducible (transformers' collator generator).
    """
    global _LM_COLLATOR_CLASS
    if mlm:
        if getattr(tokenizer, "mask_token", None) is None:
            raise ConfigError(
                "data.mlm",
                f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no mask token, so it cannot do masked LM",
                "use causal LM (mlm: false) for decoder tokenizers, or a tokenizer with a [MASK] token",
            )
        if not (0.0 < float(mlm_probability) < 1.0):
            raise ConfigError("data.mlm_probability", f"must be in (0, 1), got {mlm_probability!r}", "use e.g. 0.15")
    tok = _with_pad_token(tokenizer, "data.tokenizer")
    if _LM_COLLATOR_CLASS is None:
        _LM_COLLATOR_CLASS = _make_lm_collator_class()
    return _LM_COLLATOR_CLASS(tokenizer=tok, mlm=bool(mlm), mlm_probability=float(mlm_probability), seed=seed)


def classification_collator(tokenizer: "PreTrainedTokenizerBase"):
    """``transformers.DataCollatorWithPadding``: pads each batch to its longest sequence.

    A tokenizer without a pad token is copied with ``pad_token = eos_token`` (GPT-2 style; the
    model's ``config.pad_token_id`` must then be set to the EOS id as well).
    """
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer=_with_pad_token(tokenizer, "data.tokenizer"))


def token_collator(tokenizer: "PreTrainedTokenizerBase"):
    """``transformers.DataCollatorForTokenClassification``: pads each batch, the labels with -100."""
    from transformers import DataCollatorForTokenClassification

    return DataCollatorForTokenClassification(tokenizer=_with_pad_token(tokenizer, "data.tokenizer"))
