"""Scoring: the student's dev metrics (or held-out LM/KD loss), the best checkpoint by the run's metric, and the
teacher against the trivial baseline before the first step."""

from __future__ import annotations

import torch

from unikd.config import RunConfig
from unikd.data import DEFAULT_METRIC
from unikd.guards import check_teacher as refuse_weak_teacher
from unikd.guards import stored_teacher_score, trivial_baseline
from unikd.metrics import compute_task_metrics
from unikd.train.causal_eval import response_nll, unigram_baseline
from unikd.train.qa_eval import qa_baseline, qa_scores
from unikd.train.outputs import save_model


def predict(model, loader, accelerator, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
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
def check_teacher(
    cfg: RunConfig, accelerator, teacher, teacher_path, task, train_labels, eval_ds, eval_loader, qa_task=None
) -> dict:
    """metrics.json's ``trivial_baseline`` (task and finetune runs) and ``teacher_dev`` (task runs); a task run's
    teacher no better than the baseline stops the run here (``guards.check_teacher``) unless teacher.allow_weak.

    The teacher's dev score is read from the unikd fine-tune that wrote it when that run scored the same dev rows
    (``guards.stored_teacher_score``), else measured with one pass over dev."""
    if cfg.stage == "general" or eval_loader is None:
        return {}
    causal = task.task_type == "causal-lm"
    if task.task_type == "extractive-qa":  # no training labels to count: the empty answer is the baseline
        return _check_qa_teacher(cfg, accelerator, teacher, eval_loader, qa_task)
    if causal:
        vocab = getattr(getattr(teacher, "config", None), "vocab_size", None)
        vocab = vocab or 1 + max(
            max((i for i in row if i >= 0), default=0) for row in [*train_labels, *eval_ds["labels"]]
        )
        baseline = unigram_baseline(train_labels, eval_ds["labels"], vocab, cfg.eval.metric)
    else:
        baseline = trivial_baseline(task, train_labels, eval_ds["labels"], cfg.eval.metric)
    if cfg.stage != "task":
        return {"trivial_baseline": baseline}
    if causal:
        teacher_dev = {**response_nll(teacher, eval_loader, accelerator, cfg.eval.metric), "source": "evaluated"}
    else:
        # an ensemble's score is its own, never its first teacher's stored one
        teacher_dev = None if cfg.teacher.ensemble else stored_teacher_score(teacher_path, cfg, task)
    if teacher_dev is None:
        preds, labels = predict(teacher, eval_loader, accelerator, cfg.data.max_length)
        teacher_dev = {
            **compute_task_metrics(task, preds.numpy(), labels.numpy(), cfg.eval.metric),
            "source": "evaluated",
        }
    metric = cfg.eval.metric or ("GLUE's score" if task.glue else DEFAULT_METRIC[task.task_type])
    refuse_weak_teacher(
        teacher_dev, baseline, allow_weak=cfg.teacher.allow_weak, teacher=cfg.teacher.path, metric=metric
    )
    return {"teacher_dev": teacher_dev, "trivial_baseline": baseline}


def _check_qa_teacher(cfg: RunConfig, accelerator, teacher, eval_loader, qa_task) -> dict:
    baseline = qa_baseline(cfg.eval.metric)
    if cfg.stage != "task":
        return {"trivial_baseline": baseline}
    teacher_dev = {**qa_scores(teacher, eval_loader, accelerator, qa_task, cfg.eval.metric), "source": "evaluated"}
    refuse_weak_teacher(
        teacher_dev,
        baseline,
        allow_weak=cfg.teacher.allow_weak,
        teacher=cfg.teacher.path,
        metric=cfg.eval.metric or "f1",
    )
    return {"teacher_dev": teacher_dev, "trivial_baseline": baseline}


def is_eval_step(state) -> bool:
    every = state.cfg.train.eval_every
    return state.eval_loader is not None and (
        state.step == state.total_steps or bool(every and state.step % every == 0)
    )


@torch.no_grad()
def evaluate(state) -> dict[str, float]:
    """Task metrics on the dev set (task/finetune; causal-LM data: the response perplexity), or the held-out LM/KD
    loss (general)."""
    model, accelerator, general = state.student, state.accelerator, state.cfg.stage == "general"
    model.eval()
    if general:
        losses = [
            accelerator.gather_for_metrics(state.distiller.evaluate_loss(batch).detach().reshape(1))
            for batch in state.eval_loader
        ]
        model.train()
        return {"eval_loss": float(torch.cat(losses).mean())}
    if state.task.task_type == "causal-lm":
        metrics = response_nll(model, state.eval_loader, accelerator, state.cfg.eval.metric)
        model.train()
        return metrics
    if state.task.task_type == "extractive-qa":
        metrics = qa_scores(model, state.eval_loader, accelerator, state.task_data, state.cfg.eval.metric)
        model.train()
        return metrics
    preds, labels = predict(model, state.eval_loader, accelerator, state.cfg.data.max_length)
    model.train()
    return compute_task_metrics(state.task, preds.numpy(), labels.numpy(), state.cfg.eval.metric)


def evaluate_and_keep_best(state) -> None:
    """Evaluate, log, record in the history; a new best score saves the student to ``best/``."""
    metrics = evaluate(state)
    state.accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=state.step)
    state.history.append({"step": state.step, **metrics})
    if state.cfg.stage != "general":
        key = metrics.get("score", -metrics.get("eval_loss", 0.0))
    else:
        key = -metrics["eval_loss"]
    if state.best["score"] is None or key > state.best["score"]:
        state.best = {"score": key, "step": state.step, "metrics": metrics}
        save_model(state.accelerator, state.student, state.tokenizer, state.output_dir / "best")
