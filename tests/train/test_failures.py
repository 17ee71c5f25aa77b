"""A broken run is never reported as a result (issue 15, the silent failures): a non-finite loss stops the run, a
resume checks its config and its checkpoint, a teacher no better than a constant is refused, an empty dev split is
refused; the CLI's exit codes tell them apart. Tiny BERTs and real SST-2 rows."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from helpers import save_tiny_model, tiny_bert
from safetensors.torch import load_file
from typer.testing import CliRunner

from unikd.cli import app
from unikd.config import load_config
from unikd.errors import ConfigError, DataError, TrainingError, exit_code
from unikd.study.runner import execute_run
from unikd.train import run

cli = CliRunner()
DEV_ROWS = 96


def _common(tmp: Path, name: str, glue_dir: Path, steps: int = 6) -> list[str]:
    return [
        f"data.data_dir={glue_dir}",
        "data.task=sst2",
        "data.train_limit=192",
        f"data.eval_limit={DEV_ROWS}",
        "data.max_length=32",
        f"train.max_steps={steps}",
        "train.batch_size=16",
        "train.progress=false",
        "train.log_every=2",
        "optim.lr=1e-3",
        f"output_dir={tmp / name}",
    ]


def _labels(path: Path) -> list[int]:
    with open(path, encoding="utf-8") as f:
        return [int(row["label"]) for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def _majority_baseline(glue_dir: Path) -> float:
    """Hand-made: the share of the first DEV_ROWS dev rows whose label is the majority label of all train rows
    (train_limit=192 draws a subset; its majority is checked to be the same class below)."""
    dev = _labels(glue_dir / "SST-2" / "dev.tsv")[:DEV_ROWS]
    majority = Counter(_labels(glue_dir / "SST-2" / "train.tsv")).most_common(1)[0][0]
    return sum(y == majority for y in dev) / len(dev)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, minilm_path) -> Path:
    return save_tiny_model(tiny_bert(2, 32, 4, positions=128), tmp_path_factory.mktemp("base") / "bert", minilm_path)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, glue_dir, base_model) -> Path:
    """A unikd fine-tune (its run directory; the teacher is its student/)."""
    tmp = tmp_path_factory.mktemp("teacher")
    run(load_config(None, _common(tmp, "run", glue_dir, steps=8) + ["stage=finetune", f"teacher.path={base_model}"]))
    return tmp / "run"


def _kd(tmp: Path, name: str, glue_dir: Path, teacher: Path, *extra: str, steps: int = 6):
    return load_config(
        None,
        _common(tmp, name, glue_dir, steps=steps)
        + ["stage=task", f"teacher.path={teacher}", "student.shape.num_layers=1", "teacher.allow_weak=true", *extra],
    )


# ---- 1. non-finite training ---------------------------------------------------------------------------------
def test_lr_1e3_stops_at_the_first_nan_naming_term_and_step_and_keeps_the_last_good_checkpoint(
    teacher_run, tmp_path, glue_dir
):
    cfg = _kd(
        tmp_path,
        "nan",
        glue_dir,
        teacher_run / "student",
        "optim.lr=1e3",
        "train.save_every=1",
        "train.keep_checkpoints=50",
        steps=40,
    )
    with pytest.raises(TrainingError) as info:
        run(cfg)
    err = info.value
    out = tmp_path / "nan"
    assert err.step is not None and 1 < err.step <= 40
    assert f"the loss went non-finite at step {err.step}: {err.field}" in str(err)
    assert err.field in ("logits_kl", "hidden_mse", "hard", "total") or err.field.startswith(("logits", "hidden"))
    assert "optim.lr (now 1000)" in str(err)
    assert not (out / "student").exists() and not (out / "metrics.json").exists()
    steps = sorted(int(p.name[5:]) for p in (out / "checkpoints").glob("step-*"))
    assert steps == list(range(1, err.step))  # a checkpoint every step up to the bad one, none from it on
    last = load_file(out / "checkpoints" / f"step-{steps[-1]}" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in last.values())  # the kept checkpoint is whole and finite
    assert f"the last good checkpoint is {out / 'checkpoints' / f'step-{steps[-1]}'}" in str(err)


def test_weight_1e39_names_the_term_at_step_1_and_the_study_runner_records_it_failed(teacher_run, tmp_path, glue_dir):
    cfg = _kd(
        tmp_path,
        "w",
        glue_dir,
        teacher_run / "student",
        "plan.terms=[{knowledge: logits, loss: kl}]",
        "plan.terms.0.weight=1e39",
        "train.save_every=2",
    )
    with pytest.raises(TrainingError, match=r"non-finite at step 1: logits_kl \(plan.terms.0, weight 1e\+39\) = inf"):
        run(cfg)
    assert not (tmp_path / "w" / "checkpoints").exists()  # nothing was ever saved of it
    assert not (tmp_path / "w" / "student").exists() and not (tmp_path / "w" / "metrics.json").exists()
    # the study runner's execution of one run: recorded failed with that message, not done
    cfg = cfg.model_copy(update={"output_dir": str(tmp_path / "study-run")})
    outcome = execute_run({"config": cfg.model_dump(mode="json")})
    assert outcome["status"] == "failed"
    assert outcome["error"].startswith("TrainingError: logits_kl: the loss went non-finite at step 1")


@pytest.mark.parametrize("path", ["_observe_floats", "_observe_tensors"])
def test_the_watch_keeps_the_first_bad_step_and_term_on_both_paths(path):
    """The CPU (float) path and the device (tensor) path record the same thing: the FIRST non-finite step, its first
    bad term and value; float32 overflow of a weight counts; a hard loss not in the sum (weight 0) does not."""
    from unikd.guards import FiniteWatch
    from unikd.plan import PlanConfig

    plan = PlanConfig.model_validate(
        {
            "terms": [{"knowledge": "logits", "loss": "kl", "weight": 1e38}, {"knowledge": "hidden"}],
            "hard_label_weight": 0,
        }
    )
    watch = FiniteWatch(plan)
    names = ["logits_kl", "hidden_mse", "hard", "total"]
    watch.names = names

    def observe(values, step):
        weights = watch._weights(names, step, 10)
        floats = getattr(watch, path) == watch._observe_floats
        getattr(watch, path)(values if floats else [torch.tensor(v) for v in values], weights, step)

    observe([1.0, 2.0, float("nan"), 3.0], 0)  # hard is NaN but not in the sum (weight 0): fine
    watch.check("never")
    observe([5.0, 2.0, 0.0, 3.0], 3)  # 5 * 1e38 overflows float32: inf, at (1-based) step 4
    observe([1.0, float("nan"), 0.0, float("nan")], 4)  # later: not the first
    with pytest.raises(
        TrainingError,
        match=r"^logits_kl: the loss went non-finite at step 4: logits_kl "
        r"\(plan.terms.0, weight 1e\+38\) = inf after its weight \(unweighted 5\)\. Fix: lower",
    ):
        watch.check(lambda: "lower it")
    assert watch.names == names


def test_fp16_on_a_cpu_is_refused_naming_train_precision(tmp_path, glue_dir, base_model):
    if torch.cuda.is_available():
        pytest.skip("fp16 runs on a GPU")
    cfg = load_config(
        None,
        _common(tmp_path, "fp16", glue_dir) + ["stage=finetune", f"teacher.path={base_model}", "train.precision=fp16"],
    )
    with pytest.raises(ConfigError, match=r"^train.precision: fp16 mixed precision needs a (CUDA )?GPU.*bf16"):
        run(cfg)
    assert not (tmp_path / "fp16").exists()


# ---- 2. checked resume ----------------------------------------------------------------------------------------
def test_resume_with_a_changed_lr_is_refused_and_accepted_only_with_the_flag(tmp_path, glue_dir, base_model):
    args = _common(tmp_path, "r", glue_dir) + ["stage=finetune", f"teacher.path={base_model}", "train.save_every=3"]
    assert run(load_config(None, args), stop_after=3) == {"stopped_at": 3}
    stored = (tmp_path / "r" / "config.yaml").read_text()
    changed = load_config(None, args + ["optim.lr=2e-3", "train.log_every=1"])
    with pytest.raises(
        ConfigError,
        match=r"^optim.lr: --resume with a config that differs.*optim.lr \(0.001 -> 0.002\)"
        r".*--resume-with-changes",
    ):
        run(changed, resume=True)
    assert (tmp_path / "r" / "config.yaml").read_text() == stored  # not rewritten with values the run never used
    # a change that cannot change the result (train.log_every) alone is accepted and not recorded
    result = run(changed, resume=True, resume_with_changes=True)
    assert result["steps"] == 6
    history = json.loads((tmp_path / "r" / "resume_history.json").read_text())
    assert [(h["step"], h["changes"]) for h in history] == [(3, {"optim.lr": {"old": 0.001, "new": 0.002}})]
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["optim"]["lr"] == 0.002


def _corrupt(ckpt: Path, what: str) -> None:
    if what == "random_states_0.pkl":
        (ckpt / what).unlink()
    else:
        (ckpt / what).write_bytes(b"\x00garbage")


@pytest.mark.parametrize("what", ["random_states_0.pkl", "model.safetensors", "optimizer.bin", "unikd_state.json"])
def test_a_broken_newest_checkpoint_falls_back_to_the_one_before_with_a_warning(
    what, tmp_path, glue_dir, base_model, capsys
):
    args = ["stage=finetune", f"teacher.path={base_model}", "train.save_every=2", "train.eval_every=100"]
    full = run(load_config(None, _common(tmp_path, "full", glue_dir) + args))
    cfg = load_config(None, _common(tmp_path, "parts", glue_dir) + args)
    run(cfg, stop_after=4)
    _corrupt(tmp_path / "parts" / "checkpoints" / "step-4", what)
    resumed = run(cfg, resume=True)
    err = capsys.readouterr().err
    assert f"warning: cannot resume from {tmp_path / 'parts' / 'checkpoints' / 'step-4'}" in err
    assert "trying the checkpoint before it" in err
    assert resumed["final"] == full["final"]  # resumed from step 2: the uninterrupted run's numbers, exactly
    a = load_file(tmp_path / "full" / "student" / "model.safetensors")
    b = load_file(tmp_path / "parts" / "student" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_no_loadable_checkpoint_is_an_error_naming_output_dir(tmp_path, glue_dir, base_model):
    args = _common(tmp_path, "r", glue_dir) + ["stage=finetune", f"teacher.path={base_model}", "train.save_every=2"]
    run(load_config(None, args), stop_after=4)
    for ckpt in (tmp_path / "r" / "checkpoints").glob("step-*"):
        (ckpt / "random_states_0.pkl").unlink()
    with pytest.raises(
        ConfigError,
        match=r"^output_dir: no checkpoint in .* can be resumed from \(step-4: "
        r"random_states_0.pkl unreadable.*step-2: random_states_0.pkl unreadable",
    ):
        run(load_config(None, args), resume=True)


# ---- 3. a degenerate teacher ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def constant_teacher(tmp_path_factory, minilm_path) -> Path:
    """A 'fine-tuned' teacher that always answers class 0, the minority class of SST-2's train split."""
    model = tiny_bert(2, 32, 4, positions=128)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([5.0, -5.0]))
    return save_tiny_model(model, tmp_path_factory.mktemp("const") / "teacher", minilm_path)


def test_a_teacher_no_better_than_the_majority_class_is_refused_unless_allow_weak(constant_teacher, tmp_path, glue_dir):
    baseline = _majority_baseline(glue_dir)
    assert baseline == 51 / 96  # SST-2: 1 is the train majority; 51 of the first 96 dev rows are 1
    cfg = _kd(tmp_path, "weak", glue_dir, constant_teacher, "teacher.allow_weak=false")
    expected = (
        rf"^teacher.path: the teacher '{constant_teacher}' scores {1 - baseline:.4f} on dev \(GLUE's score\), not above the majority "
        rf"class 1 \({baseline:.4f}\) by 0.01.*Fix: fine-tune the teacher better.*teacher.allow_weak=true"
    )
    with pytest.raises(ConfigError, match=expected):
        run(cfg)
    assert not (tmp_path / "weak" / "student").exists()
    metrics = run(_kd(tmp_path, "allowed", glue_dir, constant_teacher))  # allow_weak=true
    assert metrics["teacher_dev"]["source"] == "evaluated"
    assert metrics["teacher_dev"]["score"] == pytest.approx(1 - baseline)
    assert metrics["trivial_baseline"]["score"] == pytest.approx(baseline)
    assert metrics["trivial_baseline"]["predictor"] == "the majority class 1"


def test_a_unikd_teachers_dev_score_is_reused_when_its_run_scored_the_same_rows(teacher_run, tmp_path, glue_dir):
    finetune = json.loads((teacher_run / "metrics.json").read_text())
    assert finetune["trivial_baseline"]["score"] == pytest.approx(_majority_baseline(glue_dir))
    same = run(_kd(tmp_path, "same", glue_dir, teacher_run / "student"))
    assert same["teacher_dev"]["source"] == str(teacher_run / "metrics.json")
    assert same["teacher_dev"]["score"] == finetune["final"]["score"]
    other = run(_kd(tmp_path, "other", glue_dir, teacher_run / "student", "data.eval_limit=64"))
    assert other["teacher_dev"]["source"] == "evaluated"  # other dev rows: measured, not read


# ---- 4. an empty dev split ------------------------------------------------------------------------------------
def test_an_empty_dev_split_is_refused_before_training(tmp_path, glue_dir, base_model):
    glue = tmp_path / "glue"
    (glue / "SST-2").mkdir(parents=True)
    shutil.copy(glue_dir / "SST-2" / "train.tsv", glue / "SST-2" / "train.tsv")
    (glue / "SST-2" / "dev.tsv").write_text("sentence\tlabel\n")
    cfg = load_config(
        None,
        _common(tmp_path, "e", glue_dir) + ["stage=finetune", f"teacher.path={base_model}", f"data.data_dir={glue}"],
    )
    # the local reader says it first (the file holds only its header); a split empty otherwise (the hub,
    # data.eval_limit) is refused by the trainer: "the sst2 dev split 'validation' has no rows"
    with pytest.raises(
        DataError, match=r"^data.data_dir: .*(dev.tsv has no data rows|dev split 'validation' has no rows)"
    ):
        run(cfg)
    assert not (tmp_path / "e" / "metrics.json").exists()


# ---- 5. exit codes --------------------------------------------------------------------------------------------
def test_exit_codes_tell_config_data_and_training_errors_apart(tmp_path, glue_dir, base_model, teacher_run):
    assert exit_code(ConfigError("plan.terms.0.loss", "x")) == 2
    assert exit_code(ConfigError("data.task", "x")) == 3
    assert exit_code(DataError("corpus", "x")) == 3
    assert exit_code(TrainingError("hard", "x")) == 4
    finetune = ["finetune", f"teacher.path={base_model}", "data.task=sst2", "train.progress=false"]
    bad_dir = cli.invoke(app, [*finetune, f"data.data_dir={tmp_path / 'x'}", f"output_dir={tmp_path / 'o1'}"])
    assert bad_dir.exit_code == 3 and "data.data_dir" in bad_dir.output
    bad_field = cli.invoke(app, [*finetune, "optim.lr=-1", f"output_dir={tmp_path / 'o2'}"])
    assert bad_field.exit_code == 2 and "optim.lr" in bad_field.output
    nan = cli.invoke(
        app,
        [
            "distill",
            *_common(tmp_path, "cli-nan", glue_dir),
            "stage=task",
            f"teacher.path={teacher_run / 'student'}",
            "teacher.allow_weak=true",
            "student.shape.num_layers=1",
            "plan.terms=[{knowledge: logits, loss: kl}]",
            "plan.terms.0.weight=1e39",
        ],
    )
    assert nan.exit_code == 4 and "non-finite at step 1" in nan.output


def test_the_weak_teacher_check_compares_teacher_and_baseline_in_the_runs_metric(tmp_path):
    """A teacher fine-tuned with eval.metric: mcc, distilled by a run without eval.metric: its stored MCC is never
    compared with the baseline's accuracy; the stored accuracy is (a run with eval.metric: mcc gets the MCC)."""
    from unikd.data import TaskSpec
    from unikd.guards import stored_teacher_score

    run_dir = tmp_path / "teacher"
    (run_dir / "student").mkdir(parents=True)
    files = {"train": str(tmp_path / "t.csv"), "validation": str(tmp_path / "d.csv")}
    ft = load_config(None, ["stage=finetune", "teacher.path=x/y", f"data.files={files}", "eval.metric=mcc"])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(ft.model_dump(mode="json")))
    final = {"accuracy": 0.72, "mcc": 0.26, "macro_f1": 0.6, "score": 0.26}
    (run_dir / "metrics.json").write_text(json.dumps({"final": final}))
    spec = TaskSpec(name="own", task_type="classification", label_names=("no", "yes"))
    kd = ["stage=task", f"teacher.path={run_dir / 'student'}", f"data.files={files}"]
    by_default = stored_teacher_score(run_dir / "student", load_config(None, kd), spec)
    assert by_default["score"] == 0.72 and by_default["scored_by"] == "accuracy"
    assert stored_teacher_score(run_dir / "student", load_config(None, kd + ["eval.metric=mcc"]), spec)["score"] == 0.26
    by_f1 = stored_teacher_score(run_dir / "student", load_config(None, kd + ["eval.metric=macro_f1"]), spec)
    assert by_f1["score"] == 0.6
    # a metric the stored entry lacks: measured again (None), never the stored score of another metric
    assert stored_teacher_score(run_dir / "student", load_config(None, kd + ["eval.metric=micro_f1"]), spec) is None
