"""benchmarks/topk_fidelity.py on the toy decoder: at k = the vocabulary the bucket loss is the full loss (up to the
fp16 storage), and the teacher's tail mass shrinks as k grows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from unikd.scratch import new_model

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "topk_fidelity.py"


def test_the_fidelity_benchmark_reaches_the_full_loss_at_the_full_vocabulary(teacher_run, tmp_path):
    root, _ = teacher_run
    teacher = root / "teacher" / "student"
    student = new_model(str(teacher), tmp_path / "random", layers=1, hidden_size=32, heads=2, max_positions=32)
    config = {
        "stage": "task",
        "teacher": {"path": str(teacher)},
        "data": {"files": {"train": str(root / "train.jsonl"), "validation": str(root / "validation.jsonl")}},
        "plan": {"terms": [{"knowledge": "logits", "loss": "kl"}]},
        "output_dir": str(tmp_path / "unused"),
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    spec = importlib.util.spec_from_file_location("topk_fidelity", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = [str(tmp_path / "c.yaml"), "data.max_length=16", "--student", student["path"], "--ks", "2,8,40"]
    result = bench.main([*args, "--rows", "20", "--out", str(tmp_path / "r.json")])
    by_k = result["terms"]["logits_kl"]["by_k"]
    assert result["positions"] > 20 and result["terms"]["logits_kl"]["full_vocabulary_loss"] > 0
    assert by_k[40]["ratio_to_full"] == pytest.approx(1.0, abs=2e-3)
    assert by_k[2]["teacher_tail_mass"] > by_k[8]["teacher_tail_mass"] > by_k[40]["teacher_tail_mass"]
    assert by_k[2]["loss"] <= by_k[8]["loss"] <= by_k[40]["loss"] * 1.002  # coarser buckets, less divergence
    assert by_k[8]["bytes_per_token"] == 8 * 4 + 4
