"""One distillation (or fine-tuning) run, top to bottom, on Accelerate.

`accelerate launch -m unikd.cli distill run.yaml` gives DDP/FSDP/DeepSpeed on several GPUs and nodes
with this same file. The stages differ only in data and in whether a teacher is present:

- general:  raw text, MLM (encoders) / CLM (decoders) batches, teacher features, optional LM loss;
- task:     labelled GLUE data, teacher logits + intermediate knowledge + hard labels;
- finetune: labelled data, hard labels only (the no-KD baseline, or the teacher itself).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoTokenizer, get_scheduler

from unikd import data as D
from unikd.allocator import keep_freed_memory
from unikd.capture import FeatureCapture
from unikd.config import RunConfig, dump_config, resolve_model_path
from unikd.errors import ConfigError
from unikd.families import get_adapter, model_spec
from unikd.io import atomic_write_json, atomic_write_text
from unikd.metrics import compute_metrics
from unikd.models import load_model, model_kind_for, quantize_int8
from unikd.plan import DistillationPlan
from unikd.student import build_student, count_parameters, student_config
from unikd.teacher_cache import TeacherLogitCache

CHECKPOINTS = "checkpoints"
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": None}


# ---- set-up helpers (everything here runs before the first step) ---------------------------------
def validate_run(cfg: RunConfig):
    """Resolve paths and validate the plan against model shapes, from configs only (no weights yet)."""
    teacher_path = resolve_model_path(cfg.teacher.path, "teacher.path") if cfg.teacher.path else None
    if cfg.stage in ("task", "finetune"):
        D.resolve_task(cfg.data.task)
    teacher_config = AutoConfig.from_pretrained(teacher_path)
    kind = model_kind_for(cfg.stage, teacher_config)
    if cfg.stage == "task":
        archs = teacher_config.architectures or []
        if not any(a.endswith("ForSequenceClassification") for a in archs):
            raise ConfigError(
                "teacher.path", f"{cfg.teacher.path!r} has no fine-tuned task head ({archs or 'no architectures'})",
                f"fine-tune it first: unikd finetune teacher.path={cfg.teacher.path} data.task={cfg.data.task}, "
                "then use that run's student/ directory as teacher.path")
    plan = None
    if cfg.stage != "finetune":
        s_config = student_config(teacher_config, cfg.student.shape)
        plan = DistillationPlan(cfg.plan, model_spec(teacher_config), model_spec(s_config),
                                token_level_logits=cfg.stage == "general")
        if kind == "base" and (cfg.plan.hard_label_weight > 0 or any(t.knowledge == "logits" for t in cfg.plan.terms)):
            raise ConfigError(
                "plan", f"the teacher {cfg.teacher.path!r} has no LM head, so general-stage logits KD and the LM "
                "loss are unavailable", "drop the logits terms and set plan.hard_label_weight=0 (intermediate "
                "knowledge only, as MiniLM does), or use a teacher with an MLM/CLM head")
    return teacher_path, teacher_config, kind, plan


def _cache_dir() -> Path:
    """Tokenized datasets are cached here, keyed by tokenizer and settings (UNIKD_CACHE overrides)."""
    return Path(os.environ.get("UNIKD_CACHE", Path.home() / ".cache" / "unikd")) / "tokenized"


def _datasets(cfg: RunConfig, tokenizer, is_decoder: bool):
    cache = _cache_dir()
    if cfg.stage == "general":
        train = D.chunk_for_lm(D.load_text_corpus(cfg.data.text, limit_lines=cfg.data.text_limit_lines),
                               tokenizer, cfg.data.block_size, cache_dir=cache)
        evals = D.chunk_for_lm(D.load_text_corpus(cfg.data.eval_text), tokenizer, cfg.data.block_size,
                               cache_dir=cache) if cfg.data.eval_text else None
        collate = D.lm_collator(tokenizer, mlm=not is_decoder, mlm_probability=cfg.data.mlm_probability)
        return train, evals, collate
    task = cfg.data.task
    train = D.tokenize_pairs(D.load_glue(task, "train", cfg.data.data_dir, limit=cfg.data.train_limit, seed=cfg.seed),
                             tokenizer, cfg.data.max_length, cache_dir=cache)
    dev_split = D.resolve_task(task).dev_splits[0]
    evals = D.tokenize_pairs(D.load_glue(task, dev_split, cfg.data.data_dir, limit=cfg.data.eval_limit),
                             tokenizer, cfg.data.max_length, cache_dir=cache)
    return train, evals, D.classification_collator(tokenizer)


def _optimizer(cfg: RunConfig, student, plan):
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight", "ln_")
    groups = [
        {"params": [p for n, p in student.named_parameters() if not any(k in n for k in no_decay)],
         "weight_decay": cfg.optim.weight_decay},
        {"params": [p for n, p in student.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    if plan is not None and len(list(plan.parameters())):
        groups.append({"params": list(plan.parameters()), "weight_decay": cfg.optim.weight_decay,
                       "lr": cfg.optim.projection_lr or cfg.optim.lr})
    return torch.optim.AdamW(groups, lr=cfg.optim.lr)


@torch.no_grad()
def evaluate(model, loader, accelerator, stage: str, task: str | None, plan=None, teacher_capture=None,
             student_capture=None) -> dict[str, float]:
    """Task metrics on the dev set (task/finetune), or the held-out LM/KD loss (general)."""
    model.eval()
    preds, labels, losses = [], [], []
    for batch in loader:
        if stage == "general":
            if plan is not None and teacher_capture is not None:
                tf = teacher_capture(batch, teacher=True)
                sf = student_capture(batch)
                loss, _ = plan(tf, sf, labels=batch.get("labels"),
                               hard_loss=sf.output.loss if getattr(sf.output, "loss", None) is not None else None)
            else:
                loss = model(**batch).loss
            losses.append(accelerator.gather_for_metrics(loss.detach().reshape(1)))
            continue
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        logits, y = accelerator.gather_for_metrics((out.logits, batch["labels"]))
        preds.append(logits.float().cpu())
        labels.append(y.cpu())
    model.train()
    if stage == "general":
        return {"eval_loss": float(torch.cat(losses).mean())}
    return compute_metrics(task, torch.cat(preds).numpy(), torch.cat(labels).numpy())


def _checkpoint_dirs(output_dir: Path) -> list[Path]:
    root = output_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")
                   and (p / "unikd_state.json").is_file()), key=lambda p: int(p.name[5:]))


def _save_checkpoint(accelerator, output_dir: Path, step: int, extra: dict, keep: int) -> None:
    """accelerator.save_state into a temp dir, then an atomic rename: a crash never leaves half a checkpoint."""
    root = output_dir / CHECKPOINTS
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        atomic_write_json(tmp / "unikd_state.json", {"step": step, **extra})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in _checkpoint_dirs(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


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


# ---- the run ---------------------------------------------------------------------------------------
def run(cfg: RunConfig, *, resume: bool = False, stop_after: int | None = None) -> dict:
    """Train according to ``cfg``; returns the final metrics (also written to metrics.json).

    ``stop_after`` ends the loop after that many steps without finishing the run (tests use it to
    simulate an interruption; the checkpoint written at that step is what ``resume`` picks up).
    """
    output_dir = Path(cfg.output_dir)
    teacher_path, teacher_config, kind, plan = validate_run(cfg)
    if not resume and ((output_dir / "metrics.json").is_file() or _checkpoint_dirs(output_dir)):
        # Never train over a finished or checkpointed run: its results would be silently replaced.
        raise ConfigError("output_dir", f"{output_dir} already holds a finished or started run",
                          "pass --resume to continue it, or choose another output_dir")
    if resume and (output_dir / "metrics.json").is_file():
        return json.loads((output_dir / "metrics.json").read_text())  # finished already: nothing to resume

    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.train.grad_accum,
        mixed_precision=cfg.train.precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # random matching leaves some projections unused in a step; DDP must not wait for their grads
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=plan is not None and plan.is_dynamic)],
    )
    set_seed(cfg.seed)
    if cfg.teacher.precision == "int8" and cfg.stage != "finetune" and accelerator.device.type != "cpu":
        raise ConfigError("teacher.precision", f"int8 (dynamic quantization) runs on CPU only; this run is on "
                          f"{accelerator.device.type}", "use teacher.precision=bf16 (or fp16) on a GPU")
    if accelerator.device.type == "cpu" and cfg.train.keep_freed_memory:
        keep_freed_memory()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / "config.yaml", dump_config(cfg))

    # Data first (a missing file fails before any weights load), then the teacher (frozen, never
    # wrapped) and the student built from it.
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    is_decoder = get_adapter(teacher_config).is_decoder
    if is_decoder and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_ds, eval_ds, collate = _datasets(cfg, tokenizer, is_decoder)
    num_labels = D.resolve_task(cfg.data.task).num_labels if cfg.stage != "general" else None
    teacher = load_model(teacher_path, kind, num_labels=num_labels, field="teacher.path")
    if is_decoder and teacher.config.pad_token_id is None:
        teacher.config.pad_token_id = tokenizer.pad_token_id
    calib = collate([train_ds[i] for i in range(min(16, len(train_ds)))])  # for importance init
    student = build_student(teacher, cfg.student.shape, cfg.student.init, calibration_batch=calib)
    if cfg.stage == "finetune":
        teacher = None
    else:
        teacher.eval().requires_grad_(False).to(accelerator.device)
        if cfg.teacher.precision == "int8":  # after the student took its initial weights from it
            quantize_int8(teacher)

    cache = None
    if cfg.train.teacher_cache and cfg.stage == "task":
        TeacherLogitCache.check_plan(plan)
        cache = TeacherLogitCache(output_dir / "teacher_cache", len(train_ds), topk=cfg.train.teacher_cache_topk,
                                  key={"teacher": teacher_path, "task": cfg.data.task, "seed": cfg.seed,
                                       "train_limit": cfg.data.train_limit, "max_length": cfg.data.max_length,
                                       # other precisions give other logits (absent for fp32: older caches stay valid)
                                       **({"precision": cfg.teacher.precision} if cfg.teacher.precision != "fp32" else {})})
        train_ds = train_ds.add_column("idx", list(range(len(train_ds))))
    train_loader = DataLoader(train_ds, batch_size=cfg.train.batch_size, shuffle=True, collate_fn=collate,
                              generator=torch.Generator().manual_seed(cfg.seed))
    eval_loader = DataLoader(eval_ds, batch_size=cfg.train.eval_batch_size, collate_fn=collate) if eval_ds else None
    steps_per_epoch = math.ceil(len(train_loader) / cfg.train.grad_accum)
    total_steps = cfg.train.max_steps or max(1, int(cfg.train.epochs * steps_per_epoch))
    optimizer = _optimizer(cfg, student, plan)
    scheduler = get_scheduler(cfg.optim.schedule, optimizer, num_warmup_steps=int(cfg.optim.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    student.train()
    # Hooks go on the bare modules before wrapping; DDP/FSDP forwards still run through them.
    teacher_req, student_req = plan.requests(0) if plan is not None else (None, None)
    attention = cfg.train.attention_capture
    t_capture = FeatureCapture(teacher, teacher_req, attention=attention) if teacher is not None else None
    s_capture = FeatureCapture(student, student_req, attention=attention) if plan is not None else None
    student, optimizer, train_loader, scheduler = accelerator.prepare(student, optimizer, train_loader, scheduler)
    if plan is not None:
        # Only a plan with projections has anything to synchronize; DDP refuses a module without parameters.
        plan = accelerator.prepare(plan) if any(True for _ in plan.parameters()) else plan.to(accelerator.device)
    if s_capture is not None:
        s_capture.forward_fn = student  # call the wrapped model so gradients synchronize
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    dynamic = plan is not None and plan_module(plan).is_dynamic

    # Resume: restore model/optimizer/scheduler/RNG and the data position.
    start_step, best = 0, {"score": None, "step": None}
    history: list[dict] = []
    ckpts = _checkpoint_dirs(output_dir)
    if resume and ckpts:
        accelerator.load_state(str(ckpts[-1]))
        state = json.loads((ckpts[-1] / "unikd_state.json").read_text())
        start_step, best, history = state["step"], state["best"], state.get("history", [])
        accelerator.print(f"resumed from {ckpts[-1]} at step {start_step}")
    elif resume:
        accelerator.print(f"--resume: no checkpoint in {output_dir / CHECKPOINTS}, starting from step 0")

    accelerator.init_trackers("unikd", config={"stage": cfg.stage, "seed": cfg.seed})
    progress = _progress(cfg, accelerator, total_steps, start_step)
    t_dtype = _DTYPES[cfg.teacher.precision]
    higher_is_better = cfg.stage != "general"
    step, epoch = start_step, start_step // max(1, steps_per_epoch)
    micro_done = (start_step % max(1, steps_per_epoch)) * cfg.train.grad_accum
    samples, t0 = 0, time.perf_counter()
    stopped = False
    while step < total_steps and not stopped:
        train_loader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(train_loader, micro_done) if micro_done else train_loader
        micro_done = 0
        for batch in loader:
            with accelerator.accumulate(student):
                if plan is None:
                    out = student(**batch)
                    loss, logs = out.loss, {"hard": out.loss.detach(), "total": out.loss.detach()}
                else:
                    if dynamic:
                        pairs = plan_module(plan).pairs_at(step)
                        t_req, s_req = plan_module(plan).requests(step)
                        t_capture.set_request(t_req)
                        s_capture.set_request(s_req)
                    else:
                        pairs = None
                    idx = batch.pop("idx", None)
                    tf = cache.lookup(idx, batch) if cache is not None else None
                    if tf is None:
                        tf = t_capture(batch, teacher=True, autocast_dtype=t_dtype)
                        if cache is not None:
                            cache.store(idx, tf)
                    # inline capture: each attention loss is taken as its student layer runs
                    sf, precomputed = plan_module(plan).capture_student(s_capture, batch, tf, step=step, pairs=pairs)
                    hard = getattr(sf.output, "loss", None)
                    loss, logs = plan(tf, sf, labels=batch.get("labels"), hard_loss=hard, step=step,
                                      total_steps=total_steps, pairs=pairs, release_maps=True,
                                      precomputed=precomputed)
                    # the features (hidden states, attention maps) must not live on through the next forward
                    del tf, sf, hard
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.optim.max_grad_norm:
                    accelerator.clip_grad_norm_(list(student.parameters()) + (list(plan.parameters()) if plan else []),
                                                cfg.optim.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            samples += batch["input_ids"].shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            step += 1
            if step % cfg.train.log_every == 0 or step == total_steps:
                elapsed = time.perf_counter() - t0
                scalars = {f"loss/{k}": float(v) for k, v in logs.items()}
                scalars.update({"lr": scheduler.get_last_lr()[0], "samples_per_s": samples / max(elapsed, 1e-9)})
                accelerator.log(scalars, step=step)
                samples, t0 = 0, time.perf_counter()
                if progress:
                    progress.set_postfix(loss=f"{scalars['loss/total']:.4f}", lr=f"{scalars['lr']:.2e}")
            if progress:
                progress.update(1)
            is_eval = eval_loader is not None and (
                step == total_steps or (cfg.train.eval_every and step % cfg.train.eval_every == 0))
            if is_eval:
                metrics = evaluate(student, eval_loader, accelerator, cfg.stage, cfg.data.task, plan, t_capture, s_capture)
                accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
                history.append({"step": step, **metrics})
                key = metrics.get("score", -metrics.get("eval_loss", 0.0)) if higher_is_better else -metrics["eval_loss"]
                if best["score"] is None or key > best["score"]:
                    best = {"score": key, "step": step, "metrics": metrics}
                    _save_model(accelerator, student, tokenizer, output_dir / "best")
            if cfg.train.save_every and step % cfg.train.save_every == 0 and step < total_steps:
                _save_checkpoint(accelerator, output_dir, step, {"best": best, "history": history},
                                 cfg.train.keep_checkpoints)
            if stop_after is not None and step >= stop_after:
                stopped = True
            if step >= total_steps or stopped:
                break
        epoch += 1
    if progress:
        progress.close()
    accelerator.end_training()
    for capture in (t_capture, s_capture):
        if capture is not None:
            capture.remove()  # hooks off, and the models back on their own attention implementation
    if stopped and step < total_steps:
        return {"stopped_at": step}

    # Outputs: the student alone (projections live in checkpoints only), config, metrics.
    _save_model(accelerator, student, tokenizer, output_dir / "student")
    if plan is not None and accelerator.is_main_process:
        torch.save(plan_module(plan).state_dict(), output_dir / "projections.pt")
    final = history[-1] if history else {}
    params = count_parameters(accelerator.unwrap_model(student))
    result = {
        "stage": cfg.stage, "task": cfg.data.task, "steps": step,
        "final": {k: v for k, v in final.items() if k != "step"},
        "best": best.get("metrics"), "best_step": best.get("step"),
        "parameters": params.total, "parameters_non_embedding": params.non_embedding,
        "history": history,
    }
    if accelerator.is_main_process:
        atomic_write_json(output_dir / "metrics.json", result)
    return result


def plan_module(plan):
    """The DistillationPlan inside whatever Accelerate wrapped it in."""
    return getattr(plan, "module", plan)


def _progress(cfg: RunConfig, accelerator, total: int, start: int):
    if not cfg.train.progress or not accelerator.is_local_main_process:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=f"unikd {cfg.stage}", dynamic_ncols=True)
