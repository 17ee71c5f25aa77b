"""The run, top to bottom: ``setup(cfg)`` -> ``train_loop(state)`` -> ``finish(state)``; ``run`` calls the three.

``setup`` is a list of named steps, in the order that keeps a run's random stream what it always was (the seed,
the projections' weights, the data, the student built from the teacher, the loaders' generator): changing the order
changes the numbers. The KD step itself is ``Distiller.step``, the same call the benchmark times.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from transformers import get_scheduler

from unikd.allocator import keep_freed_memory
from unikd.config import RunConfig, dump_config
from unikd.distiller import Distiller
from unikd.errors import ConfigError, TrainingError
from unikd.families import get_adapter
from unikd.guards import FiniteWatch, weights_finite
from unikd.hub import name_labels
from unikd.initialization import build_student
from unikd.io import atomic_write_text
from unikd.models import load_model, load_tokenizer, quantize_int8
from unikd.plan import DistillationPlan
from unikd.teacher_cache import open_for_run, teacher_pass
from unikd.train import checkpoint, distributed, inputs
from unikd.train.evaluation import check_teacher, evaluate_and_keep_best, is_eval_step
from unikd.train.outputs import save_results
from unikd.train.validate import check_head, check_trackers, validate_run


# ---- the run's state -------------------------------------------------------------------------------
@dataclass(kw_only=True)
class State:
    """Everything the loop reads and moves forward, made once by ``setup`` (by keyword)."""

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
    task: Any = None  # the labelled data's unikd.data.TaskSpec (None for the general stage)
    teacher: Any = None  # the frozen teacher (None for a fine-tune): generation evaluation scores samples with it
    task_data: Any = None  # load_inputs' raw rows (causal-LM data: the tokenized dev rows generation prompts with)
    step: int = 0
    best: dict = field(default_factory=lambda: {"score": None, "step": None})
    history: list = field(default_factory=list)
    progress: Any = None
    watch: FiniteWatch | None = None  # the non-finite loss guard (made by setup)
    outcome: dict = field(default_factory=dict)  # extra metrics.json entries: teacher_dev, trivial_baseline
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


# ---- set-up -----------------------------------------------------------------------------------------
def setup(cfg: RunConfig, resume: bool = False, resume_with_changes: bool = False) -> State | dict:
    """Validate, load data and models, prepare them on Accelerate, resume; or the metrics of a finished run.

    A resume must bring the run's own config (``checkpoint.check_resume_config``): other result-changing values are
    refused unless ``resume_with_changes``, which records them in resume_history.json."""
    started = time.perf_counter()
    output_dir = Path(cfg.output_dir)
    teacher_path, teacher_config, kind, plan = validate_run(cfg)
    changes = checkpoint.check_resume_config(output_dir, cfg, resume_with_changes) if resume else {}
    finished = checkpoint.finished_metrics(cfg, resume, changes)
    if finished is not None:
        return finished
    accelerator = _accelerator(cfg, plan)
    # Data first (a missing file fails before any weights load), then the models.
    tokenizer = _tokenizer(teacher_path, teacher_config)
    data = inputs.load_inputs(cfg, tokenizer, get_adapter(teacher_config).is_decoder)
    teacher, student, embeddings = _models(cfg, accelerator, teacher_path, teacher_config, kind, tokenizer, data)
    # the trivial baseline's labels: the labelled rows', before transfer rows join with placeholder labels
    labelled_labels = data.train["labels"] if data.task is not None and "labels" in data.train.column_names else None
    train_ds, cache, generated = _train_rows(
        cfg, accelerator, data, teacher, teacher_path, tokenizer, embeddings, student
    )
    if plan is not None and accelerator.num_processes > 1 and not plan.is_dynamic:
        distributed.freeze_unreached(cfg, accelerator, plan, teacher, student, _probe(train_ds, data.collate))
    train_loader, eval_loader = inputs.loaders(cfg, train_ds, data.eval, data.collate)
    optimizer = inputs.optimizer(cfg, student, plan)
    steps = _schedule(cfg, accelerator, optimizer, len(train_loader))
    student, optimizer, train_loader, eval_loader, wrapped_plan = _prepare(
        accelerator, student, optimizer, train_loader, eval_loader, steps, plan
    )
    outcome = check_teacher(
        cfg, accelerator, teacher, teacher_path, data.task, labelled_labels, data.eval, eval_loader, data.rows
    )
    state = State(
        cfg=cfg,
        accelerator=accelerator,
        tokenizer=tokenizer,
        student=student,
        plan=plan,
        distiller=_distiller(cfg, plan, teacher, student, cache, wrapped_plan, tokenizer),
        optimizer=optimizer,
        scheduler=steps.scheduler,
        train_loader=train_loader,
        eval_loader=eval_loader,
        total_steps=steps.total,
        steps_per_epoch=steps.per_epoch,
        task=data.task,
        teacher=teacher,
        task_data=data.rows,
        watch=FiniteWatch(plan.config if plan is not None else None),
        outcome=outcome,
        started=started,
    )
    outcome.update(generated)  # the teacher's generations (sequence-level KD): their rows, seconds, tokens/s
    if cache is not None:
        outcome["teacher_pass"] = teacher_pass(cfg, accelerator, state.distiller, train_ds, data.collate)
    _start(state, resume, changes)
    return state


def _accelerator(cfg: RunConfig, plan: DistillationPlan | None) -> Accelerator:
    """The run's Accelerator, seeded, on a machine that can run what the config asks; config.yaml written."""
    output_dir = Path(cfg.output_dir)
    accelerator = Accelerator(
        cpu=cfg.train.cpu,
        gradient_accumulation_steps=cfg.train.grad_accum,
        mixed_precision=cfg.train.precision,
        log_with=check_trackers(cfg) or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # random matching leaves some projections unused in a step; DDP must not wait for their grads
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=plan is not None and plan.is_dynamic)],
    )
    distributed.check_process_group(accelerator)
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
    return accelerator


def _tokenizer(teacher_path: str, teacher_config):
    """The teacher's tokenizer; a decoder's pads with its EOS token when it has no pad token."""
    tokenizer = load_tokenizer(teacher_path)
    if get_adapter(teacher_config).is_decoder and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _models(cfg: RunConfig, accelerator, teacher_path: str, teacher_config, kind: str, tokenizer, data):
    """The teacher (frozen, never wrapped; None for fine-tuning), the student built from it and its input embeddings
    (what augmentation's word neighbours read; a fine-tune's too). For labelled data both heads are the task's (its
    kind, labels and label names; the student copies the teacher's config)."""
    labels: dict = {}
    task = data.task
    if task is not None:
        kind = task.model_kind
        check_head(cfg, teacher_config, task)
        problem = "multi_label_classification" if task.task_type == "multilabel" else None
        if task.task_type not in ("causal-lm", "extractive-qa"):  # a decoder keeps its LM head, QA its span head
            labels = dict(num_labels=task.num_labels, label_names=task.label_names, problem_type=problem)
    teacher = load_model(teacher_path, kind, field="teacher.path", **labels)
    if get_adapter(teacher_config).is_decoder and teacher.config.pad_token_id is None:
        teacher.config.pad_token_id = tokenizer.pad_token_id
    calib = None  # importance and prune rank on student.init.calibration_texts training rows
    if cfg.student.init.strategy in ("importance", "prune"):
        calib = data.collate([data.train[i] for i in range(min(cfg.student.init.calibration_texts, len(data.train)))])
    student = build_student(teacher, cfg.student.shape, cfg.student.init, calibration_batch=calib)
    ensemble = None
    if cfg.teacher.ensemble:  # more teachers (checked by validate_run): their mean replaces the first's logits
        from unikd.ensemble import attach, member_paths

        ensemble = attach(cfg, teacher, member_paths(cfg), kind, getattr(task, "task_type", None), **labels)
    if cfg.stage != "general":  # the task's label names in every config a run saves (pipeline() shows them)
        name_labels(teacher.config, cfg.data.task)
        name_labels(student.config, cfg.data.task)
    embeddings = teacher.get_input_embeddings().weight
    if cfg.stage == "finetune":
        return None, student, embeddings.detach().clone() if cfg.data.transfer else None
    teacher.eval().requires_grad_(False).to(accelerator.device)
    if ensemble is not None:
        ensemble.to(accelerator.device)
    if cfg.teacher.precision == "int8":  # after the student took its initial weights from it
        quantize_int8(teacher)
        for member in ensemble.members if ensemble is not None else []:
            quantize_int8(member)
    return teacher, student, teacher.get_input_embeddings().weight


def _train_rows(cfg: RunConfig, accelerator, data, teacher, teacher_path: str, tokenizer, embeddings, student):
    """The rows the loop trains on: the labelled ones, the transfer rows after them, the teacher's generations in
    place of the responses (sequence-level KD); with the logits cache opened over them and the generation record."""
    train_ds = inputs.with_transfer(cfg, data.train, embeddings, tokenizer, data.task, data.rows)
    train_ds, generated = _teacher_responses(cfg, teacher, teacher_path, tokenizer, train_ds)
    ensemble = None
    if cfg.teacher.ensemble and cfg.train.teacher_cache:  # an ensemble's outputs are cached apart (unikd.ensemble)
        from unikd.ensemble import cache_key

        ensemble = cache_key(cfg)
    if cfg.train.teacher_cache and cfg.stage == "task" and getattr(data.task, "task_type", None) == "causal-lm":
        from unikd.token_cache import open_token_cache

        vocab = teacher.config.vocab_size
        cache, train_ds = open_token_cache(cfg, accelerator, teacher_path, train_ds, tokenizer, vocab, ensemble)
    else:
        cache, train_ds = open_for_run(cfg, accelerator, teacher_path, train_ds, student.config.num_labels, ensemble)
    return train_ds, cache, generated


def _teacher_responses(cfg: RunConfig, teacher, teacher_path: str, tokenizer, train_ds):
    """``plan.policy: sequence_kd``: the training rows on the teacher's generations (``unikd.sequence_kd``) and the
    generation's record for metrics.json; else the rows as they are."""
    if cfg.stage != "task" or cfg.plan.policy != "sequence_kd":
        return train_ds, {}
    from unikd.sequence_kd import teacher_responses

    rows, record = teacher_responses(cfg, teacher, teacher_path, tokenizer, train_ds)
    return rows, {"teacher_generations": record}


def _distiller(cfg: RunConfig, plan, teacher, student, cache, wrapped_plan, tokenizer) -> Distiller:
    """The KD step's owner: the plan, both captures, the logits cache and (on-policy KD) the student's sampling."""
    return Distiller(
        plan,
        teacher,
        student,
        attention=cfg.train.attention_capture,
        teacher_dtype=distributed.TEACHER_DTYPES[cfg.teacher.precision],
        teacher_cache=cache,
        wrapped_plan=wrapped_plan,
        policy=_policy(cfg, tokenizer),
        fused_chunk=cfg.train.logits_chunk_tokens if cfg.train.fused_output_projection and plan is not None else None,
    )


def _policy(cfg: RunConfig, tokenizer):
    """GKD's on-policy batches (``plan.policy: on_policy``), else None."""
    if cfg.stage != "task" or cfg.plan.policy != "on_policy":
        return None
    from unikd.generation import OnPolicy

    return OnPolicy(cfg.plan.on_policy_lambda, cfg.plan.sampling, tokenizer, cfg.seed)


def _probe(train_ds, collate):
    """What ``freeze_unreached`` probes with: the first two training rows, collated when it asks."""
    rows = [train_ds[i] for i in range(min(2, len(train_ds)))]
    return lambda: collate(rows)


@dataclass
class _Steps:
    total: int
    per_epoch: int
    shard_batches: int  # this process's batches per epoch, what the prepared loader must hold
    scheduler: Any


def _schedule(cfg: RunConfig, accelerator, optimizer, batches: int) -> _Steps:
    """Steps from this process's shard of the batches (what the prepared loader will hold), known before prepare so
    the scheduler goes into the same prepare call (DeepSpeed takes model, optimizer and scheduler at once)."""
    shard_batches = distributed.shard_len(accelerator, batches)
    per_epoch = math.ceil(shard_batches / cfg.train.grad_accum)
    total = cfg.train.max_steps or max(1, int(cfg.train.epochs * per_epoch))
    per_step = distributed.scheduler_steps_per_optimizer_step(accelerator, cfg.train.grad_accum)
    scheduler = get_scheduler(
        cfg.optim.schedule,
        optimizer,
        num_warmup_steps=int(cfg.optim.warmup_ratio * total) * per_step,
        num_training_steps=total * per_step,
    )
    return _Steps(total, per_epoch, shard_batches, scheduler)


def _prepare(accelerator, student, optimizer, train_loader, eval_loader, steps: _Steps, plan):
    """Accelerate's prepare of the student, optimizer, loaders, scheduler and (when it has projections) the plan;
    returns (student, optimizer, train loader, eval loader, the plan as the step calls it)."""
    student.train()
    student, optimizer, train_loader, steps.scheduler = accelerator.prepare(
        student, optimizer, train_loader, steps.scheduler
    )
    if len(train_loader) != steps.shard_batches:  # Accelerate sharded differently than shard_len says
        raise RuntimeError(
            f"prepared loader has {len(train_loader)} batches per process, expected {steps.shard_batches}"
        )
    wrapped_plan = None
    if plan is not None:
        # Only a plan with projections has anything to synchronize; DDP refuses a module without parameters.
        wrapped_plan = (
            accelerator.prepare(plan) if any(True for _ in plan.parameters()) else plan.to(accelerator.device)
        )
    eval_loader = accelerator.prepare(eval_loader) if eval_loader is not None else None
    return student, optimizer, train_loader, eval_loader, wrapped_plan


def _start(state: State, resume: bool, changes: dict) -> None:
    """Where the loop starts: the newest whole checkpoint under --resume (its changes recorded), trackers, the bar."""
    cfg, accelerator = state.cfg, state.accelerator
    if resume:
        checkpoint.resume_from_checkpoint(state)
    if accelerator.is_main_process:
        checkpoint.record_resume(state.output_dir, state.step, changes)
    accelerator.init_trackers("unikd", config={"stage": cfg.stage, "seed": cfg.seed})
    if cfg.train.progress and accelerator.is_local_main_process:
        from tqdm.auto import tqdm

        state.progress = tqdm(
            total=state.total_steps, initial=state.step, desc=f"unikd {cfg.stage}", dynamic_ncols=True
        )


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
            if is_eval_step(state):
                evaluate_and_keep_best(state)
            if cfg.train.save_every and state.step % cfg.train.save_every == 0 and state.step < state.total_steps:
                _guard(state, weights=True)  # a checkpoint is only ever written of finite weights
                checkpoint.save_checkpoint(
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
        or is_eval_step(state)
    )


def _guard(state: State, weights: bool = False) -> None:
    """Stop with ``TrainingError`` if a loss term went non-finite (or, with ``weights``, any trained weight is)."""

    def fix() -> str:
        ckpts = checkpoint.step_dirs(state.output_dir, whole=True)
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
    result = save_results(state)
    # Last: it ends the trackers and tears down the process group every save above waits on.
    accelerator.end_training()
    return result


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
        from unikd.chain import check_one_process, run_chain

        check_one_process()
        validate_run(cfg)  # every step, before step 1 trains
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
