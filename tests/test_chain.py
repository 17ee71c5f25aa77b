"""Chained steps (``then:``, unikd.chain): validation names the step, each step starts from the previous student,
the last step is the run, --resume skips what finished; the TinyBERT preset is two steps."""

import json
from pathlib import Path

import pytest
import torch
from helpers import save_tiny_model, tiny_bert, tiny_task_options
from safetensors.torch import load_file

from unikd.config import load_config, step_dicts
from unikd.errors import ConfigError
from unikd.train import run

_HIDDEN = "plan.terms=[{knowledge: hidden, loss: mse, matching: uniform}]"
_LOGITS = "[{plan: {terms: [{knowledge: logits, loss: kl}]}, optim: {lr: 1.0e-12}}]"


def _glue(glue_dir: Path, tmp: Path) -> Path:
    root = tmp / "glue" / "SST-2"
    root.mkdir(parents=True)
    for name, rows in (("train.tsv", 96), ("dev.tsv", 48)):
        lines = (glue_dir / "SST-2" / name).read_text().splitlines(keepends=True)[: rows + 1]
        (root / name).write_text("".join(lines))
    return root.parent


def _opts(tmp: Path, teacher: Path, glue: Path) -> list[str]:
    fields = {"train.max_steps": 3, "train.batch_size": 16, "train.report_to": "[]", "optim.lr": "1e-3"}
    return tiny_task_options(teacher, glue, fields | {"output_dir": tmp / "chain"})


def test_step_configs_and_errors_name_the_step(tmp_path):
    base = [
        "stage=task",
        "teacher.path=t",
        "data.task=sst2",
        f"output_dir={tmp_path / 'r'}",
        "student.shape.num_layers=2",
    ]
    cfg = load_config(None, base + [_HIDDEN, f"then={_LOGITS}"])
    first, second = step_dicts(cfg)
    assert first["output_dir"] == str(tmp_path / "r" / "steps" / "1") and second["output_dir"] == str(tmp_path / "r")
    assert second["student"]["init"] == {"strategy": "pretrained", "pretrained": str(tmp_path / "r/steps/1/student")}
    assert second["student"]["shape"]["num_layers"] == 2  # the run's own fields carry over, the fragment wins
    assert [t["knowledge"] for t in second["plan"]["terms"]] == ["logits"] and second["optim"]["lr"] == 1e-12
    assert first["optim"]["lr"] != 0.0 and "then" not in first
    with pytest.raises(ConfigError, match=r"^then\[0\]\.plan\.terms\.0\.temperature: Input should be greater than 0"):
        load_config(None, base + ["then=[{plan: {terms: [{knowledge: logits, temperature: -1}]}}]"])
    with pytest.raises(ConfigError, match=r"^then\[0\]\.student: a chained step starts from the previous step's"):
        load_config(None, base + ["then=[{student: {shape: {num_layers: 1}}}]"])
    with pytest.raises(ConfigError, match=r"then\[1\]\.output_dir"):
        load_config(None, base + ["then=[{}, {output_dir: x}]"])


def test_tinybert_preset_is_two_steps_intermediate_then_logits():
    cfg = load_config(None, ["preset=tinybert", "teacher.path=t", "data.task=sst2"])
    assert [t.knowledge for t in cfg.plan.terms] == ["embeddings", "hidden", "attention"]
    assert cfg.plan.hard_label_weight == 0.0
    (second,) = step_dicts(cfg)[1:]
    assert [(t["knowledge"], t["loss"]) for t in second["plan"]["terms"]] == [("logits", "soft_ce")]
    assert second["plan"]["hard_label_weight"] == 0.0


def test_a_chain_trains_each_step_from_the_previous_student(tmp_path, glue_dir, minilm_path, monkeypatch):
    teacher = save_tiny_model(tiny_bert(2, 32, 4, positions=128), tmp_path / "teacher", minilm_path)
    opts = _opts(tmp_path, teacher, _glue(glue_dir, tmp_path))
    result = run(load_config(None, opts + [_HIDDEN, f"then={_LOGITS}"]))
    out = tmp_path / "chain"
    step1 = json.loads((out / "steps" / "1" / "metrics.json").read_text())
    assert [c["step"] for c in result["chain"]] == [1, 2] and result["chain"][0]["final"] == step1["final"]
    assert result["steps"] == 3 and json.loads((out / "metrics.json").read_text()) == result
    # the chain's seconds are its steps' (a study's wall column for a TinyBERT two-step run)
    assert result["chain"][0]["wall_s"] == step1["wall_s"] > 0
    assert result["wall_s"] == pytest.approx(sum(c["wall_s"] for c in result["chain"]))
    # step 2 trains with lr 1e-12, so the final student is step 1's student to 1e-9: it started from it
    before = load_file(out / "steps" / "1" / "student" / "model.safetensors")
    after = load_file(out / "student" / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.allclose(before[k], after[k], atol=1e-9) for k in before)
    # ... and step 1 moved away from the teacher-layer copy it started from (the hidden term trained it)
    copy = load_file(teacher / "model.safetensors")
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(before[key], copy[key])

    # --resume on the finished chain trains nothing and returns the same metrics
    calls = []
    import unikd.train.loop as train_module

    real = train_module.setup
    monkeypatch.setattr(train_module, "setup", lambda *a, **k: calls.append(a[0].output_dir) or real(*a, **k))
    assert run(load_config(None, opts + [_HIDDEN, f"then={_LOGITS}"]), resume=True) == result
    assert calls == [str(out / "steps" / "1"), str(out)]  # each step finds its metrics.json and returns them
    with pytest.raises(ConfigError, match="output_dir"):  # without --resume a finished step is not overwritten
        run(load_config(None, opts + [_HIDDEN, f"then={_LOGITS}"]))


def test_a_chain_under_several_processes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = load_config(None, ["stage=task", "teacher.path=t", "data.task=sst2", "then=[{}]"])
    with pytest.raises(ConfigError, match="then: chained steps run in one process"):
        run(cfg)
