"""Tests for unikd.metrics against values computed by hand."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest
import torch

from unikd.errors import ConfigError
from unikd.metrics import TASK_METRICS, compute_metrics, glue_average


def test_accuracy_from_logits_and_ids():
    logits = np.array([[2.0, 1.0], [0.1, 0.3], [0.0, 5.0], [3.0, -1.0], [0.2, 0.1]])  # argmax 0 1 1 0 0
    labels = [0, 1, 0, 0, 1]  # 3 of 5 right
    for task in ("sst2", "SST-2", "rte", "qnli", "wnli"):
        assert compute_metrics(task, logits, labels) == {"accuracy": 0.6, "score": 0.6}
    assert compute_metrics("sst2", [0, 1, 1, 0, 0], labels)["accuracy"] == 0.6
    assert compute_metrics("sst2", torch.tensor(logits, dtype=torch.bfloat16), torch.tensor(labels))["accuracy"] == 0.6
    assert compute_metrics("sst2", (logits, "hidden"), labels)["accuracy"] == 0.6  # HF EvalPrediction tuple
    mnli = np.array([[3, 1, 0], [0, 2, 1], [0, 1, 4], [1, 0, 0]], dtype=float)  # argmax 0 1 2 0
    res = compute_metrics("mnli-mm", mnli, [0, 1, 1, 2])
    assert res == {"accuracy": 0.5, "score": 0.5}


def test_accuracy_and_f1():
    preds = [1, 1, 0, 1, 0, 0, 1, 1]
    labels = [1, 0, 0, 1, 1, 0, 1, 0]
    # TP = 3 (idx 0, 3, 6), FP = 2 (idx 1, 7), FN = 1 (idx 4), TN = 2 (idx 2, 5)
    acc = 5 / 8
    precision, recall = 3 / 5, 3 / 4
    f1 = 2 * precision * recall / (precision + recall)  # = 2/3
    for task in ("mrpc", "qqp"):
        res = compute_metrics(task, preds, labels)
        assert set(res) == {"accuracy", "f1", "score"}
        assert res["accuracy"] == pytest.approx(acc)
        assert res["f1"] == pytest.approx(f1) == pytest.approx(2 / 3)
        assert res["score"] == pytest.approx((acc + f1) / 2)


def test_matthews_correlation():
    preds = [1, 1, 0, 1, 0, 0, 1, 1]
    labels = [1, 0, 0, 1, 1, 0, 1, 0]
    tp, tn, fp, fn = 3, 2, 2, 1
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))  # 4/sqrt(240)
    res = compute_metrics("cola", preds, labels)
    assert res["matthews_correlation"] == pytest.approx(mcc) and res["score"] == pytest.approx(mcc)
    # constant predictions: MCC is 0 by convention
    assert compute_metrics("CoLA", [1, 1, 1, 1], [1, 0, 1, 0])["score"] == 0.0


def test_pearson_spearman():
    preds = np.array([1.0, 2.0, 3.0, 10.0])
    labels = np.array([1.0, 3.0, 2.0, 4.0])
    # by hand: dx = [-3, -2, -1, 6], dy = [-1.5, 0.5, -0.5, 1.5]
    # sum dx*dy = 4.5 - 1 + 0.5 + 9 = 13; sum dx^2 = 50; sum dy^2 = 5
    pearson = 13 / math.sqrt(50 * 5)
    # ranks: [1, 2, 3, 4] vs [1, 3, 2, 4]; d^2 = [0, 1, 1, 0]; 1 - 6*2 / (4 * 15) = 0.8
    spearman = 0.8
    res = compute_metrics("stsb", preds, labels)
    assert res["pearson"] == pytest.approx(pearson)
    assert res["spearman"] == pytest.approx(spearman)
    assert res["score"] == pytest.approx((pearson + spearman) / 2)
    # [N, 1] regression head output and torch tensors give the same
    res2 = compute_metrics("STS-B", torch.tensor(preds).view(-1, 1).float(), torch.tensor(labels))
    assert res2["pearson"] == pytest.approx(pearson, abs=1e-6)
    # a collapsed regressor: correlation undefined -> 0.0 (not nan)
    assert compute_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])["score"] == 0.0


def test_metric_errors():
    with pytest.raises(ConfigError) as err:
        compute_metrics("glue9", [0], [0])
    assert err.value.field == "metrics.task"
    with pytest.raises(ConfigError):
        compute_metrics("sst2", [0, 1], [0])  # length mismatch
    with pytest.raises(ConfigError) as err:
        compute_metrics("sst2", [0, 1], [-1, -1])  # unlabelled test split
    assert err.value.field == "metrics.labels"
    with pytest.raises(ConfigError):
        compute_metrics("mnli", np.zeros((2, 2)), [0, 1])  # 2 logits for a 3-class task
    with pytest.raises(ConfigError):
        compute_metrics("sst2", [0.3, 0.7], [0, 1])  # float scores are not class ids
    with pytest.raises(ConfigError):
        compute_metrics("stsb", np.zeros((2, 3)), [1.0, 2.0])


def test_glue_average():
    results = {
        "mnli-m": {"accuracy": 0.8, "score": 0.8},
        "mnli-mm": {"accuracy": 0.6, "score": 0.6},
        "sst2": {"accuracy": 0.9, "score": 0.9},
        "rte": 0.5,
        "WNLI": {"accuracy": 0.1, "score": 0.1},
    }
    assert glue_average(results) == pytest.approx((0.8 + 0.6 + 0.9 + 0.5 + 0.1) / 5)
    assert glue_average(results, exclude=("wnli",)) == pytest.approx(0.7)  # MNLI counts twice
    assert glue_average(results, exclude=("mnli", "wnli")) == pytest.approx(0.7)
    real = {
        "mrpc": compute_metrics("mrpc", [1, 0], [1, 0]),
        "cola": compute_metrics("cola", [1, 0, 1, 0], [0, 1, 0, 1]),
    }
    assert glue_average(real) == pytest.approx((1.0 + -1.0) / 2)
    with pytest.raises(ConfigError):
        glue_average({"foo": 1.0})
    with pytest.raises(ConfigError):
        glue_average({"sst2": {"accuracy": 0.5}})
    with pytest.raises(ConfigError):
        glue_average({})


def test_task_metrics_table():
    assert TASK_METRICS["stsb"] == ("pearson", "spearman")
    assert TASK_METRICS["cola"] == ("matthews_correlation",)
    assert TASK_METRICS["qqp"] == ("accuracy", "f1")
