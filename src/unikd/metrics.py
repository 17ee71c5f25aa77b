"""GLUE metrics, computed with scikit-learn and scipy.

``compute_metrics(task, predictions, labels)`` returns the task's metrics plus ``"score"``, the
task's GLUE score as a fraction in [0, 1] (correlations in [-1, 1]):

=========================  ==========================================  ===========================
task                       metrics                                     score
=========================  ==========================================  ===========================
sst2, mnli, qnli, rte,     ``accuracy``                                accuracy
wnli
mrpc, qqp                  ``accuracy``, ``f1`` (positive class 1)     mean(accuracy, f1)
cola                       ``matthews_correlation``                    matthews_correlation
stsb                       ``pearson``, ``spearman``                   mean(pearson, spearman)
=========================  ==========================================  ===========================

``glue_average(results)`` is the unweighted mean of the entries' ``"score"``.

``compute_task_metrics(spec, predictions, labels, metric=None)`` scores any labelled task (a
``unikd.data.TaskSpec``) by its type; ``score`` is ``metric`` (the run's ``eval.metric``), else the type's
default (GLUE presets: GLUE's score, as ``compute_metrics``):

=====================  ===========================================================  ===============
task type              metrics                                                      default score
=====================  ===========================================================  ===============
classification         ``accuracy``, ``macro_f1``, ``micro_f1``, ``mcc`` (+ ``f1``   accuracy
                       of class 1 when binary)
regression             ``pearson``, ``spearman``                                    pearson
multilabel             ``sample_f1``, ``micro_f1``, ``macro_f1``, ``exact_match``    sample_f1
                       (a label is predicted where its logit > 0)
token-classification   entity-level ``precision``, ``recall``, ``f1`` (seqeval;      f1
                       strict mode for IOB2 and BIOES) and token ``accuracy``
=====================  ===========================================================  ===============
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from unikd.data import GLUE_TASKS, TaskInfo, _resolve
from unikd.errors import ConfigError

__all__ = ["compute_metrics", "compute_task_metrics", "glue_average", "TASK_METRICS"]

#: task -> metric keys returned by ``compute_metrics`` besides ``"score"``
TASK_METRICS: dict[str, tuple[str, ...]] = {name: info.metric_names for name, info in GLUE_TASKS.items()}


def _to_numpy(x: Any, what: str) -> np.ndarray:
    if isinstance(x, tuple):  # e.g. HF EvalPrediction.predictions = (logits, hidden_states, ...)
        if not x:
            raise ConfigError(f"metrics.{what}", "is an empty tuple", f"pass the {what} as an array")
        x = x[0]
    if hasattr(x, "detach"):  # torch tensor (any dtype/device, incl. bfloat16)
        x = x.detach().cpu()
        x = x.float() if x.is_floating_point() else x
        x = x.numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ConfigError(
            f"metrics.{what}",
            "could not be converted to a numeric array (ragged?)",
            f"pass the {what} as one [N] or [N, C] array",
        )
    return arr


def _class_ids(info: TaskInfo, preds: np.ndarray) -> np.ndarray:
    if preds.ndim == 2 and preds.shape[1] == 1:
        preds = preds[:, 0]
    if preds.ndim == 2:
        if preds.shape[1] != info.num_labels:
            raise ConfigError(
                "metrics.predictions",
                f"logits have {preds.shape[1]} classes but {info.name} has {info.num_labels}",
                f"pass logits shaped [N, {info.num_labels}] or class ids shaped [N]",
            )
        return preds.argmax(axis=-1)
    if preds.ndim != 1:
        raise ConfigError(
            "metrics.predictions",
            f"expected shape [N] or [N, C], got {list(preds.shape)}",
            "pass logits [N, C] or class ids [N]",
        )
    if np.issubdtype(preds.dtype, np.floating):
        if not np.all(np.isfinite(preds)) or not np.all(preds == np.round(preds)):
            raise ConfigError(
                "metrics.predictions",
                f"1-D float predictions for classification task {info.name} are not class ids",
                f"pass logits [N, {info.num_labels}] or integer class ids",
            )
    ids = preds.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= info.num_labels):
        raise ConfigError(
            "metrics.predictions",
            f"class ids must be in 0..{info.num_labels - 1}, got {ids.min()}..{ids.max()}",
            "pass argmax class ids or logits",
        )
    return ids


def _correlation(fn, a: np.ndarray, b: np.ndarray) -> float:
    """Correlation, or 0.0 where it is undefined (a constant input: e.g. a collapsed regressor)."""
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return 0.0
    value = float(fn(a, b)[0])
    return 0.0 if math.isnan(value) else value


def compute_metrics(task: str, predictions: Any, labels: Any) -> dict[str, float]:
    """GLUE metrics for ``task``.

    Args:
        task: a GLUE task name (any alias accepted by ``unikd.data.resolve_task``: "SST-2",
            "mnli-mm", ...).
        predictions: logits ``[N, C]`` or class ids ``[N]`` for classification; scores ``[N]`` or
            ``[N, 1]`` for STS-B. numpy arrays, lists or torch tensors; for a tuple (as in HF's
            ``EvalPrediction``) the first element is used.
        labels: ``[N]`` gold class ids (float scores for STS-B). Unlabelled test rows (-1) are an
            error: GLUE test labels are not public.

    Returns:
        ``{metric: value, ..., "score": task GLUE score}`` as Python floats; fractions in 0-1
        (accuracy, F1), correlations in -1..1. An undefined correlation (constant predictions or
        labels) is reported as 0.0, as scikit-learn does for the Matthews correlation.
    """
    info, _ = _resolve(task, "metrics.task")
    preds = _to_numpy(predictions, "predictions")
    gold = _to_numpy(labels, "labels")
    if gold.ndim == 2 and gold.shape[1] == 1:
        gold = gold[:, 0]
    if gold.ndim != 1:
        raise ConfigError("metrics.labels", f"expected shape [N], got {list(gold.shape)}", "pass one label per example")
    if len(preds) != len(gold):
        raise ConfigError(
            "metrics.predictions",
            f"{len(preds)} predictions for {len(gold)} labels",
            "pass one prediction per labelled example",
        )
    if len(gold) == 0:
        raise ConfigError("metrics.labels", "no examples to score", "evaluate on a non-empty split")
    return _glue_regression(preds, gold) if info.is_regression else _glue_classification(info, preds, gold)


def _glue_regression(preds: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """STS-B: Pearson, Spearman and their mean."""
    from scipy.stats import pearsonr, spearmanr

    if preds.ndim == 2 and preds.shape[1] == 1:
        preds = preds[:, 0]
    if preds.ndim != 1:
        raise ConfigError(
            "metrics.predictions",
            f"STS-B predictions must be [N] or [N, 1], got {list(preds.shape)}",
            "pass the regression head's output",
        )
    preds = preds.astype(np.float64)
    gold = gold.astype(np.float64)
    if np.all(gold == -1):
        raise ConfigError(
            "metrics.labels",
            "all labels are -1 (the unlabelled test split)",
            "score the validation split; GLUE test labels are not public",
        )
    pearson = _correlation(pearsonr, preds, gold)
    spearman = _correlation(spearmanr, preds, gold)
    return {"pearson": pearson, "spearman": spearman, "score": (pearson + spearman) / 2}


def _glue_classification(info, preds: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """CoLA: MCC; MRPC and QQP: accuracy, F1 and their mean; the others: accuracy."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    ids = _class_ids(info, preds)
    if np.issubdtype(gold.dtype, np.floating) and not np.all(gold == np.round(gold)):
        raise ConfigError("metrics.labels", f"labels for {info.name} must be class ids", "pass integer labels")
    gold = gold.astype(np.int64)
    if np.any(gold < 0):
        raise ConfigError(
            "metrics.labels",
            "labels contain -1 (unlabelled test rows)",
            "score the validation split; GLUE test labels are not public",
        )
    if np.any(gold >= info.num_labels):
        raise ConfigError(
            "metrics.labels",
            f"labels must be in 0..{info.num_labels - 1}, got max {gold.max()}",
            "pass class ids as in unikd.data.load_glue",
        )
    if info.name == "cola":
        mcc = float(matthews_corrcoef(gold, ids))
        return {"matthews_correlation": mcc, "score": mcc}
    acc = float(accuracy_score(gold, ids))
    if info.name in ("mrpc", "qqp"):
        f1 = float(f1_score(gold, ids, pos_label=1, average="binary", zero_division=0.0))
        return {"accuracy": acc, "f1": f1, "score": (acc + f1) / 2}
    return {"accuracy": acc, "score": acc}


def glue_average(results: Mapping[str, Mapping[str, float] | float], exclude: tuple[str, ...] = ()) -> float:
    """Unweighted mean of the task scores in ``results``.

    ``results`` maps task names (any alias) to ``compute_metrics`` dicts (their ``"score"`` is used)
    or to plain score floats. Every entry counts once, so MNLI reported as ``"mnli-m"`` and
    ``"mnli-mm"`` counts as two entries, as the two MNLI columns do in the averages of the GLUE
    leaderboard tables and of BERT/TinyBERT/MiniLM-style result tables; a single ``"mnli"`` entry
    counts once. Tasks in ``exclude`` (aliases accepted, e.g. ``("wnli",)`` as in BERT's average)
    are left out; ``exclude=("mnli",)`` drops both MNLI entries.

    Raises ``ConfigError`` for an unknown task, an entry without ``"score"`` or nothing to average.
    """
    excluded = {_resolve(t, "metrics.exclude")[0].name for t in exclude}
    scores: list[float] = []
    for task, entry in results.items():
        info, _ = _resolve(task, "metrics.results")
        if info.name in excluded:
            continue
        if isinstance(entry, Mapping):
            if "score" not in entry:
                raise ConfigError(
                    f"metrics.results[{task!r}]", "has no 'score' key", "pass the dict returned by compute_metrics"
                )
            value = entry["score"]
        else:
            value = entry
        scores.append(float(value))
    if not scores:
        raise ConfigError(
            "metrics.results", "no task scores to average", "pass {task: compute_metrics(...)} for at least one task"
        )
    return float(np.mean(scores))


def compute_task_metrics(spec, predictions: Any, labels: Any, metric: str | None = None) -> dict[str, float]:
    """Metrics of a ``unikd.data.TaskSpec``'s task type (see the module docstring), ``score`` = ``metric``.

    ``predictions`` are logits: ``[N, C]`` (``[N]``/``[N, 1]`` for regression) or ``[N, L, C]`` for token
    classification, whose ``labels`` are ``[N, L]`` tag ids with -100 where nothing is scored. Multi-label
    ``labels`` are multi-hot ``[N, C]``.
    """
    from unikd.data import DEFAULT_METRIC, check_metric

    check_metric(spec, metric)
    if spec.glue:
        out = compute_metrics(spec.glue, predictions, labels)
        if metric is None:
            return out
        out.pop("score")
    else:
        out = {}
    preds, gold = _to_numpy(predictions, "predictions"), _to_numpy(labels, "labels")
    if len(preds) != len(gold) or len(gold) == 0:
        raise ConfigError(
            "metrics.predictions", f"{len(preds)} predictions for {len(gold)} labels", "pass one per labelled example"
        )
    fn = {
        "classification": _classification,
        "regression": _regression,
        "multilabel": _multilabel,
        "token-classification": _entities,
    }[spec.task_type]
    out.update(fn(spec, preds, gold))
    out["score"] = out[metric or DEFAULT_METRIC[spec.task_type]]
    return out


def _classification(spec, preds: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    ids = preds.argmax(-1) if preds.ndim == 2 else preds.astype(np.int64)
    gold = gold.astype(np.int64)
    out = {
        "accuracy": float(accuracy_score(gold, ids)),
        "macro_f1": float(f1_score(gold, ids, average="macro", labels=range(spec.num_labels), zero_division=0.0)),
        "micro_f1": float(f1_score(gold, ids, average="micro", labels=range(spec.num_labels), zero_division=0.0)),
        "mcc": float(matthews_corrcoef(gold, ids)),
    }
    if spec.num_labels == 2:
        out["f1"] = float(f1_score(gold, ids, pos_label=1, average="binary", zero_division=0.0))
    return out


def _regression(spec, preds: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    preds = preds.reshape(len(preds), -1)[:, 0].astype(np.float64)
    gold = gold.reshape(len(gold)).astype(np.float64)
    return {"pearson": _correlation(pearsonr, preds, gold), "spearman": _correlation(spearmanr, preds, gold)}


def _multilabel(spec, preds: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    hot = (preds > 0).astype(np.int64)  # sigmoid(logit) > 0.5
    gold = (gold > 0.5).astype(np.int64)
    return {
        "sample_f1": float(f1_score(gold, hot, average="samples", zero_division=0.0)),
        "micro_f1": float(f1_score(gold, hot, average="micro", zero_division=0.0)),
        "macro_f1": float(f1_score(gold, hot, average="macro", zero_division=0.0)),
        "exact_match": float(accuracy_score(gold, hot)),
    }


def tag_sequences(spec, preds: np.ndarray, gold: np.ndarray) -> tuple[list[list[str]], list[list[str]]]:
    """Gold and predicted tag names per sentence, at the labelled positions (gold != -100) only."""
    ids = preds.argmax(-1) if preds.ndim == 3 else preds
    names = spec.label_names
    y_true, y_pred = [], []
    for row_pred, row_gold in zip(ids, gold, strict=True):
        keep = row_gold != -100
        y_true.append([names[i] for i in row_gold[keep]])
        y_pred.append([names[i] for i in row_pred[keep]])
    return y_true, y_pred


def _entities(spec, preds: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2, IOBES

    y_true, y_pred = tag_sequences(spec, preds, gold.astype(np.int64))
    # strict mode counts an entity only when its whole span is well-formed in the scheme (as conlleval does
    # for IOB2); IOB1 has no strict form in seqeval, so it is scored the conlleval way
    scheme = {"IOB2": IOB2, "BIOES": IOBES}.get(spec.tag_scheme)
    kw = {"mode": "strict", "scheme": scheme} if scheme is not None else {}
    return {
        "precision": float(precision_score(y_true, y_pred, zero_division=0, **kw)),
        "recall": float(recall_score(y_true, y_pred, zero_division=0, **kw)),
        "f1": float(f1_score(y_true, y_pred, zero_division=0, **kw)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
    }
