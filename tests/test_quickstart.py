"""The README's main job (unikd.quickstart) on a tiny random teacher: what each row trained on, equal step budgets,
and reuse of finished runs."""

import json

import pytest
from helpers import save_tiny_model, tiny_bert
from typer.testing import CliRunner

from unikd.config import read_run_config
from unikd.errors import ConfigError
from unikd.cli import app
from unikd.quickstart import parse_seeds, run_quickstart


def test_quickstart_rows_steps_and_reuse(tmp_path, glue_dir, minilm_path, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    teacher = save_tiny_model(tiny_bert(4, 32, 4), tmp_path / "pretrained", minilm_path)
    kw = dict(teacher_rows=64, labels=16, transfer_weight=3, student_layers=2, epochs=1.0, pseudo_labels=True)
    kw |= dict(teacher=str(teacher), latency_repeats=1, allow_weak_teacher=True)
    out = tmp_path / "qs"
    rows = run_quickstart(out, **kw)["rows"]
    by = {r["model"]: r for r in rows}
    kd_name = "KD student (TinyBERT two-step)"
    assert list(by) == ["teacher", kd_name, "no-KD student", "pseudo-label student"]
    assert by[kd_name]["trained_on"] == (
        "16 labels + 48 unlabelled rows, the teacher's hidden states and attention, then its soft targets "
        "(labels unused)"
    )
    assert by["no-KD student"]["trained_on"] == "16 labels"
    # 16 + 48 rows in batches of 32: 2 steps per epoch, split 1 + 1 over TinyBERT's two chained steps, and the
    # no-KD student gets the same 2 steps on its 16 rows
    assert by[kd_name]["steps"] == by["no-KD student"]["steps"] == by["pseudo-label student"]["steps"] == 2
    assert by["teacher"]["steps"] == 2  # 64 rows, one epoch
    students = out / "16labels-x3-2layers-1ep"
    step1, kd = read_run_config(students / "kd-student" / "steps" / "1"), read_run_config(students / "kd-student")
    assert [t.knowledge for t in step1.plan.terms] == ["embeddings", "hidden", "attention"]
    assert step1.train.max_steps == kd.train.max_steps == 1 and step1.plan.hard_label_weight == 0.0
    assert kd.stage == "task" and kd.data.train_limit == 16 and kd.data.transfer[0].weight == 3
    assert [(t.knowledge, t.loss) for t in kd.plan.terms] == [("logits", "soft_ce")]
    assert kd.student.init.pretrained == str(students / "kd-student" / "steps" / "1" / "student")
    nokd = read_run_config(students / "no-kd-student")
    assert nokd.stage == "finetune" and not nokd.data.transfer and nokd.student.init == step1.student.init
    # built from the fine-tuned teacher, as the study runner's no-KD twin is (its layers from init.source)
    assert nokd.teacher.path == step1.teacher.path == str(out / "teacher-64rows-1ep" / "student")
    pseudo = read_run_config(students / "pseudo-label-student")
    assert pseudo.plan.pseudo_labels and pseudo.plan.terms == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == rows and summary["seeds"] == [42]
    # one seed: the differences without an interval
    assert summary["paired"][f"{kd_name} - no-KD student"]["ci_low"] is None
    assert summary["paired"][f"{kd_name} - no-KD student"]["diff_mean"] == pytest.approx(
        by[kd_name]["dev_accuracy"] - by["no-KD student"]["dev_accuracy"]
    )
    for r in rows:
        assert 0.0 <= r["dev_accuracy"] <= 1.0 and r["latency_ms_b1"] > 0

    # a second call reuses every finished run; a changed setting reruns only what it changes
    dirs = [out / "teacher-64rows-1ep", students / "kd-student", students / "no-kd-student"]
    stamps = [(d / "metrics.json").stat().st_mtime_ns for d in dirs]
    run_quickstart(out, **kw)
    assert [(d / "metrics.json").stat().st_mtime_ns for d in dirs] == stamps
    rows = run_quickstart(out, **(kw | {"labels": 8}))["rows"]
    assert (dirs[0] / "metrics.json").stat().st_mtime_ns == stamps[0]  # the same teacher
    assert read_run_config(out / "8labels-x3-2layers-1ep" / "no-kd-student").data.train_limit == 8
    assert rows[1]["trained_on"].startswith("8 labels + 24 unlabelled")

    # a folder holding a run of other settings (an older unikd's quickstart) is kept beside it, and retrained
    nokd_dir = students / "no-kd-student"
    older = (nokd_dir / "config.yaml").read_text().replace("lr: 0.0001", "lr: 0.0002")
    assert older != (nokd_dir / "config.yaml").read_text()
    (nokd_dir / "config.yaml").write_text(older)
    run_quickstart(out, **kw)
    assert (students / "no-kd-student.previous-1" / "config.yaml").read_text() == older
    assert read_run_config(nokd_dir) == nokd and (nokd_dir / "metrics.json").is_file()

    # several seeds: the seed-42 folders are reused, each other seed trains its own students; each row is the
    # mean over the seeds and the KD student's paired differences get a Student-t interval
    many = run_quickstart(out, **(kw | {"seeds": [42, 7]}))
    assert (dirs[1] / "metrics.json").stat().st_mtime_ns == stamps[1]
    acc = {
        (model, seed): json.loads((students / where / folder / "metrics.json").read_text())["final"]["accuracy"]
        for model, folder in ((kd_name, "kd-student"), ("no-KD student", "no-kd-student"))
        for seed, where in ((42, "."), (7, "seed-7"))
    }
    assert read_run_config(students / "seed-7" / "kd-student").seed == 7
    by = {r["model"]: r for r in many["rows"]}
    assert by[kd_name]["per_seed"] == [acc[kd_name, 42], acc[kd_name, 7]]
    assert by[kd_name]["dev_accuracy"] == pytest.approx((acc[kd_name, 42] + acc[kd_name, 7]) / 2)
    diffs = [acc[kd_name, s] - acc["no-KD student", s] for s in (42, 7)]
    pair = many["paired"][f"{kd_name} - no-KD student"]
    half = 12.7062047 * abs(diffs[0] - diffs[1]) / 2  # t(0.975, 1) * sd / sqrt(2), sd = |d1 - d2| / sqrt(2)
    assert pair["per_seed"] == pytest.approx(diffs) and pair["n"] == 2
    assert (pair["ci_low"], pair["ci_high"]) == pytest.approx((sum(diffs) / 2 - half, sum(diffs) / 2 + half))

    # --method logits: one step of logits KL + labels, in its own folder beside the TinyBERT student's
    rows = run_quickstart(out, **(kw | {"method": "logits", "pseudo_labels": False}))["rows"]
    assert [r["model"] for r in rows] == ["teacher", "KD student (logits KD)", "no-KD student"]
    assert (
        rows[1]["trained_on"] == "16 labels + 48 unlabelled rows, the teacher's soft targets" and rows[1]["steps"] == 2
    )
    logits = read_run_config(students / "kd-student-logits")
    assert [t.knowledge for t in logits.plan.terms] == ["logits"] and logits.train.teacher_cache
    assert (dirs[1] / "metrics.json").stat().st_mtime_ns == stamps[1]  # the TinyBERT student is left as it was


def test_quickstart_unknown_method_and_bad_seeds_are_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="--method") as exc:
        run_quickstart(tmp_path / "qs", method="hinton")
    assert "tinybert, logits" in str(exc.value) and not (tmp_path / "qs").exists()
    assert parse_seeds("1, 2,3") == [1, 2, 3]
    for bad in ("", "one", "1,-2", "1.5"):
        with pytest.raises(ConfigError) as exc:
            parse_seeds(bad)
        assert exc.value.field == "--seeds" and "1,2,3" in exc.value.fix
    with pytest.raises(ConfigError, match="--seeds"):
        run_quickstart(tmp_path / "qs", seeds=[])
    result = CliRunner().invoke(app, ["quickstart", "--out", str(tmp_path / "qs"), "--seeds", "1,x"])
    assert result.exit_code == 2 and "error: --seeds:" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "qs").exists()
