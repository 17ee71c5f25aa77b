"""The README's main job (unikd.quickstart) on a tiny random teacher: what each row trained on, equal step budgets,
and reuse of finished runs."""

import json

from conftest import save_tiny_model, tiny_bert

from unikd.config import read_run_config
from unikd.quickstart import run_quickstart


def test_quickstart_rows_steps_and_reuse(tmp_path, glue_dir, minilm_path, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    teacher = save_tiny_model(tiny_bert(4, 32, 4), tmp_path / "pretrained", minilm_path)
    kw = dict(teacher_rows=64, labels=16, transfer_weight=3, student_layers=2, epochs=1.0, pseudo_labels=True)
    kw |= dict(teacher=str(teacher), latency_repeats=1, allow_weak_teacher=True)
    out = tmp_path / "qs"
    rows = run_quickstart(out, **kw)["rows"]
    by = {r["model"]: r for r in rows}
    assert list(by) == ["teacher", "KD student", "no-KD student", "pseudo-label student"]
    assert by["KD student"]["trained_on"] == "16 labels + 48 unlabelled rows, the teacher's soft targets"
    assert by["no-KD student"]["trained_on"] == "16 labels"
    # 16 + 48 rows in batches of 32: 2 steps per epoch, and the no-KD student gets the same 2 steps on its 16 rows
    assert by["KD student"]["steps"] == by["no-KD student"]["steps"] == by["pseudo-label student"]["steps"] == 2
    assert by["teacher"]["steps"] == 2  # 64 rows, one epoch
    students = out / "16labels-x3-2layers-1ep"
    kd = read_run_config(students / "kd-student")
    assert kd.stage == "task" and kd.data.train_limit == 16 and kd.data.transfer[0].weight == 3
    assert [t.knowledge for t in kd.plan.terms] == ["logits"]
    nokd = read_run_config(students / "no-kd-student")
    assert nokd.stage == "finetune" and not nokd.data.transfer and nokd.student.init == kd.student.init
    pseudo = read_run_config(students / "pseudo-label-student")
    assert pseudo.plan.pseudo_labels and pseudo.plan.terms == []
    assert json.loads((out / "summary.json").read_text()) == rows
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
