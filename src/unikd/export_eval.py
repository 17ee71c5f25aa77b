"""What ``unikd export`` scores each exported form on: the dev set of the run the student came from."""

from __future__ import annotations

from pathlib import Path


def run_eval_set(run_dir: Path, limit: int | None):
    """The dev set of the run's task as an export EvalSet, or None for a bare model dir / general run."""
    if not (run_dir / "config.yaml").is_file():
        return None
    from unikd.config import read_run_config
    from unikd.data import load_glue, resolve_task
    from unikd.export import EvalSet
    from unikd.metrics import compute_metrics

    cfg = read_run_config(run_dir)
    if cfg.stage == "general":
        return None
    if not cfg.data.task:
        return _own_data_eval_set(cfg, limit)
    task = resolve_task(cfg.data.task)
    dev = load_glue(
        cfg.data.task, task.dev_splits[0], cfg.data.data_dir, limit=limit, skip_malformed=cfg.data.skip_malformed
    )
    return EvalSet(
        texts_a=dev["text_a"],
        texts_b=dev["text_b"] if task.is_pair else None,
        labels=dev["label"],
        metric_fn=lambda preds, labels: compute_metrics(cfg.data.task, preds, labels),
        max_length=cfg.data.max_length,
    )


def _own_data_eval_set(cfg, limit: int | None):
    """The dev set of a run on its own data (single-label classification and regression; export scores whole
    sequences, so token-classification and multi-label runs are exported without a dev score)."""
    from unikd.data import load_task_data
    from unikd.export import EvalSet
    from unikd.metrics import compute_task_metrics

    from unikd.data.causal import is_causal_lm
    from unikd.data.labelled import read_splits
    from unikd.data.qa import has_squad_files, is_extractive_qa

    if has_squad_files(cfg.data) or is_extractive_qa(cfg.data, read_splits(cfg.data)[0].column_names):
        return None  # extractive QA: each form checked against PyTorch; its EM/F1 are the run's metrics.json
    if is_causal_lm(cfg.data, read_splits(cfg.data)[0].column_names):
        return None  # generative: export checks each form against PyTorch and scores no dev set
    task = load_task_data(cfg.data.model_copy(update={"train_limit": 1, "eval_limit": limit}), seed=cfg.seed)
    if task.spec.task_type not in ("classification", "regression"):
        return None
    dev = task.validation
    return EvalSet(
        texts_a=dev["text_a"],
        texts_b=dev["text_b"] if task.spec.is_pair else None,
        labels=dev["label"],
        metric_fn=lambda preds, labels: compute_task_metrics(task.spec, preds, labels, cfg.eval.metric),
        max_length=cfg.data.max_length,
    )
