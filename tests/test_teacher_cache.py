"""The teacher pass and the teacher-logit cache (unikd.teacher_cache: open_for_run, teacher_pass): every row once
before the first step, the same training as without the cache, and a killed pass that resumes."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import save_tiny_model, tiny_bert, tiny_task_options

from unikd.config import load_config
from unikd.errors import ConfigError
from unikd.teacher_cache import SharedTeacherOutputs, TeacherLogitCache, row_key, teacher_fingerprint
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
    opts = tiny_task_options(
        teacher,
        glue_dir,
        {
            "data.train_limit": 40,
            "data.eval_limit": 32,
            "train.epochs": 2,
            "train.batch_size": 8,
            "train.log_every": 1,
            "plan.terms": "[{knowledge: logits, loss: kl, temperature: 2}]",
        },
    )
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


def test_pseudo_labels_from_the_cache_train_as_from_the_live_teacher(tmp_path, glue_dir, minilm_path):
    """The pseudo-label baseline needs only the teacher's argmax: from the cache (one pass, shared with the KD
    runs of the same rows) it trains as with the teacher run on every batch."""
    teacher = save_tiny_model(tiny_bert(2, 32, 4, positions=128), tmp_path / "teacher", minilm_path)
    opts = tiny_task_options(
        teacher,
        glue_dir,
        {
            "data.train_limit": 24,
            "data.eval_limit": 32,
            "data.transfer": "[{kind: rest_of_train, weight: 2}]",
            "train.max_steps": 8,
            "train.batch_size": 8,
            "train.log_every": 1,
            "plan.terms": "[]",
            "plan.pseudo_labels": "true",
        },
    )
    live = run(load_config(None, opts + [f"output_dir={tmp_path / 'live'}"]))
    cached = run(load_config(None, opts + ["train.teacher_cache=true", f"output_dir={tmp_path / 'cached'}"]))
    assert cached["teacher_pass"]["rows"] > 24  # the transfer rows are labelled too
    np.testing.assert_allclose(_losses(tmp_path / "cached"), _losses(tmp_path / "live"), rtol=1e-4)
    assert cached["final"] == live["final"]


def test_regression_with_augmented_rows_trains_as_without_the_cache(tmp_path, glue_dir, minilm_path):
    """STS-B (a one-output regression head) with TinyBERT-augmented transfer rows: the cached predicted values of
    the labelled rows and of their copies are the live teacher's, row for row, so training is the same."""
    teacher = save_tiny_model(tiny_bert(2, 32, 4, positions=128, num_labels=1), tmp_path / "teacher", minilm_path)
    opts = tiny_task_options(
        teacher,
        glue_dir,
        {
            "data.task": "stsb",
            "data.train_limit": 24,
            "data.eval_limit": 32,
            "data.transfer": "[{kind: augment, method: tinybert, copies: 2, weight: 2}]",
            "train.max_steps": 6,
            "train.batch_size": 8,
            "train.log_every": 1,
        },
    )
    live = run(load_config(None, opts + [f"output_dir={tmp_path / 'live'}"]))
    cached = run(load_config(None, opts + ["train.teacher_cache=true", f"output_dir={tmp_path / 'cached'}"]))
    assert cached["teacher_pass"]["rows"] == 24 * 3  # the labelled rows and two copies of each
    np.testing.assert_allclose(_losses(tmp_path / "cached"), _losses(tmp_path / "live"), rtol=1e-4)
    assert cached["final"]["score"] == pytest.approx(live["final"]["score"], abs=1e-5)


def _row(ids):
    return {"input_ids": ids, "token_type_ids": [0] * len(ids)}


def test_the_shared_store_is_keyed_by_row_content_and_teacher(tmp_path, minilm_path):
    teacher = save_tiny_model(tiny_bert(1, 32, 4, positions=64), tmp_path / "teacher", minilm_path)
    rows = [_row([101, 7, 8, 102]), _row([101, 9, 102]), _row([101, 7, 102])]
    logits = torch.tensor([[1.0, -1.0, 0.5], [0.25, 2.0, -3.0], [4.0, 0.0, 1.0]])
    first = TeacherLogitCache(tmp_path / "a", 3, key={"run": "a"})
    first.share(SharedTeacherOutputs(tmp_path / "store", teacher), [row_key(r) for r in rows])
    first.store(torch.tensor([0, 2]), SimpleNamespace(logits=logits[[0, 2]]))
    first.flush()  # rows 0 and 2 go to one shard
    (shard,) = (tmp_path / "store").rglob("shard-*.npz")
    assert np.load(shard)["keys"].shape == (2, 16)

    # another run: other row order, one row new, top-1 only; it finds the two known rows by content
    order = [rows[2], _row([101, 5, 102]), rows[0]]
    second = TeacherLogitCache(tmp_path / "b", 3, topk=1, key={"run": "b"})
    second.share(SharedTeacherOutputs(tmp_path / "store", teacher), [row_key(r) for r in order])
    assert second.fill_from_shared([0, 1, 2]) == 2 and second.missing([0, 1, 2]) == [1]
    got = second.lookup(torch.tensor([0, 2]), {"input_ids": torch.ones(2, 3, dtype=torch.long)}).logits
    assert got.argmax(-1).tolist() == [0, 0] and got[:, 0].tolist() == [4.0, 1.0]  # the stored top-1 logits
    second.flush()  # nothing computed here: no new shard
    assert len(list((tmp_path / "store").rglob("shard-*.npz"))) == 1
    # the token type ids are part of a row's content
    assert row_key({"input_ids": [101, 7, 102], "token_type_ids": [0, 0, 1]}) != row_key(rows[2])

    # other weights: another fingerprint, nothing found; the same weights in another directory: the same one
    other = save_tiny_model(tiny_bert(1, 32, 4, positions=64, seed=5), tmp_path / "other", minilm_path)
    assert teacher_fingerprint(other) != teacher_fingerprint(teacher)
    third = TeacherLogitCache(tmp_path / "c", 3, key={"run": "c"})
    third.share(SharedTeacherOutputs(tmp_path / "store", other), [row_key(r) for r in rows])
    assert third.fill_from_shared([0, 1, 2]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(teacher, copy)
    assert teacher_fingerprint(copy) == teacher_fingerprint(teacher)


def test_runs_share_the_teacher_pass_through_the_store(tmp_path, glue_dir, minilm_path):
    teacher = save_tiny_model(tiny_bert(2, 32, 4, positions=128), tmp_path / "teacher", minilm_path)
    store = tmp_path / "store"
    opts = tiny_task_options(
        teacher,
        glue_dir,
        {
            "data.train_limit": 40,
            "data.eval_limit": 32,
            "train.max_steps": 4,
            "train.batch_size": 8,
            "train.log_every": 1,
            "train.teacher_cache": "true",
        },
    )
    kl = opts + ["plan.terms=[{knowledge: logits, loss: kl, temperature: 2}]"]
    first = run(load_config(None, kl + [f"train.teacher_cache_dir={store}", f"output_dir={tmp_path / 'kl'}"]))
    assert first["teacher_pass"]["rows"] == 40 and first["teacher_pass"]["reused"] == 0
    # another objective on the same rows: every row comes from the store, no teacher forward
    ce = opts + ["plan.terms=[{knowledge: logits, loss: soft_ce, temperature: 1}]"]
    shared = run(load_config(None, ce + [f"train.teacher_cache_dir={store}", f"output_dir={tmp_path / 'ce'}"]))
    assert shared["teacher_pass"]["rows"] == 0 and shared["teacher_pass"]["reused"] == 40
    alone = run(load_config(None, ce + [f"output_dir={tmp_path / 'ce-alone'}"]))
    assert "reused" not in alone["teacher_pass"]
    # the logits came from another run's batches: equal to fp32 rounding, and so is training
    np.testing.assert_allclose(_losses(tmp_path / "ce"), _losses(tmp_path / "ce-alone"), rtol=1e-5)
    np.testing.assert_allclose(
        np.load(tmp_path / "ce" / "teacher_cache" / "values.npy"),
        np.load(tmp_path / "ce-alone" / "teacher_cache" / "values.npy"),
        rtol=1e-5,
        atol=1e-6,
    )
    # another seed draws other labelled rows (train_limit shuffles by seed): only the rows both drew are reused
    other_seed = run(
        load_config(None, ce + ["seed=7", f"train.teacher_cache_dir={store}", f"output_dir={tmp_path / 's7'}"])
    )
    assert other_seed["teacher_pass"]["rows"] + other_seed["teacher_pass"]["reused"] == 40
    assert other_seed["teacher_pass"]["rows"] > 0


def test_a_shared_store_needs_the_teacher_cache():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["stage=task", "data.task=sst2", "train.teacher_cache_dir=/tmp/x"])
    assert err.value.field == "train.teacher_cache_dir" and "train.teacher_cache=true" in err.value.fix


def test_processes_split_one_list_even_when_one_reads_it_late(tmp_path):
    """Two processes (threads here, a Barrier as wait_for_everyone) share the cache files: the slow one reads the
    missing rows only after the fast one could have stored its share, and still every row is labelled exactly once
    and both report the whole pass (before the barrier after ``missing``, CI saw 16 of 32 rows)."""
    import threading
    import time

    from unikd.teacher_cache import teacher_pass

    rows, barrier, labelled, outcomes = 32, threading.Barrier(2, timeout=30), [], {}
    train_ds = {"input_ids": [[1] * (1 + i % 5) for i in range(rows)]}
    main = TeacherLogitCache(tmp_path / "c", rows)
    main.create(2)  # as open_for_run does: the main process creates the files, the others attach
    caches = [main, TeacherLogitCache(tmp_path / "c", rows)]
    slow_missing = caches[0].missing
    caches[0].missing = lambda r: (time.sleep(0.5), slow_missing(r))[1]  # process 0 reads late

    class Dataset:
        def __len__(self):
            return rows

        def __getitem__(self, key):
            return train_ds[key] if isinstance(key, str) else {"row": key}

    def process(rank: int) -> None:
        cache = caches[rank]
        accelerator = SimpleNamespace(
            is_main_process=rank == 0,
            is_local_main_process=rank == 0,
            process_index=rank,
            num_processes=2,
            device=torch.device("cpu"),
            wait_for_everyone=barrier.wait,
            print=lambda *a: None,
        )

        def fill_cache(batch, idx):
            labelled.extend(idx.tolist())
            cache.store(idx, SimpleNamespace(logits=torch.stack([idx.float(), -idx.float()], dim=-1)))

        distiller = SimpleNamespace(cache=cache, fill_cache=fill_cache)
        cfg = SimpleNamespace(
            train=SimpleNamespace(eval_batch_size=4, batch_size=2, progress=False, teacher_cache_dir=None)
        )
        collate = lambda items: {"row": torch.tensor([it["row"] for it in items])}
        outcomes[rank] = teacher_pass(cfg, accelerator, distiller, Dataset(), collate)

    threads = [threading.Thread(target=process, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(labelled) == list(range(rows))  # each row once, none left for training to compute
    assert outcomes[0]["rows"] == outcomes[1]["rows"] == rows
    values = np.load(tmp_path / "c" / "values.npy")
    np.testing.assert_array_equal(values[:, 0], np.arange(rows, dtype=np.float32))
