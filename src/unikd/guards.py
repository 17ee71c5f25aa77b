"""Guards that stop a run instead of reporting a broken one as a result.

- ``FiniteWatch``: every step's weighted loss terms (and their total) are checked for inf/NaN. The check is a few
  device ops per step (no host sync on a GPU); the verdict is read back only at the points the caller chooses
  (log, eval and checkpoint steps, the end) - on a CPU reading it every step costs nothing. The first bad step, the
  term and its value are kept, so the error names them however late it is read.
- ``trivial_baseline`` / ``check_teacher``: a task-stage teacher must beat a constant predictor on dev by
  ``TEACHER_MARGIN``, else distilling from it only copies a constant.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from unikd.errors import ConfigError, TrainingError
from unikd.knowledge.base import linear_schedule

#: The teacher's dev score must exceed the trivial baseline's by this much (score units: 0.01 = 1 point of
#: accuracy/F1/correlation). Below that a teacher is no better than predicting a constant, within dev noise.
TEACHER_MARGIN = 0.01
#: a teacher less than this (score units) above the trivial baseline is weak: a student of it may not beat its
#: no-KD twin (docs/guideline.md#weak-teachers); the study report flags it and `unikd recipe` plans for it
WEAK_TEACHER_HEADROOM = 0.03


class FiniteWatch:
    """Remembers the first step at which a weighted term or the total loss was not finite.

    ``observe(logs, step, total_steps)`` takes the plan's logs (the terms' unweighted values in plan order, then
    ``hard`` and ``total``; fine-tuning: ``hard`` and ``total``) and records, on the logs' device, the first step
    with a non-finite value. ``check()`` reads that record back (one host sync) and raises ``TrainingError`` naming
    the term and the step.
    """

    def __init__(self, plan_config=None):
        self.plan_config = plan_config
        self.names: list[str] | None = None
        self.first_step = self.bad = self.raw = self.weighted = None

    def _weights(self, names: list[str], step: int, total_steps: int) -> list[float | None]:
        """Each entry's weight in the total at ``step`` (None: not part of the total, e.g. hard at weight 0)."""
        cfg = self.plan_config
        if cfg is None:
            return [1.0 for _ in names]
        weights: list[float | None] = [linear_schedule(t.weight, t.weight_end, step, total_steps) for t in cfg.terms]
        for name in names[len(cfg.terms) :]:
            if name == "hard":
                w = linear_schedule(cfg.hard_label_weight, cfg.hard_label_weight_end, step, total_steps)
                weights.append(w if w > 0 else None)
            else:
                weights.append(1.0)
        return weights

    @torch.no_grad()
    def observe(self, logs: dict, step: int, total_steps: int) -> None:
        names = list(logs)
        if self.names is None:
            self.names = names
        weights = self._weights(names, step, total_steps)
        values = [logs[k].detach().float().reshape(()) for k in names]
        if values[0].device.type == "cpu":  # reading a CPU scalar is free: plain floats, no tensor ops (~10x less)
            self._observe_floats([float(v) for v in values], weights, step)
        else:
            self._observe_tensors(values, weights, step)

    def _observe_tensors(self, values: list[torch.Tensor], weights: list[float | None], step: int) -> None:
        """The device path of ``observe``: only device ops, so a GPU never waits for the host."""
        raw = torch.stack(values)
        # Multiplying by Python floats keeps every op on the device (a weights tensor would be a synced H2D copy).
        # A weight of 1e39 overflows float32 just as the plan's own product does, and a NaN term at weight 0 is NaN
        # as the plan's 0 * value is: the check sees what the sum saw. An entry not in the sum (None) counts as 0.
        weighted = torch.stack([v * w if w is not None else torch.zeros_like(v) for v, w in zip(values, weights)])
        bad = ~torch.isfinite(weighted)
        if self.first_step is None:
            self.first_step = torch.full((), -1, dtype=torch.long, device=raw.device)
            self.bad, self.raw, self.weighted = torch.zeros_like(bad), raw.clone(), weighted.clone()
        hit = bad.any() & (self.first_step < 0)
        # recorded as the optimizer step being made (1-based, as the logs and checkpoints number steps)
        self.first_step = torch.where(hit, torch.full_like(self.first_step, step + 1), self.first_step)
        self.bad = torch.where(hit, bad, self.bad)
        self.raw = torch.where(hit, raw, self.raw)
        self.weighted = torch.where(hit, weighted, self.weighted)

    def _observe_floats(self, raw: list[float], weights: list[float | None], step: int) -> None:
        """The CPU path of ``observe``, with float32's overflow (a product above its max is inf, as on the device)."""
        if self.first_step is not None and int(self.first_step) >= 0:
            return  # the first bad step is recorded already
        # torch casts the weight to float32 first (1e39 -> inf), then multiplies: the same here
        weighted = [0.0 if w is None else _as_float32(r * _as_float32(w)) for r, w in zip(raw, weights)]
        bad = [not math.isfinite(x) for x in weighted]
        if any(bad):
            self.first_step = torch.tensor(step + 1)
            self.bad, self.raw, self.weighted = torch.tensor(bad), torch.tensor(raw), torch.tensor(weighted)

    def check(self, fix) -> None:
        """Raise ``TrainingError`` if any observed step was not finite (reads the device record: one sync).

        ``fix``: the error's fix, or a callable making it (called only when there is an error)."""
        if self.first_step is None or int(self.first_step) < 0:
            return
        step = int(self.first_step)
        bad = self.bad.tolist()
        i = bad.index(True)
        name = self.names[i]
        value, weighted = float(self.raw[i]), float(self.weighted[i])
        n_terms = len(self.plan_config.terms) if self.plan_config is not None else 0
        if i < n_terms:
            t = self.plan_config.terms[i]
            where = f"plan.terms.{i}, weight {t.weight:g}" + (
                f" -> {t.weight_end:g}" if t.weight_end is not None else ""
            )
        elif name == "hard":
            where = "the student's own loss" + (
                f", plan.hard_label_weight {self.plan_config.hard_label_weight:g}" if self.plan_config else ""
            )
        else:
            where = "the sum of the terms"
        same = value == weighted or (math.isnan(value) and math.isnan(weighted))
        shown = f"{value:g}" if same else f"{weighted:g} after its weight (unweighted {value:g})"
        raise TrainingError(
            name,
            f"the loss went non-finite at step {step}: {name} ({where}) = {shown}",
            fix() if callable(fix) else fix,
            step=step,
        )


def _as_float32(x: float) -> float:
    """``x`` as float32 arithmetic would give it: beyond float32's range it is +-inf (NaN stays NaN; inf * 0 is NaN,
    as in torch)."""
    return math.copysign(math.inf, x) if math.isfinite(x) and abs(x) > _FP32_MAX else x


_FP32_MAX = float(torch.finfo(torch.float32).max)


def weights_finite(parameters) -> bool:
    """True when every parameter is finite (one host sync for all of them)."""
    flags = [torch.isfinite(p.detach()).all() for p in parameters if p.numel()]
    return bool(torch.stack(flags).all()) if flags else True


# ---- the teacher against a constant predictor ---------------------------------------------------------
def trivial_baseline(spec, train_labels, dev_labels, metric: str | None = None) -> dict:
    """The dev score of the best constant predictor one can know from the training labels, by ``spec``'s metric.

    ``spec``: the labelled data's ``unikd.data.TaskSpec``. Classification: the majority class of the TRAIN labels
    (ties: the lowest class id); token classification: the most frequent tag at the labelled positions, everywhere;
    multi-label: every label that more than half the training rows carry. Regression: any constant has correlation
    0 with the gold scores, so the score is 0. Scored like the student (``compute_task_metrics``).
    """
    from unikd.metrics import compute_task_metrics

    if spec.task_type == "regression":
        return {
            "predictor": f"the train mean {float(np.mean(np.asarray(train_labels, dtype=float))):.4g}",
            "score": 0.0,
        }
    n = spec.num_labels
    if spec.task_type == "multilabel":
        on = np.asarray(train_labels, dtype=float).mean(0) > 0.5
        dev = np.asarray(dev_labels)
        logits = np.tile(np.where(on, 1.0, -1.0), (len(dev), 1))
        predictor = f"the labels {[spec.label_names[i] for i in np.flatnonzero(on)]}"
    elif spec.is_token:
        tags = np.concatenate([np.asarray(t) for t in train_labels])
        majority = int(np.bincount(tags[tags >= 0], minlength=n).argmax())
        length = max(len(t) for t in dev_labels)
        dev = np.full((len(dev_labels), length), -100, dtype=np.int64)
        for i, t in enumerate(dev_labels):
            dev[i, : len(t)] = t
        logits = np.zeros((*dev.shape, n))
        logits[..., majority] = 1.0
        predictor = f"the tag {spec.label_names[majority]!r} everywhere"
    else:
        majority = int(np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=n).argmax())
        dev = np.asarray(dev_labels)
        logits = np.zeros((len(dev), n))
        logits[:, majority] = 1.0
        predictor = f"the majority class {majority}"
    return {"predictor": predictor, **compute_task_metrics(spec, logits, dev, metric)}


def check_teacher(teacher_dev: dict, baseline: dict, *, allow_weak: bool, teacher: str, metric: str = "score") -> None:
    """Refuse a teacher whose dev score is not above the trivial baseline by ``TEACHER_MARGIN`` (unless allowed).
    Both are scored by the run's metric (``metric`` names it in the message)."""
    if allow_weak or teacher_dev["score"] > baseline["score"] + TEACHER_MARGIN:
        return
    raise ConfigError(
        "teacher.path",
        f"the teacher {teacher!r} scores {teacher_dev['score']:.4f} on dev ({metric}), not above "
        f"{baseline['predictor']} ({baseline['score']:.4f}) by {TEACHER_MARGIN}: a student would learn a constant "
        "from it",
        "fine-tune the teacher better (more data: data.train_limit, more steps: train.epochs/max_steps, a higher "
        "optim.lr), or set teacher.allow_weak=true to distill from it anyway",
    )


def stored_teacher_score(teacher_path: str | Path, cfg, spec=None) -> dict | None:
    """The teacher's dev metrics from the unikd fine-tune that wrote it, when they were measured on these dev rows,
    with ``score`` in this run's metric.

    ``teacher_path`` must be a run's ``student/`` directory whose run (the directory above) is a finished ``finetune``
    of the same task, with the same ``data.data_dir``, ``data.eval_limit`` and ``data.max_length``: its
    ``metrics.json`` ``final`` entry is the score of exactly that student on exactly these rows. A fine-tune scored by
    another ``eval.metric`` gives this run's metric from the same entry when it holds it (``spec``, the data's
    ``TaskSpec``, says which the default is); else None (the teacher is measured again).
    """
    from unikd.config import read_run_config
    from unikd.data import DEFAULT_METRIC, resolve_task

    path = Path(teacher_path)
    run_dir = path.parent
    if path.name != "student" or not (run_dir / "metrics.json").is_file():
        return None
    try:
        run_cfg = read_run_config(run_dir)
        final = json.loads((run_dir / "metrics.json").read_text()).get("final") or {}
    except (ConfigError, OSError, ValueError):
        return None

    def source(data) -> tuple:  # what picks the dev rows: the task (or the dataset / files) and the limits
        task = resolve_task(data.task).name if data.task else None
        return (
            task,
            data.dataset,
            data.dataset_config,
            dict(data.files),
            data.data_dir,
            data.eval_limit,
            data.max_length,
        )

    if cfg.data.holdout or run_cfg.data.holdout:  # held-out training rows: scored by this run's own pass
        return None
    same = run_cfg.stage == "finetune" and source(run_cfg.data) == source(cfg.data)
    if not same or not isinstance(final.get("score"), (int, float)):
        return None
    found = {**final, "source": str(run_dir / "metrics.json")}
    if cfg.eval.metric == run_cfg.eval.metric:
        return found
    # the fine-tune ranked by another metric: its "score" is that one, never compared with this run's baseline
    want = cfg.eval.metric or (None if spec is None or spec.glue else DEFAULT_METRIC[spec.task_type])
    if want is None or not isinstance(final.get(want), (int, float)):
        return None
    return {**found, "score": final[want], "scored_by": want}
