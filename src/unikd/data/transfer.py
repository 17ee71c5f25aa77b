"""Transfer data for task distillation: inputs the teacher labels, beyond the labelled rows.

``data.transfer`` is a list of sources, each with a ``weight``: the number of its rows per labelled row in an
epoch (2.0: twice as many of its rows as there are labelled rows), drawn once per run with the run's seed, so
batches mix labelled and transfer rows in that ratio (in expectation, under the loader's seeded shuffle).

=================  ==========================================================================================
kind               rows
=================  ==========================================================================================
rest_of_train      the task's training rows that ``data.train_limit`` left out, their labels dropped (the
                   "few labels, much text" case); needs ``train_limit``
text               unlabelled text: local ``.txt`` files or directories (a paragraph a row, as the general
                   stage reads them); single-text tasks only (a pair task has no second text to pair it with)
augment            augmented copies of the labelled rows (``unikd.data.augment``: TinyBERT's word
                   replacement or Tang et al.'s masking / n-gram sampling); pairs stay pairs
=================  ==========================================================================================

Labelled rows get the hard-label and KD terms; transfer rows only the KD terms (a ``labelled`` column, 1 / 0,
tells them apart in each batch). Augmented copies with ``source_labels: true`` are labelled rows: they keep their
source row's gold label (the augmentation-only control, which needs no teacher).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from unikd.data.augment import AugmentConfig, augment_dataset
from unikd.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import datasets

FIELD = "data.transfer"


class _Source(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(1.0, gt=0, description="Rows of this source per labelled row in an epoch.")


class RestOfTrain(_Source):
    """The task's training rows beyond data.train_limit, labels dropped."""

    kind: Literal["rest_of_train"] = Field(description="The training rows train_limit leaves out, unlabelled.")


class TextFiles(_Source):
    """Unlabelled text files (single-text tasks)."""

    kind: Literal["text"] = Field(description="Local .txt files or directories, a paragraph a row.")
    paths: list[str] = Field(min_length=1, description="Files or directories (their *.txt files).")


class Augmented(_Source, AugmentConfig):
    """Augmented copies of the labelled rows (the fields of unikd.data.augment.AugmentConfig)."""

    kind: Literal["augment"] = Field(description="Augmented copies of the labelled rows (TinyBERT / Tang et al.).")
    source_labels: bool = Field(
        False,
        description="The copies keep their source row's gold label and train as labelled rows (the hard loss "
        "reaches them; no teacher needed: the augmentation-only control a study adds beside each augmented KD "
        "variant). Default: the teacher labels them, as any transfer row.",
    )


TransferSource = Annotated[Union[RestOfTrain, TextFiles, Augmented], Field(discriminator="kind")]


def _draw(rows: datasets.Dataset, n: int, seed: int) -> datasets.Dataset:
    """``n`` rows of ``rows``: a seeded shuffle, cycled when ``n`` is more than there are."""
    if len(rows) == 0:
        return rows
    shuffled = rows.shuffle(seed=seed)
    reps = math.ceil(n / len(shuffled))
    if reps == 1:
        return shuffled.select(range(n))
    import datasets

    return datasets.concatenate_datasets([shuffled] * reps).select(range(n))


def _source_rows(source, i: int, ctx: dict) -> datasets.Dataset:
    field = f"{FIELD}[{i}]"
    if isinstance(source, RestOfTrain):
        if ctx["train_limit"] is None:
            raise ConfigError(
                f"{field}.kind",
                "rest_of_train needs data.train_limit (without it every training row is labelled already)",
                "set data.train_limit, e.g. 2000",
            )
        return ctx["rest"]()
    if isinstance(source, TextFiles):
        if ctx["is_pair"]:
            raise ConfigError(
                f"{field}.kind",
                f"task {ctx['task']!r} takes sentence pairs, and plain text has no second sentence",
                "use rest_of_train or augment for a pair task",
            )
        from unikd.data.sources import load_text_corpus

        texts = load_text_corpus(source.paths)
        if len(texts) == 0:
            raise ConfigError(f"{field}.paths", "the text files hold no paragraph", "point at non-empty .txt files")
        return texts.rename_column("text", "text_a")
    return augment_dataset(
        ctx["labelled"],
        ctx["tokenizer"],
        source,
        embedding_matrix=ctx["embeddings"],
        mlm=ctx.get("mlm"),
        cache_dir=ctx.get("cache_dir"),
        log=ctx.get("log", print),
    )


def transfer_rows(
    sources: list,
    *,
    labelled: datasets.Dataset,
    rest,
    train_limit: int | None,
    task: str,
    is_pair: bool,
    tokenizer,
    embeddings=None,
    mlm=None,
    seed: int = 0,
    cache_dir=None,
    log=print,
) -> datasets.Dataset | None:
    """The transfer rows of an epoch (columns text_a[, text_b]), or None without sources.

    ``labelled``: the labelled rows (raw); ``rest()``: the training rows train_limit left out (raw, called
    only when a source needs them); ``embeddings``: the teacher's input embeddings (augment)."""
    import datasets

    if not sources:
        return None
    ctx = {
        "labelled": labelled,
        "rest": rest,
        "train_limit": train_limit,
        "task": task,
        "is_pair": is_pair,
        "tokenizer": tokenizer,
        "embeddings": embeddings,
        "mlm": mlm,
        "cache_dir": cache_dir,
        "log": log,
    }
    columns = ["text_a", "text_b"] if is_pair else ["text_a"]
    parts = []
    for i, source in enumerate(sources):
        rows = _source_rows(source, i, ctx)
        if len(rows) == 0:
            raise ConfigError(
                f"{FIELD}[{i}]",
                f"the {source.kind} source has no rows",
                "drop it, or give it rows (a smaller train_limit leaves more for rest_of_train)",
            )
        n = max(1, round(source.weight * len(labelled)))
        parts.append(_labelled_as(source, _draw(rows, n, seed + 7919 * (i + 1)), columns, labelled.features["label"]))
    return datasets.concatenate_datasets(parts)


def _labelled_as(source, rows: datasets.Dataset, columns: list[str], label_feature) -> datasets.Dataset:
    """The source's rows as the trainer takes them: the texts, a ``label`` and a ``labelled`` flag. Copies with
    ``source_labels`` keep their gold label (``labelled`` 1: the hard loss reaches them); every other transfer row
    gets a placeholder label the hard loss never reads (``labelled`` 0: only the KD terms)."""
    if getattr(source, "source_labels", False):
        rows = rows.select_columns([*columns, "label"])
        return rows.add_column("labelled", [1] * len(rows))
    rows = rows.select_columns(columns)
    placeholder = [0.0 if label_feature.dtype.startswith("float") else 0] * len(rows)
    rows = rows.add_column("label", placeholder).cast_column("label", label_feature)
    return rows.add_column("labelled", [0] * len(rows))


__all__ = ["Augmented", "RestOfTrain", "TextFiles", "TransferSource", "transfer_rows"]
