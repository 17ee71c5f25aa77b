"""plan.policy on causal-LM data: on-policy batches built from the student's own samples, sequence-level KD's
generation file (written once, resumed without duplicates, refused for another teacher), ``unikd generate``, and a
policy on data without prompts refused before training."""

from __future__ import annotations

import json
import random

import pytest
import torch
from causal_fixtures import causal_files
from helpers import word_tokenizer

from unikd.config import load_config
from unikd.errors import ConfigError
from unikd.generation import OnPolicy, SamplingConfig, generate
from unikd.train import run


def _student_args(root, out, *extra):
    return [
        "stage=task",
        f"teacher.path={root / 'teacher' / 'student'}",
        f"output_dir={out}",
        "student.shape.num_layers=1",
        "student.init.strategy=teacher-layers",
        "train.epochs=1",
        "optim.lr=3e-3",
        *extra,
        *causal_files(root),
    ]


def test_on_policy_batches_hold_the_students_samples_as_labels(teacher_run):
    from transformers import AutoModelForCausalLM

    root, _ = teacher_run
    tok = word_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(root / "teacher" / "student").eval()
    prompts = [tok("3 plus 4 is ?\n")["input_ids"], tok("1 plus 1 is ?\n")["input_ids"]]
    ids = torch.full((2, 9), tok.pad_token_id)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.tensor(p)
    batch = {
        "input_ids": ids,
        "attention_mask": (ids != 0).long(),
        "labels": ids.clone(),
        "prompt_length": torch.tensor([5, 5]),
    }
    policy = OnPolicy(1.0, SamplingConfig(max_new_tokens=3, temperature=0.0), tok, seed=0)
    out = policy.batch(model, batch, step=0)
    samples = generate(model, prompts, tok, SamplingConfig(max_new_tokens=3, temperature=0.0))
    for i, (p, s) in enumerate(zip(prompts, samples)):
        n = len(p) + len(s)
        assert out["input_ids"][i, :n].tolist() == p + s
        assert out["labels"][i, : len(p)].tolist() == [-100] * len(p)
        assert out["labels"][i, len(p) : n].tolist() == s and (out["labels"][i, n:] == -100).all()
        assert out["attention_mask"][i].tolist() == [1] * n + [0] * (out["input_ids"].shape[1] - n)
    assert policy.batches == 1 and policy.seconds > 0


def test_the_on_policy_share_is_drawn_per_step_and_reproducible():
    policy = OnPolicy(0.3, SamplingConfig(), None, seed=4)
    draws = [policy.due(step) for step in range(2000)]
    assert draws == [OnPolicy(0.3, SamplingConfig(), None, seed=4).due(step) for step in range(2000)]
    assert 0.27 < sum(draws) / len(draws) < 0.33
    assert not any(OnPolicy(0.0, SamplingConfig(), None, seed=4).due(s) for s in range(100))
    assert random.Random(0).random() == random.Random(0).random()


def test_an_on_policy_run_samples_at_its_share_of_the_steps(teacher_run, tmp_path):
    root, _ = teacher_run
    args = _student_args(
        root, tmp_path / "on", "plan.policy=on_policy", "plan.on_policy_lambda=0.5", "plan.sampling.max_new_tokens=4"
    )
    metrics = run(load_config(None, [*args, "plan.terms=[{knowledge: logits, loss: jsd}]", "plan.hard_label_weight=0"]))
    expected = sum(OnPolicy(0.5, SamplingConfig(), None, seed=42).due(s) for s in range(metrics["steps"]))
    assert metrics["on_policy"]["batches"] == expected > 0
    assert 0 < metrics["on_policy"]["generation_s"] < metrics["wall_s"]


def test_sequence_kd_writes_the_teachers_generations_once_and_resumes_without_duplicates(
    teacher_run, tmp_path, monkeypatch
):
    monkeypatch.setenv("UNIKD_CACHE", str(tmp_path / "cache"))
    root, _ = teacher_run
    seq = ["plan.policy=sequence_kd", "plan.sampling.temperature=0", "plan.sampling.max_new_tokens=4"]
    kd = run(load_config(None, [*_student_args(root, tmp_path / "kd", *seq), "plan.terms=[{knowledge: logits}]"]))
    record = kd["teacher_generations"]
    assert record["rows"] == 300 and record["generated_now"] == 300
    path = tmp_path / "cache" / "generations"
    (file,) = list(path.iterdir())
    lines = file.read_text().splitlines()
    assert len(lines) == 301 and json.loads(lines[0])["key"] == file.stem
    # a killed writer: the last 40 rows gone and a torn line; the next run completes it without duplicates
    file.write_text("\n".join(lines[:-40]) + "\n" + lines[-40][:7])
    twin = run(
        load_config(
            None, [*_student_args(root, tmp_path / "pseudo", *seq), "plan.terms=[]", "plan.hard_label_weight=1"]
        )
    )
    assert twin["teacher_generations"]["generated_now"] == 40
    rows = [json.loads(line) for line in file.read_text().splitlines()[1:]]
    assert sorted(r["idx"] for r in rows) == list(range(300))
    assert {r["idx"]: r["response_ids"] for r in rows} == {
        json.loads(line)["idx"]: json.loads(line)["response_ids"] for line in lines[1:]
    }  # greedy: the same generations again
    # the greedy teacher (dev perplexity about 1.1) answers most of the additions right; a unigram guess of the sum
    # would be right about 1 time in 19
    references = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    tok = word_tokenizer()
    right = sum(
        tok.decode(r["response_ids"], skip_special_tokens=True).split() == references[r["idx"]]["response"].split()
        for r in rows
    )
    assert right > 0.5 * len(rows)


def test_unikd_generate_writes_the_file_a_run_then_names(teacher_run, tmp_path):
    from typer.testing import CliRunner

    from unikd.cli import app

    root, _ = teacher_run
    args = _student_args(root, tmp_path / "run", "plan.policy=sequence_kd", "plan.sampling.temperature=0")
    out = tmp_path / "gen.jsonl"
    result = CliRunner().invoke(app, ["generate", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "300 prompts, 300 generated now" in result.output and len(out.read_text().splitlines()) == 301
    metrics = run(load_config(None, [*args, f"plan.generations={out}", "plan.terms=[{knowledge: logits}]"]))
    assert metrics["teacher_generations"]["generated_now"] == 0
    # the same file for other sampling settings is another key: refused, naming the field
    with pytest.raises(ConfigError) as info:
        other = [*args, f"plan.generations={out}", "plan.sampling.max_new_tokens=5", f"output_dir={tmp_path / 'b'}"]
        run(load_config(None, other))
    assert info.value.field == "plan.generations"


def test_a_policy_needs_prompts(tmp_path):
    cfg = load_config(
        None,
        [
            "stage=task",
            "teacher.path=/nonexistent",
            "data.task=sst2",
            "plan.policy=on_policy",
            f"output_dir={tmp_path}",
        ],
    )
    from unikd.train.inputs import load_inputs

    with pytest.raises(ConfigError) as info:
        load_inputs(cfg, None, True)
    assert info.value.field == "plan.policy"
