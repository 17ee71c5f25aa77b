"""The teacher pass and the teacher-logit cache (unikd.teacher_cache, unikd.train._teacher_pass): every row once
before the first step, the same training as without the cache, and a killed pass that resumes."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from conftest import save_tiny_model, tiny_bert

from unikd.config import load_config
from unikd.teacher_cache import TeacherLogitCache
from unikd.train import run


def test_missing_rows_store_and_lookup(tmp_path):
    cache = TeacherLogitCache(tmp_path / "c", 6, key={"teacher": "t"})
    assert cache.missing([5, 0, 3]) == [5, 0, 3]  # nothing stored, no files yet
    logits = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    cache.store(torch.tensor([3, 0]), SimpleNamespace(logits=logits))
    assert cache.missing([5, 0, 3, 1]) == [5, 1]
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long)}
    assert torch.equal(cache.lookup(torch.tensor([0, 3]), batch).logits, logits[[1, 0]])
    assert cache.lookup(torch.tensor([0, 1]), batch) is None  # row 1 is not stored
    cache.flush()
    # a later process (a resumed run) finds the stored rows; another key (another teacher) finds none
    assert TeacherLogitCache(tmp_path / "c", 6, key={"teacher": "t"}).missing(range(6)) == [1, 2, 4, 5]
    assert TeacherLogitCache(tmp_path / "c", 6, key={"teacher": "u"}).missing(range(6)) == list(range(6))


def _losses(run_dir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = []
    for events in {p.parent for p in (run_dir / "logs").rglob("events.out.tfevents*")}:
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "loss/total" in acc.Tags()["scalars"]:
            found.append([e.value for e in sorted(acc.Scalars("loss/total"), key=lambda e: e.step)])
    (series,) = found  # one run, one series
    return series


def test_the_teacher_pass_fills_every_row_and_trains_as_without_the_cache(tmp_path, glue_dir, minilm_path):
    teacher = save_tiny_model(tiny_bert(2, 32, 4, positions=128), tmp_path / "teacher", minilm_path)
    opts = [
        "stage=task",
        f"teacher.path={teacher}",
        "teacher.allow_weak=true",
        "student.shape.num_layers=1",
        "student.init.strategy=teacher-layers",
        "data.task=sst2",
        f"data.data_dir={glue_dir}",
        "data.train_limit=40",
        "data.eval_limit=32",
        "data.max_length=32",
        "train.epochs=2",
        "train.batch_size=8",
        "train.log_every=1",
        "train.progress=false",
        "plan.terms=[{knowledge: logits, loss: kl, temperature: 2}]",
    ]
    plain = run(load_config(None, opts + [f"output_dir={tmp_path / 'plain'}"]))
    cached = run(load_config(None, opts + ["train.teacher_cache=true", f"output_dir={tmp_path / 'cached'}"]))
    assert cached["teacher_pass"]["rows"] == 40 and cached["teacher_pass"]["rows_per_s"] > 0
    assert np.load(tmp_path / "cached" / "teacher_cache" / "filled.npy").all()
    # the pass pads rows by length, the steps by batch: the logits agree to fp32 rounding, and so does training
    np.testing.assert_allclose(_losses(tmp_path / "cached"), _losses(tmp_path / "plain"), rtol=1e-4)
    assert cached["final"] == plain["final"]

    # a killed run: the pass ran (every row stored), training stopped at step 3; the resumed run computes no row again
    killed = opts + ["train.teacher_cache=true", "train.save_every=3", f"output_dir={tmp_path / 'killed'}"]
    run(load_config(None, killed), stop_after=3)
    filled = tmp_path / "killed" / "teacher_cache" / "filled.npy"
    half = np.load(filled)
    half[20:] = False  # as if the pass itself had been killed half way
    np.save(filled, half)
    resumed = run(load_config(None, killed), resume=True)
    assert resumed["teacher_pass"]["rows"] == 20 and resumed["final"] == cached["final"]
    assert json.loads((tmp_path / "killed" / "metrics.json").read_text())["teacher_pass"]["rows"] == 20
