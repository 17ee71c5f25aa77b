"""``unikd recipe`` on a decoder teacher and prompt/response files: the causal-LM branch's plan, schedule and
reasons, its twin, and the plans it refuses."""

from __future__ import annotations

import math

import pytest

from unikd.config import read_run_config
from unikd.errors import ConfigError
from unikd.identity import no_kd_twin
from unikd.recipe import make_recipe, twin_path, write_recipe
from unikd.recipe_causal import BATCH, EVIDENCE


def test_a_decoder_teacher_on_prompt_response_files_gets_the_causal_plan(teacher_run, tmp_path):
    root, _ = teacher_run
    files = f"train={root / 'train.jsonl'},validation={root / 'validation.jsonl'}"
    recipe = make_recipe(str(root / "teacher" / "student"), "1/2", data_files=files, max_length=16)
    cfg = recipe.config
    assert [(t.knowledge, t.loss, t.temperature) for t in cfg.plan.terms] == [("logits", "kl", 1.0)]
    assert cfg.plan.hard_label_weight == 1.0 and not cfg.then and not cfg.data.transfer
    assert (cfg.train.batch_size, cfg.train.max_steps) == (BATCH, math.ceil(300 / BATCH))  # one epoch of 300 rows
    assert cfg.student.init.strategy == "teacher-layers" and cfg.eval.generation.rows == 32
    lines = [r.line() for r in recipe.reasons]
    assert any(f"{EVIDENCE['forward KL']:.2f}" in line and "#generative-models" in line for line in lines)
    path = write_recipe(recipe, tmp_path / "r.yaml")
    twin = read_run_config(twin_path(path))
    assert twin.stage == "finetune" and twin.train.max_steps == cfg.train.max_steps
    kd = read_run_config(path)
    assert twin.student == kd.student and twin.data == kd.data and twin.optim == kd.optim  # the same student, rows
    assert no_kd_twin(kd.model_dump(mode="json"))[0]["train"]["max_steps"] == twin.train.max_steps


def test_the_two_step_plan_is_refused_on_causal_data(teacher_run):
    root, _ = teacher_run
    files = f"train={root / 'train.jsonl'},validation={root / 'validation.jsonl'}"
    with pytest.raises(ConfigError) as exc:
        make_recipe(str(root / "teacher" / "student"), "1/2", data_files=files, max_length=16, plan="two-step")
    assert exc.value.field == "--plan"
