"""A run's inputs: its datasets (raw text packed into blocks, or labelled rows, tokenized and cached), the transfer
rows its teacher labels, the loaders that batch them and the optimizer over the student and the projections."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from unikd import data as D
from unikd.config import RunConfig
from unikd.errors import ConfigError, DataError
from unikd.teacher_cache import TeacherLogitCache


def cache_dir() -> Path:
    """Tokenized datasets are cached here, keyed by tokenizer and settings (UNIKD_CACHE overrides)."""
    return Path(os.environ.get("UNIKD_CACHE", Path.home() / ".cache" / "unikd")) / "tokenized"


@dataclass
class Inputs:
    """What ``load_inputs`` made: tokenized train/dev rows, the collator, and for labelled data its
    ``unikd.data.TaskSpec`` (``task``) and ``load_task_data``'s raw rows (``rows``); None for the general stage."""

    train: Any
    eval: Any
    collate: Any
    task: Any = None
    rows: Any = None


def load_inputs(cfg: RunConfig, tokenizer, is_decoder: bool) -> Inputs:
    """The run's datasets, checked before any weights load (a missing file, an empty split)."""
    causal = cfg.stage != "general" and is_causal_data(cfg)
    if cfg.plan.policy != "off_policy" and not (causal and cfg.stage == "task"):
        raise ConfigError(
            "plan.policy",
            f"{cfg.plan.policy} draws responses for prompts, so it needs a task-stage run on causal-LM data "
            f"(this is a {cfg.stage} run{'' if causal else ' on data without prompts'})",
            "use plan.policy=off_policy, or prompt/response data (data.task_type: causal-lm) with stage=task",
        )
    if cfg.stage == "general":
        return _text_inputs(cfg, tokenizer, is_decoder)
    if is_qa_data(cfg):
        return _qa_inputs(cfg, tokenizer)
    if causal:
        return _causal_inputs(cfg, tokenizer, is_decoder)
    return _labelled_inputs(cfg, tokenizer)


def is_causal_data(cfg: RunConfig) -> bool:
    """A task/finetune run on causal-LM data (``data.task_type: causal-lm``, or the source's columns say so)."""
    from unikd.data.causal import is_causal_lm
    from unikd.data.labelled import read_splits
    from unikd.data.qa import has_squad_files

    data = cfg.data
    if data.task_type is not None or data.task:
        return data.task_type == "causal-lm"
    if has_squad_files(data):
        return False
    return is_causal_lm(data, read_splits(data)[0].column_names)


def is_qa_data(cfg: RunConfig) -> bool:
    """A task/finetune run on extractive-QA data (``data.task_type: extractive-qa``, SQuAD JSON, or the columns)."""
    from unikd.data.labelled import read_splits
    from unikd.data.qa import has_squad_files, is_extractive_qa

    data = cfg.data
    if cfg.stage == "general" or data.task:
        return False
    if data.task_type is not None:
        return data.task_type == "extractive-qa"
    return has_squad_files(data) or is_extractive_qa(data, read_splits(data)[0].column_names)


def _qa_inputs(cfg: RunConfig, tokenizer) -> Inputs:
    """Task and finetune stages on extractive-QA rows (``unikd.data.qa``): windows with their answer positions."""
    from unikd.data.qa import load_qa_task, qa_collator

    for field, value, fix in (
        ("data.transfer", cfg.data.transfer, "drop data.transfer (transfer sets are for sentence classification)"),
        (
            "train.teacher_cache",
            cfg.train.teacher_cache and cfg.stage == "task",
            "drop train.teacher_cache (not for extractive-qa yet)",
        ),
        ("plan.pseudo_labels", cfg.plan.pseudo_labels, "drop plan.pseudo_labels (a span has no class to take)"),
        ("teacher.ensemble", cfg.teacher.ensemble, "distil one QA teacher (ensembles combine class logits)"),
    ):
        if value:
            raise ConfigError(field, "is not supported on extractive-qa data", fix)
    task = load_qa_task(cfg.data, tokenizer)
    D.check_metric(task.spec, cfg.eval.metric)
    return Inputs(task.train_features.rows, task.eval_features.rows, qa_collator(), task.spec, task)


def _causal_inputs(cfg: RunConfig, tokenizer, is_decoder: bool) -> Inputs:
    """Task and finetune stages on prompt/response, conversation or text rows (``unikd.data.causal``)."""
    from unikd.data.causal import causal_collator, load_causal_task

    if not is_decoder:
        raise ConfigError(
            "teacher.path",
            f"causal-lm data trains a decoder, and {cfg.teacher.path!r} is an encoder",
            "use a decoder teacher (GPT-2, Llama, Qwen2, Mistral, ...), or labelled data for an encoder",
        )
    for field, value, fix in (
        ("data.transfer", cfg.data.transfer, "drop data.transfer (transfer sets are for sentence classification)"),
        ("data.task", cfg.data.task, "drop data.task: a GLUE task is labelled data"),
    ):
        if value:
            raise ConfigError(field, "is not for causal-lm data", fix)
    if cfg.train.teacher_cache and cfg.stage == "task":  # the top-k token cache (unikd.token_cache)
        from unikd.token_cache import check_token_cache

        check_token_cache(cfg)
    D.check_metric(D.TaskSpec("causal-lm", "causal-lm"), cfg.eval.metric)
    if cfg.eval.metric in ("teacher_nll", "rouge_l") and cfg.eval.generation.rows == 0:
        raise ConfigError(
            "eval.metric",
            f"{cfg.eval.metric} is read off the student's samples, and eval.generation.rows is 0",
            "set eval.generation.rows (e.g. 32), or rank by perplexity",
        )
    task = load_causal_task(cfg.data, tokenizer, cfg.seed)
    return Inputs(task.train.rows, task.validation.rows, causal_collator(tokenizer), task.spec, task)


def _text_inputs(cfg: RunConfig, tokenizer, is_decoder: bool) -> Inputs:
    """General stage: raw text packed into blocks of ``data.block_size`` tokens, MLM or CLM batches."""
    data = cfg.data

    def blocks(files: list[str], limit: int | None, field: str):
        corpus = D.load_text_corpus(files, limit_lines=limit, text_column=data.text_column, field=field)
        ds = D.chunk_for_lm(corpus, tokenizer, data.block_size, cache_dir=cache_dir())
        _check_blocks(ds, cfg, field)
        return ds

    train = blocks(data.text, data.text_limit_lines, "data.text")
    evals = blocks(data.eval_text, data.eval_text_limit, "data.eval_text") if data.eval_text else None
    collate = D.lm_collator(tokenizer, mlm=not is_decoder, mlm_probability=data.mlm_probability)
    return Inputs(train, evals, collate)


def _labelled_inputs(cfg: RunConfig, tokenizer) -> Inputs:
    """Task and finetune stages: any labelled source (a GLUE preset reads through load_glue exactly as before)."""
    task = D.load_task_data(cfg.data, seed=cfg.seed)
    D.check_metric(task.spec, cfg.eval.metric)
    if len(task.validation) == 0:  # a run scored on nothing would report "final": {} as if it were a result
        raise DataError(
            "data.data_dir" if cfg.data.task else "data.files",
            f"the {task.spec.name} dev split {'validation'!r} has no rows",
            "point the data at a dev split that holds labelled rows (data.eval_limit must leave some)",
        )
    if cfg.train.teacher_cache and cfg.stage == "task":
        TeacherLogitCache.check_task(task.spec)
    if task.spec.is_token:
        tokenize = lambda ds: D.tokenize_words(
            ds, tokenizer, cfg.data.max_length, task.spec.label_names, cfg.data.label_all_tokens, cache_dir=cache_dir()
        )
        collate = D.token_collator(tokenizer)
    else:
        tokenize = lambda ds: D.tokenize_pairs(ds, tokenizer, cfg.data.max_length, cache_dir=cache_dir())
        collate = D.classification_collator(tokenizer)
    if cfg.data.transfer and task.spec.task_type not in ("classification", "regression"):
        raise ConfigError(
            "data.transfer",
            f"transfer rows are for sentence classification and regression; this source is {task.spec.task_type}",
            "drop data.transfer (token-level and multi-label transfer sets are not supported in this version)",
        )
    return Inputs(tokenize(task.train), tokenize(task.validation), collate, task.spec, task)


def with_transfer(cfg: RunConfig, train_ds, embeddings, tokenizer, spec, task_data):
    """The labelled rows (``labelled`` = 1) followed by the epoch's transfer rows (``labelled`` = 0, a placeholder
    label the hard loss never reads), tokenized alike; the labelled rows alone without ``data.transfer``.
    ``task_data``: ``load_task_data``'s raw rows (GLUE or the user's own source): its train is the labelled rows,
    its validation the held-out ones under ``data.holdout``. ``embeddings``: the input embeddings of the model the
    run was built from (the teacher; a fine-tune's own source model), which augmentation's word neighbours read."""
    import datasets

    from unikd.data.transfer import transfer_rows

    if not cfg.data.transfer:
        return train_ds
    data = cfg.data
    labelled = task_data.train

    def rest():
        taken = set(labelled["idx"])
        if data.holdout:  # the held-out rows score the run: no teacher labels them for it either
            taken |= set(task_data.validation["idx"])
        full = D.load_task_data(data.model_copy(update={"train_limit": None, "holdout": None}), seed=cfg.seed).train
        return full.filter(lambda r: r["idx"] not in taken)

    rows = transfer_rows(
        data.transfer,
        labelled=labelled,
        rest=rest,
        train_limit=data.train_limit,
        task=spec.name,
        is_pair=spec.is_pair,
        tokenizer=tokenizer,
        embeddings=embeddings,
        seed=cfg.seed,
        cache_dir=cache_dir(),
    )
    flags = rows["labelled"]  # tokenization keeps the model's columns only
    transfer = D.tokenize_pairs(rows.remove_columns("labelled"), tokenizer, data.max_length, cache_dir=cache_dir())
    return datasets.concatenate_datasets(
        [train_ds.add_column("labelled", [1] * len(train_ds)), transfer.add_column("labelled", flags)]
    )


def _check_blocks(ds, cfg: RunConfig, field: str) -> None:
    """Text packed into no block at all would leave the loop with an empty loader: refuse it."""
    if len(ds) == 0:
        raise ConfigError(
            field,
            f"the text holds fewer than data.block_size={cfg.data.block_size} tokens, so it packs into no block",
            f"give more text in {field}, or a smaller data.block_size",
        )


def loaders(cfg: RunConfig, train_ds, eval_ds, collate) -> tuple[DataLoader, DataLoader | None]:
    """The training loader (shuffled by the run's seed, or length-grouped) and the dev loader (in order)."""
    if cfg.train.group_by_length:
        from unikd.data.sampling import LengthGroupedSampler, row_lengths

        order = {"sampler": LengthGroupedSampler(row_lengths(train_ds), cfg.train.batch_size, cfg.seed)}
    else:
        order = {"shuffle": True, "generator": torch.Generator().manual_seed(cfg.seed)}
    train_loader = DataLoader(train_ds, batch_size=cfg.train.batch_size, collate_fn=collate, **order)
    eval_loader = DataLoader(eval_ds, batch_size=cfg.train.eval_batch_size, collate_fn=collate) if eval_ds else None
    return train_loader, eval_loader


def optimizer(cfg: RunConfig, student, plan) -> torch.optim.AdamW:
    """AdamW over the student (no weight decay on biases and norms) and the plan's projections (own lr)."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight", "ln_")
    groups = [
        {
            "params": [p for n, p in student.named_parameters() if not any(k in n for k in no_decay)],
            "weight_decay": cfg.optim.weight_decay,
        },
        {"params": [p for n, p in student.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    if plan is not None and len(list(plan.parameters())):
        groups.append(
            {
                "params": list(plan.parameters()),
                "weight_decay": cfg.optim.weight_decay,
                "lr": cfg.optim.projection_lr or cfg.optim.lr,
            }
        )
    return torch.optim.AdamW(groups, lr=cfg.optim.lr)
