"""One distillation (or fine-tuning) run, top to bottom, on Accelerate: ``setup`` -> the loop -> ``finish``.

`accelerate launch -m unikd.cli distill run.yaml` gives DDP/FSDP/DeepSpeed on several GPUs and nodes
with this same file. The stages differ only in data and in whether a teacher is present:

- general:  raw text, MLM (encoders) / CLM (decoders) batches, teacher features, optional LM loss;
- task:     labelled data, teacher logits + intermediate knowledge + hard labels;
- finetune: labelled data, hard labels only (the no-KD baseline, or the teacher itself).

The KD step itself is ``Distiller.step`` (``unikd.distiller``), the same call the benchmark times.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from transformers import get_scheduler

from unikd import data as D
from unikd.allocator import keep_freed_memory
from unikd.config import RunConfig, dump_config
from unikd.distiller import Distiller, model_inputs
from unikd.errors import ConfigError, DataError, TrainingError, warn
from unikd.families import get_adapter, model_spec
from unikd.guards import FiniteWatch, check_teacher, stored_teacher_score, trivial_baseline, weights_finite
from unikd.hub import copy_sentence_transformers_modules, model_card, name_labels, write_model_card
from unikd.initialization import build_student, check_student_init
from unikd.io import atomic_path, atomic_write_json, atomic_write_text, check_writable_dir
from unikd.metrics import compute_task_metrics
from unikd.models import load_model, load_tokenizer, model_config, model_kind_for, quantize_int8, resolve_model_path
from unikd.plan import DistillationPlan
from unikd.resume import check_resume_config, checkpoint_problem, record_resume
from unikd.student import count_parameters, student_config
from unikd.teacher_cache import SharedTeacherOutputs, TeacherLogitCache, row_key

CHECKPOINTS = "checkpoints"
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": None}


# ---- set-up helpers (everything here runs before the first step) ---------------------------------
def validate_run(cfg: RunConfig):
    """Resolve paths and validate the plan against model shapes, from configs only (no weights yet)."""
    teacher_path = resolve_model_path(cfg.teacher.path, "teacher.path") if cfg.teacher.path else None
    if cfg.stage in ("task", "finetune") and cfg.data.task:
        D.resolve_task(cfg.data.task)
    teacher_config = model_config(teacher_path, "teacher.path")
    kind = model_kind_for(cfg.stage, teacher_config)
    if cfg.stage == "task":
        archs = teacher_config.architectures or []
        if not any(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in archs):
            raise ConfigError(
                "teacher.path",
                f"{cfg.teacher.path!r} has no fine-tuned task head ({archs or 'no architectures'})",
                f"fine-tune it first: unikd finetune teacher.path={cfg.teacher.path} "
                f"{_data_args(cfg)}, "
                "then use that run's student/ directory as teacher.path",
            )
    plan = None
    if cfg.stage != "finetune":
        s_config = student_config(teacher_config, cfg.student.shape)
        plan = DistillationPlan(
            cfg.plan, model_spec(teacher_config), model_spec(s_config), token_level_logits=cfg.stage == "general"
        )
        if kind == "base" and (cfg.plan.hard_label_weight > 0 or any(t.knowledge == "logits" for t in cfg.plan.terms)):
            raise ConfigError(
                "plan",
                f"the teacher {cfg.teacher.path!r} has no LM head, so general-stage logits KD and the LM "
                "loss are unavailable",
                "drop the logits terms and set plan.hard_label_weight=0 (intermediate "
                "knowledge only, as MiniLM does), or use a teacher with an MLM/CLM head",
            )
    _check_inputs(cfg, teacher_config, plan)
    return teacher_path, teacher_config, kind, plan


def _check_inputs(cfg: RunConfig, teacher_config, plan: DistillationPlan | None) -> None:
    """What ``validate`` can tell without weights or data: a writable output_dir, a precision this machine
    runs, a plan with something to train, a student initialization that fits the teacher."""
    check_writable_dir(cfg.output_dir, "output_dir")
    if cfg.train.teacher_cache_dir:
        check_writable_dir(cfg.train.teacher_cache_dir, "train.teacher_cache_dir")
    if cfg.train.precision == "fp16" and not torch.cuda.is_available():
        # Accelerate would run such a run in fp32 without a word: its numbers would not be what was asked for
        raise ConfigError(
            "train.precision",
            "fp16 mixed precision needs a CUDA GPU, and none is visible here (the run would silently be fp32)",
            "use train.precision=no (fp32) or bf16 on a CPU, or run on a GPU",
        )
    if plan is not None and cfg.train.teacher_cache and cfg.stage == "task":
        TeacherLogitCache.check_plan(plan)
    p = cfg.plan
    if cfg.stage != "finetune" and not p.terms and p.hard_label_weight == 0 and not p.hard_label_weight_end:
        raise ConfigError(
            "plan.terms",
            "the plan has no distillation terms and plan.hard_label_weight is 0, so there is nothing to train",
            "add a term (e.g. plan.terms=[{knowledge: logits, loss: kl}]) or set plan.hard_label_weight=1",
        )
    check_student_init(teacher_config, cfg.student.shape, cfg.student.init)
    if cfg.stage == "task" and cfg.student.init.strategy == "random":
        # A warning, not an error: a random student is a legitimate study arm (the initialization study runs it).
        warn(
            "student.init.strategy: random for task-stage KD: in docs/study-cpu.md (Initialization at the "
            "transfer protocol, SST-2, 3 seeds) a random 3x384 student scored 62.58 with KD against 78.29 from the "
            "teacher's layers, and KD fell below its own no-KD twin (64.33) at 282 steps; use "
            "student.init.strategy=teacher-layers (or a general-stage student via student.init.strategy=pretrained) "
            "unless a random student is what you study"
        )


def _data_args(cfg: RunConfig) -> str:
    """The run's labelled source as command-line overrides (for messages)."""
    if cfg.data.task:
        return f"data.task={cfg.data.task}"
    if cfg.data.dataset:
        return f"data.dataset={cfg.data.dataset}"
    return "data.files={" + ", ".join(f"{k}: {v}" for k, v in cfg.data.files.items()) + "}"


def _cache_dir() -> Path:
    """Tokenized datasets are cached here, keyed by tokenizer and settings (UNIKD_CACHE overrides)."""
    return Path(os.environ.get("UNIKD_CACHE", Path.home() / ".cache" / "unikd")) / "tokenized"


def _datasets(cfg: RunConfig, tokenizer, is_decoder: bool):
    cache = _cache_dir()
    if cfg.stage == "general":
        train = D.chunk_for_lm(
            D.load_text_corpus(cfg.data.text, limit_lines=cfg.data.text_limit_lines, text_column=cfg.data.text_column),
            tokenizer,
            cfg.data.block_size,
            cache_dir=cache,
        )
        evals = (
            D.chunk_for_lm(
                D.load_text_corpus(
                    cfg.data.eval_text,
                    limit_lines=cfg.data.eval_text_limit,
                    text_column=cfg.data.text_column,
                    field="data.eval_text",
                ),
                tokenizer,
                cfg.data.block_size,
                cache_dir=cache,
            )
            if cfg.data.eval_text
            else None
        )
        collate = D.lm_collator(tokenizer, mlm=not is_decoder, mlm_probability=cfg.data.mlm_probability)
        _check_blocks(train, cfg, "data.text")
        if evals is not None:
            _check_blocks(evals, cfg, "data.eval_text")
        return train, evals, collate, None, None
    # any labelled source (a GLUE preset reads through load_glue exactly as before), checked before weights load
    task = D.load_task_data(cfg.data, seed=cfg.seed)
    D.check_metric(task.spec, cfg.eval.metric)
    if len(task.validation) == 0:  # a run scored on nothing would report "final": {} as if it were a result
        raise DataError(
            "data.data_dir" if cfg.data.task else "data.files",
            f"the {task.spec.name} dev split {'validation'!r} has no rows",
            "point the data at a dev split that holds labelled rows (data.eval_limit must leave some)",
        )
    if task.spec.is_token and cfg.train.teacher_cache and cfg.stage == "task":
        raise ConfigError(
            "train.teacher_cache",
            "the teacher cache keeps one logit vector per row, and token classification has one per token",
            "set train.teacher_cache=false",
        )
    if task.spec.is_token:
        tokenize = lambda ds: D.tokenize_words(  # noqa: E731
            ds, tokenizer, cfg.data.max_length, task.spec.label_names, cfg.data.label_all_tokens, cache_dir=cache
        )
        collate = D.token_collator(tokenizer)
    else:
        tokenize = lambda ds: D.tokenize_pairs(ds, tokenizer, cfg.data.max_length, cache_dir=cache)  # noqa: E731
        collate = D.classification_collator(tokenizer)
    if cfg.data.transfer and task.spec.task_type not in ("classification", "regression"):
        raise ConfigError(
            "data.transfer",
            f"transfer rows are for sentence classification and regression; this source is {task.spec.task_type}",
            "drop data.transfer (token-level and multi-label transfer sets are not supported in this version)",
        )
    return tokenize(task.train), tokenize(task.validation), collate, task.spec, task


def _with_transfer(cfg: RunConfig, train_ds, teacher, tokenizer, spec, task_data):
    """The labelled rows (``labelled`` = 1) followed by the epoch's transfer rows (``labelled`` = 0, a placeholder
    label the hard loss never reads), tokenized alike; the labelled rows alone without ``data.transfer``.
    ``task_data``: ``load_task_data``'s raw rows (GLUE or the user's own source): its train is the labelled rows,
    its validation the held-out ones under ``data.holdout``."""
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
        embeddings=teacher.get_input_embeddings().weight,
        seed=cfg.seed,
        cache_dir=_cache_dir(),
    )
    placeholder = [0.0 if spec.task_type == "regression" else 0] * len(rows)
    rows = rows.add_column("label", placeholder).cast_column("label", labelled.features["label"])
    transfer = D.tokenize_pairs(rows, tokenizer, data.max_length, cache_dir=_cache_dir())
    return datasets.concatenate_datasets(
        [train_ds.add_column("labelled", [1] * len(train_ds)), transfer.add_column("labelled", [0] * len(transfer))]
    )


def _check_blocks(ds, cfg: RunConfig, field: str) -> None:
    """Text packed into no block at all would leave the loop with an empty loader: refuse it."""
    if len(ds) == 0:
        raise ConfigError(
            field,
            f"the text holds fewer than data.block_size={cfg.data.block_size} tokens, so it packs into no block",
            f"give more text in {field}, or a smaller data.block_size",
        )


def _optimizer(cfg: RunConfig, student, plan):
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


def _teacher_cache(cfg: RunConfig, plan, teacher_path: str, rows: int) -> TeacherLogitCache | None:
    if not (cfg.train.teacher_cache and cfg.stage == "task"):
        return None
    TeacherLogitCache.check_plan(plan)
    data_key = {} if cfg.data.task else {"data": cfg.data.model_dump(mode="json")}  # GLUE caches keep their key
    return TeacherLogitCache(
        Path(cfg.output_dir) / "teacher_cache",
        rows,
        topk=cfg.train.teacher_cache_topk,
        key={
            "teacher": teacher_path,
            "task": cfg.data.task,
            "seed": cfg.seed,
            "train_limit": cfg.data.train_limit,
            "max_length": cfg.data.max_length,
            **data_key,
            # other precisions give other logits (absent for fp32: older caches stay valid)
            **({"precision": cfg.teacher.precision} if cfg.teacher.precision != "fp32" else {}),
            **({"transfer": [s.model_dump(mode="json") for s in cfg.data.transfer]} if cfg.data.transfer else {}),
        },
    )


def _checkpoint_dirs(output_dir: Path) -> list[Path]:
    root = output_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "unikd_state.json").is_file()),
        key=lambda p: int(p.name[5:]),
    )


def _save_checkpoint(accelerator, output_dir: Path, step: int, extra: dict, keep: int) -> None:
    """accelerator.save_state into a temp dir, then an atomic rename: a crash never leaves half a checkpoint."""
    root = output_dir / CHECKPOINTS
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        # made before the barrier: save_state makes it on the main process only, while every process writes its
        # RNG state into it (a race under several processes)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            atomic_write_json(tmp / "unikd_state.json", {"step": step, **extra})
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # a partial checkpoint must not be mistaken for one, nor fill the disk
        raise _disk_full(accelerator, root, step) from exc
    if accelerator.is_main_process:
        for old in _checkpoint_dirs(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _state_bytes(accelerator) -> int:
    """What ``save_state`` writes, near enough: the tensors of every prepared model's and optimizer's state."""
    states = [m.state_dict() for m in accelerator._models] + [o.state_dict() for o in accelerator._optimizers]
    total, stack = 0, list(states)
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


def _disk_full(accelerator, root: Path, step: int) -> ConfigError:
    existing = next(p for p in (root, *root.parents) if p.exists())
    need, free = _state_bytes(accelerator) / 2**20, shutil.disk_usage(existing).free / 2**20
    return ConfigError(
        "output_dir",
        f"the disk filled up while writing checkpoint step-{step} in {root} (removed the partial .tmp-step-{step}); "
        f"a checkpoint needs about {need:.1f} MiB, {free:.1f} MiB are free",
        "free space on that disk or choose an output_dir on a larger one, then rerun with --resume; "
        "fewer train.keep_checkpoints keep less on disk",
    )


def _save_model(accelerator, model, tokenizer, path: Path) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = path.with_name(f".tmp-{path.name}")
        if tmp.exists():
            shutil.rmtree(tmp)
        accelerator.unwrap_model(model).save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    accelerator.wait_for_everyone()


_TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "comet_ml": ("comet_ml",)}
_TRACKER_EXTRAS = {"comet_ml": "comet"}


def _trackers(cfg: RunConfig) -> list[str]:
    """``train.report_to``, each checked to be installed (Accelerate would drop a missing one with a warning)."""
    import importlib.util

    for name in cfg.train.report_to:
        if not any(importlib.util.find_spec(m) for m in _TRACKER_MODULES.get(name, (name,))):
            raise ConfigError(
                "train.report_to",
                f"the tracker {name!r} is not installed",
                f"pip install 'unikd[{_TRACKER_EXTRAS.get(name, name)}]' (or pip install {name}), "
                "or drop it from train.report_to",
            )
    return list(cfg.train.report_to)


# ---- several processes -------------------------------------------------------------------------------
def _check_process_group(accelerator) -> None:
    """Refuse a launch of several processes that formed no process group: each would train the whole run
    alone, all into one output_dir (plain ``torchrun`` on a CPU without ``train.cpu`` / ``ACCELERATE_USE_CPU``:
    Accelerate only joins CPU processes into a gloo group when told the run is on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and accelerator.num_processes == 1:
        raise ConfigError(
            "train.cpu",
            f"{world} processes were launched (WORLD_SIZE={world}) but they formed no process group, so each "
            "would run the whole training alone into the same output_dir",
            "on a CPU set train.cpu=true (or ACCELERATE_USE_CPU=true) so Accelerate joins them into a gloo group; "
            "on GPUs launch with `accelerate launch` (see examples/accelerate/)",
        )


def _scheduler_steps_per_optimizer_step(accelerator, grad_accum: int) -> int:
    """How often Accelerate's ``AcceleratedScheduler`` steps the wrapped scheduler per optimizer step: once per
    call when it is not tied to the optimizer (the loop calls it every micro-batch), once with ``split_batches``,
    else ``num_processes`` times (it assumes a global batch ``num_processes`` times the single-process one).
    The schedule is sized by this factor so the learning rate reaches its end exactly at the last step."""
    if not accelerator.step_scheduler_with_optimizer:
        return grad_accum
    return 1 if accelerator.split_batches else accelerator.num_processes


def _shard_len(accelerator, batches: int) -> int:
    """Batches per process once Accelerate shards a loader of ``batches``: each process takes every N-th batch,
    the last round padded to a full one (``even_batches``); with ``split_batches`` each batch is split instead."""
    if accelerator.num_processes == 1 or accelerator.split_batches:
        return batches
    return math.ceil(batches / accelerator.num_processes)


def _share_teacher_cache(accelerator, cache: TeacherLogitCache, num_classes: int) -> TeacherLogitCache:
    """One cache file set for all processes: the main process creates it before anyone stores a row (two
    processes creating it at once would truncate each other's memory maps), the others then open it.
    Each process writes the rows of its own shard; the files are shared memory maps, so a later epoch finds
    rows another process stored."""
    if accelerator.num_processes == 1:
        return cache
    # Every process reaches the barrier, whatever it found: a process that opened its cache object after the
    # main process had created the files sees them open already, and skipping the barrier there deadlocked
    # the others in it (seen under load).
    if accelerator.is_main_process and not cache.is_open:
        cache.create(num_classes)
    accelerator.wait_for_everyone()
    if not cache.is_open:
        cache.attach()
    return cache


def _share_across_runs(cfg: RunConfig, cache: TeacherLogitCache, teacher_path: str, train_ds) -> None:
    """train.teacher_cache_dir: the cache reads rows other runs labelled and adds its own, keyed by row content."""
    if not cfg.train.teacher_cache_dir:
        return
    shared = SharedTeacherOutputs(cfg.train.teacher_cache_dir, teacher_path, cfg.teacher.precision)
    columns = [c for c in ("input_ids", "token_type_ids") if c in train_ds.column_names]
    cache.share(shared, [row_key(dict(zip(columns, row))) for row in zip(*(train_ds[c] for c in columns))])


def _freeze_unreached(cfg: RunConfig, accelerator, plan, teacher, student, make_batch) -> None:
    """Freeze the student parameters (and projections) no loss of the plan reaches, before DDP wraps them.

    DDP waits for a gradient of every trainable parameter each step; a parameter the objective never reaches
    (the pooler or LM head under a hidden-state-only plan) makes the second step fail. One probe step on
    the batch ``make_batch()`` collates finds them (those whose gradient stays None), with the RNG forked so the
    run's random stream (MLM masking included) is untouched; under a hard-label weight schedule the last step is probed too (a weight of 0 skips that loss,
    and a linear schedule positive anywhere is positive at an end). Random matching never gets here: its pairs
    change per step, so DDP looks for unused parameters itself. The names come from the main process, so
    every process freezes the same ones. AdamW skips parameters without a gradient, so freezing them changes
    no result."""
    from accelerate.utils import broadcast_object_list

    total = 2  # the ends of every linear schedule: step 0 and the last step
    steps = [0] + ([1] if cfg.plan.hard_label_weight_end is not None else [])
    named = [("student." + n, p) for n, p in student.named_parameters() if p.requires_grad]
    named += [("plan." + n, p) for n, p in plan.named_parameters() if p.requires_grad]
    dtype = _DTYPES[cfg.teacher.precision]
    probe = Distiller(plan, teacher, student, attention=cfg.train.attention_capture, teacher_dtype=dtype)
    plan.to(accelerator.device)
    student.to(accelerator.device)
    try:
        with torch.random.fork_rng():
            batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in make_batch().items()}
            for step in steps:
                loss, _ = probe.step(batch, step=step, total_steps=total)
                loss.backward()
    finally:
        probe.remove()
    unreached = [name for name, p in named if p.grad is None]
    for _, p in named:
        p.grad = None
    unreached = broadcast_object_list([unreached])[0]
    params = dict(named)
    for name in unreached:
        params[name].requires_grad_(False)
    if unreached:
        accelerator.print(f"frozen (no loss of the plan reaches them, DDP would wait for their gradients): {unreached}")


# ---- the run's state -------------------------------------------------------------------------------
@dataclass
class State:
    """Everything the loop reads and moves forward, made once by ``setup``."""

    cfg: RunConfig
    accelerator: Accelerator
    tokenizer: Any
    student: torch.nn.Module  # as prepared (DDP-wrapped where there are several processes)
    plan: DistillationPlan | None  # the bare plan; None = fine-tuning
    distiller: Distiller
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any
    eval_loader: Any
    total_steps: int
    steps_per_epoch: int
    step: int = 0
    best: dict = field(default_factory=lambda: {"score": None, "step": None})
    history: list = field(default_factory=list)
    progress: Any = None
    watch: FiniteWatch | None = None  # the non-finite loss guard (made by setup)
    outcome: dict = field(default_factory=dict)  # extra metrics.json entries: teacher_dev, trivial_baseline
    task: Any = None  # the labelled data's unikd.data.TaskSpec (None for the general stage)
    started: float = field(default_factory=time.perf_counter)  # this attempt's clock (setup included)
    seconds_before: float = 0.0  # earlier attempts' seconds, from the checkpoint resumed

    def wall_s(self) -> float:
        """Seconds this run has cost so far, summed over its attempts (setup, teacher pass, training, evaluation)."""
        return self.seconds_before + time.perf_counter() - self.started

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.output_dir)

    def parameters(self) -> list:
        """What the optimizer trains: the student and the plan's projections."""
        return list(self.student.parameters()) + (list(self.plan.parameters()) if self.plan is not None else [])


def _check_output_dir(cfg: RunConfig, resume: bool) -> dict | None:
    """Never train over a finished or checkpointed run: its results would be silently replaced. A finished
    run under --resume has nothing left to do: its metrics."""
    output_dir = Path(cfg.output_dir)
    if not resume and ((output_dir / "metrics.json").is_file() or _checkpoint_dirs(output_dir)):
        raise ConfigError(
            "output_dir",
            f"{output_dir} already holds a finished or started run",
            "pass --resume to continue it, or choose another output_dir",
        )
    if resume and (output_dir / "metrics.json").is_file():
        return json.loads((output_dir / "metrics.json").read_text())
    return None


def _models(
    cfg: RunConfig, accelerator, teacher_path: str, teacher_config, kind: str, tokenizer, train_ds, collate, task=None
):
    """The teacher (frozen, never wrapped; None for fine-tuning) and the student built from it. For labelled data
    both heads are ``task``'s (its kind, labels and label names; the student copies the teacher's config)."""
    labels: dict = {}
    if task is not None:
        kind = task.model_kind
        _check_head(cfg, teacher_config, task)
        problem = "multi_label_classification" if task.task_type == "multilabel" else None
        labels = dict(num_labels=task.num_labels, label_names=task.label_names, problem_type=problem)
    teacher = load_model(teacher_path, kind, field="teacher.path", **labels)
    if get_adapter(teacher_config).is_decoder and teacher.config.pad_token_id is None:
        teacher.config.pad_token_id = tokenizer.pad_token_id
    calib = collate([train_ds[i] for i in range(min(16, len(train_ds)))])  # for importance init
    student = build_student(teacher, cfg.student.shape, cfg.student.init, calibration_batch=calib)
    if cfg.stage != "general":  # the task's label names in every config a run saves (pipeline() shows them)
        name_labels(teacher.config, cfg.data.task)
        name_labels(student.config, cfg.data.task)
    if cfg.stage == "finetune":
        return None, student
    teacher.eval().requires_grad_(False).to(accelerator.device)
    if cfg.teacher.precision == "int8":  # after the student took its initial weights from it
        quantize_int8(teacher)
    return teacher, student


def _check_head(cfg: RunConfig, teacher_config, task) -> None:
    """A task-stage teacher's head must be the data's: a token-classification teacher for NER data, and so on."""
    if cfg.stage != "task":
        return
    archs = teacher_config.architectures or []
    want = "ForTokenClassification" if task.is_token else "ForSequenceClassification"
    if not any(a.endswith(want) for a in archs):
        raise ConfigError(
            "teacher.path",
            f"{cfg.teacher.path!r} has a {archs} head but the data is a {task.task_type} task (needs *{want})",
            f"fine-tune a teacher on this data first: unikd finetune teacher.path=<base model> {_data_args(cfg)}",
        )
    if teacher_config.num_labels != task.num_labels:
        raise ConfigError(
            "teacher.path",
            f"the teacher has {teacher_config.num_labels} labels but the data has {task.num_labels}",
            "use the teacher fine-tuned on this data (unikd finetune ... its student/ directory)",
        )


def setup(cfg: RunConfig, resume: bool = False, resume_with_changes: bool = False) -> State | dict:
    """Validate, load data and models, prepare them on Accelerate, resume; or the metrics of a finished run.

    A resume must bring the run's own config (``unikd.resume``): other result-changing values are refused unless
    ``resume_with_changes``, which records them in resume_history.json."""
    started = time.perf_counter()
    output_dir = Path(cfg.output_dir)
    teacher_path, teacher_config, kind, plan = validate_run(cfg)
    changes = check_resume_config(output_dir, cfg, resume_with_changes) if resume else {}
    finished = _check_output_dir(cfg, resume)
    if finished is not None:
        if changes:
            raise ConfigError(
                ", ".join(changes),
                f"{output_dir} is a finished run; it was trained with the old values",
                "choose another output_dir to train with the new ones",
            )
        return finished
    _check_precision(cfg)
    accelerator = Accelerator(
        cpu=cfg.train.cpu,
        gradient_accumulation_steps=cfg.train.grad_accum,
        mixed_precision=cfg.train.precision,
        log_with=_trackers(cfg) or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # random matching leaves some projections unused in a step; DDP must not wait for their grads
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=plan is not None and plan.is_dynamic)],
    )
    _check_process_group(accelerator)
    set_seed(cfg.seed)
    if plan is not None:
        plan.seed_projections(cfg.seed)
    if cfg.teacher.precision == "int8" and cfg.stage != "finetune" and accelerator.device.type != "cpu":
        raise ConfigError(
            "teacher.precision",
            f"int8 (dynamic quantization) runs on CPU only; this run is on {accelerator.device.type}",
            "use teacher.precision=bf16 (or fp16) on a GPU",
        )
    if accelerator.device.type == "cpu" and cfg.train.keep_freed_memory:
        keep_freed_memory()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / "config.yaml", dump_config(cfg))

    # Data first (a missing file fails before any weights load), then the models.
    tokenizer = load_tokenizer(teacher_path)
    is_decoder = get_adapter(teacher_config).is_decoder
    if is_decoder and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_ds, eval_ds, collate, task, task_data = _datasets(cfg, tokenizer, is_decoder)
    teacher, student = _models(cfg, accelerator, teacher_path, teacher_config, kind, tokenizer, train_ds, collate, task)
    # the trivial baseline's labels: the labelled rows', before transfer rows join with placeholder labels
    labelled_labels = train_ds["labels"] if task is not None else None
    train_ds = _with_transfer(cfg, train_ds, teacher, tokenizer, task, task_data)
    cache = _teacher_cache(cfg, plan, teacher_path, len(train_ds))
    if cache is not None:
        cache = _share_teacher_cache(accelerator, cache, student.config.num_labels)
        _share_across_runs(cfg, cache, teacher_path, train_ds)
        train_ds = train_ds.add_column("idx", list(range(len(train_ds))))
    if plan is not None and accelerator.num_processes > 1 and not plan.is_dynamic:
        probe_rows = [train_ds[i] for i in range(min(2, len(train_ds)))]
        _freeze_unreached(cfg, accelerator, plan, teacher, student, lambda: collate(probe_rows))
    if cfg.train.group_by_length:
        from unikd.data.sampling import LengthGroupedSampler, row_lengths

        order = {"sampler": LengthGroupedSampler(row_lengths(train_ds), cfg.train.batch_size, cfg.seed)}
    else:
        order = {"shuffle": True, "generator": torch.Generator().manual_seed(cfg.seed)}
    train_loader = DataLoader(train_ds, batch_size=cfg.train.batch_size, collate_fn=collate, **order)
    eval_loader = DataLoader(eval_ds, batch_size=cfg.train.eval_batch_size, collate_fn=collate) if eval_ds else None
    optimizer = _optimizer(cfg, student, plan)
    # Steps from this process's shard of the batches (what the prepared loader will hold), known before prepare so
    # the scheduler goes into the same prepare call (DeepSpeed takes model, optimizer and scheduler at once).
    shard_batches = _shard_len(accelerator, len(train_loader))
    steps_per_epoch = math.ceil(shard_batches / cfg.train.grad_accum)
    total_steps = cfg.train.max_steps or max(1, int(cfg.train.epochs * steps_per_epoch))
    per_step = _scheduler_steps_per_optimizer_step(accelerator, cfg.train.grad_accum)
    scheduler = get_scheduler(
        cfg.optim.schedule,
        optimizer,
        num_warmup_steps=int(cfg.optim.warmup_ratio * total_steps) * per_step,
        num_training_steps=total_steps * per_step,
    )
    student.train()
    student, optimizer, train_loader, scheduler = accelerator.prepare(student, optimizer, train_loader, scheduler)
    if len(train_loader) != shard_batches:  # Accelerate sharded differently than _shard_len says: a wrong schedule
        raise RuntimeError(f"prepared loader has {len(train_loader)} batches per process, expected {shard_batches}")
    plan_fn = None
    if plan is not None:
        # Only a plan with projections has anything to synchronize; DDP refuses a module without parameters.
        plan_fn = accelerator.prepare(plan) if any(True for _ in plan.parameters()) else plan.to(accelerator.device)
    eval_loader = accelerator.prepare(eval_loader) if eval_loader is not None else None
    outcome = _check_teacher(cfg, accelerator, teacher, teacher_path, task, labelled_labels, eval_ds, eval_loader)
    distiller = Distiller(
        plan,
        teacher,
        student,
        attention=cfg.train.attention_capture,
        teacher_dtype=_DTYPES[cfg.teacher.precision],
        teacher_cache=cache,
        plan_fn=plan_fn,
    )
    state = State(
        cfg,
        accelerator,
        tokenizer,
        student,
        plan,
        distiller,
        optimizer,
        scheduler,
        train_loader,
        eval_loader,
        total_steps,
        steps_per_epoch,
        watch=FiniteWatch(plan.config if plan is not None else None),
        outcome=outcome,
        started=started,
    )
    state.task = task
    if cache is not None:
        outcome["teacher_pass"] = _teacher_pass(cfg, accelerator, distiller, train_ds, collate)
    _resume(state, resume)
    if accelerator.is_main_process:
        record_resume(output_dir, state.step, changes)
    accelerator.init_trackers("unikd", config={"stage": cfg.stage, "seed": cfg.seed})
    state.progress = _progress(cfg, accelerator, total_steps, state.step)
    return state


@torch.inference_mode()
def _teacher_pass(cfg: RunConfig, accelerator, distiller: Distiller, train_ds, collate) -> dict:
    """The teacher's logits of every training row into the cache before the first step: rows sorted by length
    (little padding), batches of train.eval_batch_size (no gradients, so larger than the training batch), each
    process a share; rows an earlier, killed pass stored are skipped. Returns rows, seconds and rows/s."""
    from unikd.data.sampling import row_lengths

    lengths = row_lengths(train_ds)
    reused = 0
    if accelerator.is_main_process:  # rows another run labelled (train.teacher_cache_dir); the memory maps are shared
        reused = distiller.cache.fill_from_shared(list(range(len(train_ds))))
        distiller.cache.flush()
    accelerator.wait_for_everyone()
    todo = distiller.cache.missing(sorted(range(len(train_ds)), key=lengths.__getitem__))
    # Every process reads the same list before any writes to the shared memory maps: without this barrier a fast
    # process stored its share while another was still reading, which then split a shorter list, left rows
    # unlabelled (computed again in training) and under-reported the pass (CI saw 16 of 32 rows).
    accelerator.wait_for_everyone()
    mine = todo[accelerator.process_index :: accelerator.num_processes]
    size = max(cfg.train.eval_batch_size, cfg.train.batch_size)
    bar = None
    if cfg.train.progress and accelerator.is_local_main_process and mine:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc="teacher pass", unit="rows", dynamic_ncols=True)
    start = time.perf_counter()
    for first in range(0, len(mine), size):
        rows = mine[first : first + size]
        batch = collate([train_ds[i] for i in rows])
        batch = {k: v.to(accelerator.device) for k, v in model_inputs(batch).items()}
        distiller.capture_teacher(batch, torch.tensor(rows, device=accelerator.device))  # stores the rows
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    distiller.cache.flush()
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - start
    rate = len(todo) / seconds if todo and seconds > 0 else None
    if todo:
        accelerator.print(f"teacher pass: {len(todo)} rows in {seconds:.1f} s ({rate or 0.0:.0f} rows/s)")
    if reused:
        accelerator.print(f"teacher pass: {reused} rows from {cfg.train.teacher_cache_dir}")
    out = {"rows": len(todo), "seconds": round(seconds, 3), "rows_per_s": round(rate, 1) if rate else None}
    return {**out, "reused": reused} if cfg.train.teacher_cache_dir else out


def _check_precision(cfg: RunConfig) -> None:
    """fp16 on a CPU: Accelerate would train in fp32 without a word, so refuse it (bf16 autocasts on a CPU: it
    runs). Asked of PartialState before the Accelerator exists: a refused precision must not stick to the process."""
    from accelerate import PartialState

    if cfg.train.precision == "fp16" and PartialState().device.type == "cpu":
        raise ConfigError(
            "train.precision",
            "fp16 mixed precision needs a GPU; on this CPU Accelerate would silently train in fp32",
            "use train.precision=bf16 (CPU autocast) or train.precision=no, or run on a GPU",
        )


def _predict(model, loader, accelerator, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of ``model`` over ``loader`` (gathered across processes)."""
    preds, labels = [], []
    for batch in loader:
        out = model(**{k: v for k, v in batch.items() if k not in ("labels", "idx")})
        logits, y = out.logits, batch["labels"]
        if logits.dim() == 3:  # token level: pad every batch to one length, so batches and processes concatenate
            pad = max_length - logits.shape[1]
            logits = torch.nn.functional.pad(logits, (0, 0, 0, pad))
            y = torch.nn.functional.pad(y, (0, pad), value=-100)
        logits, y = accelerator.gather_for_metrics((logits, y))
        preds.append(logits.float().cpu())
        labels.append(y.cpu())
    return torch.cat(preds), torch.cat(labels)


@torch.no_grad()
def _check_teacher(
    cfg: RunConfig, accelerator, teacher, teacher_path, task, train_labels, eval_ds, eval_loader
) -> dict:
    """metrics.json's ``trivial_baseline`` (task and finetune runs) and ``teacher_dev`` (task runs); a task run's
    teacher no better than the baseline stops the run here (``guards.check_teacher``) unless teacher.allow_weak.

    The teacher's dev score is read from the unikd fine-tune that wrote it when that run scored the same dev rows
    (``guards.stored_teacher_score``), else measured with one pass over dev."""
    if cfg.stage == "general" or eval_loader is None:
        return {}
    baseline = trivial_baseline(task, train_labels, eval_ds["labels"], cfg.eval.metric)
    if cfg.stage != "task":
        return {"trivial_baseline": baseline}
    teacher_dev = stored_teacher_score(teacher_path, cfg)
    if teacher_dev is None:
        preds, labels = _predict(teacher, eval_loader, accelerator, cfg.data.max_length)
        teacher_dev = {
            **compute_task_metrics(task, preds.numpy(), labels.numpy(), cfg.eval.metric),
            "source": "evaluated",
        }
    check_teacher(teacher_dev, baseline, allow_weak=cfg.teacher.allow_weak, teacher=cfg.teacher.path)
    return {"teacher_dev": teacher_dev, "trivial_baseline": baseline}


def _step_dirs(output_dir: Path) -> list[Path]:
    """Every ``checkpoints/step-N`` directory, oldest first, whole or not (atomic renames leave no partial one, but
    a disk can still corrupt or a user delete a file)."""
    root = output_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    steps = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(steps, key=lambda p: int(p.name[5:]))


def _resume(state: State, resume: bool) -> None:
    """Restore model/optimizer/scheduler/RNG from the newest checkpoint that loads whole, and where the loop stood.

    A checkpoint with a missing or unreadable state json, model, optimizer or RNG state is skipped with a warning
    for the one before it; none loadable is an error (an RNG state Accelerate cannot read would otherwise be
    skipped silently, and the run would continue with other numbers)."""
    if not resume:
        return
    accelerator, problems = state.accelerator, []
    for ckpt in reversed(_step_dirs(state.output_dir)):
        problem = checkpoint_problem(ckpt, accelerator.process_index)
        if problem is None:
            try:
                accelerator.load_state(str(ckpt))
            except Exception as exc:  # noqa: BLE001 - any unreadable part: try the checkpoint before it
                problem = f"it does not load ({type(exc).__name__}: {exc})"
        if problem is None:
            saved = json.loads((ckpt / "unikd_state.json").read_text())
            state.step, state.best, state.history = saved["step"], saved["best"], saved.get("history", [])
            state.seconds_before = float(saved.get("wall_s") or 0.0)  # checkpoints before it was recorded: none
            accelerator.print(f"resumed from {ckpt} at step {state.step}")
            return
        problems.append(f"{ckpt.name}: {problem}")
        warn(f"cannot resume from {ckpt} ({problem}); trying the checkpoint before it")
    if problems:
        raise ConfigError(
            "output_dir",
            f"no checkpoint in {state.output_dir / CHECKPOINTS} can be resumed from ({'; '.join(problems)})",
            "delete that checkpoints folder to start again from step 0, or choose another output_dir",
        )
    accelerator.print(f"--resume: no checkpoint in {state.output_dir / CHECKPOINTS}, starting from step 0")


# ---- the loop --------------------------------------------------------------------------------------
def train_loop(state: State, stop_after: int | None = None) -> bool:
    """Train until ``total_steps`` (True) or until ``stop_after`` steps (False: interrupted, resumable)."""
    cfg, accelerator = state.cfg, state.accelerator
    epoch = state.step // max(1, state.steps_per_epoch)
    micro_done = (state.step % max(1, state.steps_per_epoch)) * cfg.train.grad_accum  # resume: batches seen
    samples, t0 = 0, time.perf_counter()
    while state.step < state.total_steps:
        state.train_loader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(state.train_loader, micro_done) if micro_done else state.train_loader
        micro_done = 0
        for batch in loader:
            with accelerator.accumulate(state.student):
                loss, logs = state.distiller.step(batch, step=state.step, total_steps=state.total_steps)
                state.watch.observe(logs, state.step, state.total_steps)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.optim.max_grad_norm:
                    accelerator.clip_grad_norm_(state.parameters(), cfg.optim.max_grad_norm)
                state.optimizer.step()
                state.scheduler.step()
                state.optimizer.zero_grad(set_to_none=True)
            samples += batch["input_ids"].shape[0]  # this process's rows; summed over processes at log steps
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            if _guard_due(state):
                _guard(state)
            if state.step % cfg.train.log_every == 0 or state.step == state.total_steps:
                _log(state, logs, samples, max(time.perf_counter() - t0, 1e-9))
                samples, t0 = 0, time.perf_counter()
            if state.progress:
                state.progress.update(1)
            if _is_eval_step(state):
                _evaluate_and_keep_best(state)
            if cfg.train.save_every and state.step % cfg.train.save_every == 0 and state.step < state.total_steps:
                _guard(state, weights=True)  # a checkpoint is only ever written of finite weights
                _save_checkpoint(
                    accelerator,
                    state.output_dir,
                    state.step,
                    {"best": state.best, "history": state.history, "wall_s": state.wall_s()},
                    cfg.train.keep_checkpoints,
                )
            if stop_after is not None and state.step >= stop_after and state.step < state.total_steps:
                return False
            if state.step >= state.total_steps:
                break
        epoch += 1
    return True


def _guard_due(state: State) -> bool:
    """When the non-finite watch is read: every step on a CPU (free), else where the loop syncs anyway (log, eval and
    checkpoint steps, the last step), so a GPU never waits on it."""
    cfg = state.cfg.train
    return (
        state.accelerator.device.type == "cpu"
        or state.step % cfg.log_every == 0
        or state.step == state.total_steps
        or bool(cfg.save_every and state.step % cfg.save_every == 0)
        or _is_eval_step(state)
    )


def _guard(state: State, weights: bool = False) -> None:
    """Stop with ``TrainingError`` if a loss term went non-finite (or, with ``weights``, any trained weight is)."""

    def fix() -> str:
        ckpts = _checkpoint_dirs(state.output_dir)
        kept = (
            f"the last good checkpoint is {ckpts[-1]}: resume from it with --resume --resume-with-changes"
            if ckpts
            else "no checkpoint was kept (train.save_every keeps one)"
        )
        return (
            f"lower optim.lr (now {state.cfg.optim.lr:g}) or that term's weight, or train without fp16; no student/ "
            f"or metrics.json was written; {kept}"
        )

    state.watch.check(fix)
    if weights and not weights_finite(state.parameters()):
        raise TrainingError("weights", f"the student's weights are not finite after step {state.step}", fix())


def _log(state: State, logs: dict, samples: int, seconds: float) -> None:
    """Losses averaged over the processes, samples/s summed over them (one collective, at log steps only)."""
    accelerator = state.accelerator
    names = list(logs)
    values = [torch.as_tensor(logs[k]).detach().float().reshape(1).to(accelerator.device) for k in names]
    values = torch.cat([*values, torch.tensor([float(samples)], device=accelerator.device)])
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, reduction="sum")
    values = values.cpu()
    scalars = {f"loss/{k}": float(values[i]) / accelerator.num_processes for i, k in enumerate(names)}
    scalars.update({"lr": state.scheduler.get_last_lr()[0], "samples_per_s": float(values[-1]) / seconds})
    state.accelerator.log(scalars, step=state.step)
    if state.progress:
        state.progress.set_postfix(loss=f"{scalars['loss/total']:.4f}", lr=f"{scalars['lr']:.2e}")


def _is_eval_step(state: State) -> bool:
    every = state.cfg.train.eval_every
    return state.eval_loader is not None and (
        state.step == state.total_steps or bool(every and state.step % every == 0)
    )


@torch.no_grad()
def evaluate(state: State) -> dict[str, float]:
    """Task metrics on the dev set (task/finetune), or the held-out LM/KD loss (general)."""
    model, accelerator, general = state.student, state.accelerator, state.cfg.stage == "general"
    model.eval()
    if general:
        losses = [
            accelerator.gather_for_metrics(state.distiller.evaluate_loss(batch).detach().reshape(1))
            for batch in state.eval_loader
        ]
        model.train()
        return {"eval_loss": float(torch.cat(losses).mean())}
    preds, labels = _predict(model, state.eval_loader, accelerator, state.cfg.data.max_length)
    model.train()
    return compute_task_metrics(state.task, preds.numpy(), labels.numpy(), state.cfg.eval.metric)


def _evaluate_and_keep_best(state: State) -> None:
    metrics = evaluate(state)
    state.accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=state.step)
    state.history.append({"step": state.step, **metrics})
    if state.cfg.stage != "general":
        key = metrics.get("score", -metrics.get("eval_loss", 0.0))
    else:
        key = -metrics["eval_loss"]
    if state.best["score"] is None or key > state.best["score"]:
        state.best = {"score": key, "step": state.step, "metrics": metrics}
        _save_model(state.accelerator, state.student, state.tokenizer, state.output_dir / "best")


# ---- the end ---------------------------------------------------------------------------------------
def finish(state: State, completed: bool = True) -> dict:
    """Close the loop's resources; a completed run saves the student, its projections and metrics.json."""
    accelerator = state.accelerator
    if state.progress:
        state.progress.close()
    state.distiller.remove()
    if not completed:
        accelerator.end_training()
        return {"stopped_at": state.step}
    # Outputs: the student alone (projections live in checkpoints and projections.pt only), config, metrics.
    _save_model(accelerator, state.student, state.tokenizer, state.output_dir / "student")
    if state.plan is not None and accelerator.is_main_process:
        with atomic_path(state.output_dir / "projections.pt") as tmp:
            torch.save(state.plan.state_dict(), tmp)
    final = state.history[-1] if state.history else {}
    if not final and state.cfg.stage != "general":  # never a task result without a score (_datasets refuses it)
        raise DataError("data.data_dir", "the run was never evaluated on dev", "give it a dev split with rows")
    params = count_parameters(accelerator.unwrap_model(state.student))
    result = {
        "stage": state.cfg.stage,
        "task": state.cfg.data.task or (state.task.name if state.task is not None else None),
        "steps": state.step,
        "final": {k: v for k, v in final.items() if k != "step"},
        "best": state.best.get("metrics"),
        "best_step": state.best.get("step"),
        "parameters": params.total,
        "parameters_non_embedding": params.non_embedding,
        "wall_s": state.wall_s(),  # summed over resumed attempts: the study reads it for runs trained elsewhere
        **state.outcome,
        "history": state.history,
    }
    if accelerator.is_main_process:
        atomic_write_json(state.output_dir / "metrics.json", result)
        _hf_outputs(state, result)
    # Last: it ends the trackers and tears down the process group every save above waits on.
    accelerator.end_training()
    return result


def _hf_outputs(state: State, result: dict) -> None:
    """What the HF ecosystem reads beside the weights: a sentence-transformers teacher's modules, the model card."""
    import shlex

    cfg, student_dir = state.cfg, state.output_dir / "student"
    teacher_path = resolve_model_path(cfg.teacher.path, "teacher.path")
    config = state.accelerator.unwrap_model(state.student).config
    copy_sentence_transformers_modules(teacher_path, student_dir, config.hidden_size)
    command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    card = model_card(cfg, result, teacher_path=teacher_path, student_config=config, command=command)
    write_model_card(student_dir, card)


def run(
    cfg: RunConfig, *, resume: bool = False, stop_after: int | None = None, resume_with_changes: bool = False
) -> dict:
    """Train according to ``cfg``; returns the final metrics (also written to metrics.json).

    ``stop_after`` ends the loop after that many steps without finishing the run (tests use it to
    simulate an interruption; the checkpoint written at that step is what ``resume`` picks up).
    ``resume_with_changes``: a resume may change result-changing fields (recorded in resume_history.json).
    A non-finite loss raises ``TrainingError`` and writes neither student/ nor metrics.json.
    A config with chained steps (``then``) trains them in order (``unikd.chain``).
    """
    if cfg.then:
        from unikd.chain import run_chain

        return run_chain(cfg, run, resume=resume, stop_after=stop_after, resume_with_changes=resume_with_changes)
    state = setup(cfg, resume, resume_with_changes)
    if isinstance(state, dict):
        return state  # finished already: nothing to resume
    try:
        completed = train_loop(state, stop_after)
        if completed:
            _guard(state, weights=True)
    except TrainingError:
        finish(state, completed=False)  # hooks off, trackers closed; nothing saved
        raise
    return finish(state, completed=completed)


def _progress(cfg: RunConfig, accelerator, total: int, start: int):
    if not cfg.train.progress or not accelerator.is_local_main_process:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=f"unikd {cfg.stage}", dynamic_ncols=True)
