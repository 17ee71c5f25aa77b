"""Two processes in one gloo group on the CPU, through the real trainer (tiny models, real SST-2 rows).

One launch (``torch.distributed.run --nproc_per_node 2`` with ``ACCELERATE_USE_CPU=true``) runs every 2-process job
of this module one after another (tests/distributed_driver.py); the single-process reference runs in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FIXTURES, ROOT, TESTS, save_tiny_model, tiny_bert
from safetensors.torch import load_file
from transformers import BertForMaskedLM

from unikd.config import load_config
from unikd.errors import ConfigError
from unikd.train import run

HERE = Path(__file__).resolve().parent
SRC = ROOT / "src"
TOTAL_STEPS = 8  # 32 rows, 2 epochs, global batch 8 (one process x 8, or two x 4)


def _task(out: Path, teacher: Path, glue_dir: Path, batch: int, *extra: str) -> list[str]:
    return [
        "stage=task",
        f"teacher.path={teacher}",
        "teacher.allow_weak=true",  # a random tiny teacher: the point here is the processes, not its score
        f"data.data_dir={glue_dir}",
        "data.task=sst2",
        "data.train_limit=32",
        "data.eval_limit=32",
        "data.max_length=32",
        "student.shape.num_layers=1",
        "student.init.strategy=teacher-layers",
        "plan.terms=[{knowledge: logits, loss: kl, temperature: 2.0}]",
        "plan.hard_label_weight=1.0",
        "optim.lr=1e-3",
        "optim.warmup_ratio=0.25",
        f"train.batch_size={batch}",
        "train.epochs=2",  # epochs, not max_steps: the step count must come from the sharded loader
        "train.log_every=1",
        "train.progress=false",
        "train.eval_batch_size=16",
        "seed=3",
        f"output_dir={out}",
        *extra,
    ]


#: the decoder job's memory settings: the top-k token cache at k = the toy vocabulary, and chunks of 5 tokens
CACHED_AND_CHUNKED = ("train.teacher_cache=true", "train.teacher_cache_topk=40", "train.logits_chunk_tokens=5")


def _causal(root: Path, out: Path, batch: int, *extra: str) -> list[str]:
    """Token-level KD from the toy decoder (tests/train/causal_fixtures.py) on its prompt/response rows."""
    return [
        "stage=task",
        f"teacher.path={root / 'teacher' / 'student'}",
        f"data.files.train={root / 'train.jsonl'}",
        f"data.files.validation={root / 'validation.jsonl'}",
        "data.train_limit=64",
        "data.max_length=16",
        "student.shape.num_layers=1",
        "student.init.strategy=teacher-layers",
        "plan.terms=[{knowledge: logits, loss: jsd, beta: 0.5}]",
        "optim.lr=3e-3",
        f"train.batch_size={batch}",
        "train.epochs=2",
        "train.progress=false",
        "seed=3",
        f"output_dir={out}",
        *extra,
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, glue_dir, minilm_path, teacher_run) -> dict:
    """Every 2-process job in one launch, and the single-process reference; their output dirs and the launch log."""
    tmp = tmp_path_factory.mktemp("ddp")
    # No dropout: one process and two then draw no different random numbers, so only float rounding differs.
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    teacher = save_tiny_model(tiny_bert(2, 32, 4, **no_dropout), tmp / "teacher", minilm_path)
    mlm = save_tiny_model(tiny_bert(2, 32, 4, cls=BertForMaskedLM, **no_dropout), tmp / "mlm", minilm_path)
    text = FIXTURES / "tiny_corpus.txt"
    store = f"train.teacher_cache_dir={tmp / 'store'}"  # filled by ddp-store, read by ddp
    ddp = _task(tmp / "ddp", teacher, glue_dir, 4, "train.teacher_cache=true", store)
    resumed = _task(tmp / "ddp-resumed", teacher, glue_dir, 4, "train.save_every=3")
    causal_root = teacher_run[0]
    jobs = [
        {"overrides": _causal(causal_root, tmp / "causal-ddp", 4, *CACHED_AND_CHUNKED)},
        {"overrides": _causal(causal_root, tmp / "causal-ddp-plain", 4)},
        {
            "overrides": _causal(
                causal_root,
                tmp / "causal-ddp-fused",
                4,
                "train.logits_chunk_tokens=5",
                "train.fused_output_projection=true",
            )
        },
        {"overrides": resumed, "stop_after": 3},
        {"overrides": resumed, "resume": True},
        {
            "overrides": _task(
                tmp / "random",
                teacher,
                glue_dir,
                4,
                "train.epochs=1",
                "student.shape.hidden_size=16",
                "student.shape.num_heads=2",
                "student.init.strategy=slice",
                "plan.terms=[{knowledge: logits, loss: kl}, {knowledge: hidden, loss: mse, matching: random}]",
            )
        },
        {
            "overrides": [
                "stage=general",
                f"teacher.path={mlm}",
                f"data.text=[{text}]",
                "data.block_size=32",
                "student.shape.num_layers=1",
                "plan.terms=[{knowledge: hidden, loss: mse, matching: uniform}]",
                "plan.hard_label_weight=0",
                "train.max_steps=3",
                "train.batch_size=2",
                "train.progress=false",
                f"output_dir={tmp / 'general'}",
            ]
        },
        {
            "overrides": _task(
                tmp / "ddp-store", teacher, glue_dir, 4, "train.teacher_cache=true", store, "train.epochs=1"
            )
        },
        {"cli": ["distill", *ddp]},  # last: it ends the process group for real (end_training after the saves)
    ]
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    env = dict(
        os.environ,
        ACCELERATE_USE_CPU="true",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        UNIKD_CACHE=str(tmp / "cache"),
        PYTHONPATH=os.pathsep.join([str(SRC), str(TESTS), str(HERE), os.environ.get("PYTHONPATH", "")]),
    )
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*launch, str(HERE / "distributed_driver.py"), str(tmp / "jobs.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (tmp / "launch.log").write_text(proc.stdout + "\n---- stderr ----\n" + proc.stderr)
    assert proc.returncode == 0, f"see {tmp / 'launch.log'}\n" + proc.stdout[-3000:] + proc.stderr[-6000:]
    run(load_config(None, _task(tmp / "single", teacher, glue_dir, 8)))
    return {"tmp": tmp, "stdout": proc.stdout, "stderr": proc.stderr}


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "student" / "model.safetensors")


def _logged(run_dir: Path, tag: str = "lr") -> list[float]:
    """The TensorBoard series ``tag`` of a run, by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = []
    for events in {p.parent for p in (run_dir / "logs").rglob("events.out.tfevents*")}:
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            found.append([e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)])
    (series,) = found  # one run, one series
    return series


@pytest.mark.slow  # one 2-process launch for the module: about 50 s on 2 cores
def test_two_processes_match_one_with_the_same_global_batch(runs):
    """Tolerance: the weights agree to 1e-5 (two halves' gradients averaged by all-reduce against one batch's: only
    the order of float additions differs); the dev metrics are then identical."""
    single, ddp = _metrics(runs["tmp"] / "single"), _metrics(runs["tmp"] / "ddp")
    assert single["steps"] == ddp["steps"] == TOTAL_STEPS  # epochs: 2 counted on the sharded loader, not 2x
    assert ddp["final"] == single["final"]
    a, b = _weights(runs["tmp"] / "single"), _weights(runs["tmp"] / "ddp")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4, msg=name)
    # the result JSON is printed once (rank 0), not once per process
    assert runs["stdout"].count('"stage": "task"') == 1, runs["stdout"]


@pytest.mark.slow  # one 2-process launch for the module: about 50 s on 2 cores
def test_two_processes_lr_schedule_ends_exactly_at_the_last_step(runs):
    single, ddp = _logged(runs["tmp"] / "single"), _logged(runs["tmp"] / "ddp")
    assert len(ddp) == TOTAL_STEPS
    np.testing.assert_allclose(ddp, single, rtol=1e-6)
    # linear warm-up over 2 steps to 1e-3, then linear decay to 0 at step 8: logged after each step
    np.testing.assert_allclose(ddp, [1e-3 / 2, 1e-3, 5e-3 / 6, 4e-3 / 6, 3e-3 / 6, 2e-3 / 6, 1e-3 / 6, 0.0], atol=1e-12)


@pytest.mark.slow  # one 2-process launch for the module: about 50 s on 2 cores
def test_two_processes_log_the_loss_averaged_over_processes(runs):
    """Per-example means over two equal halves average to the whole batch's: the logged loss is the 1-process one
    (rank 0's own half would differ)."""
    single, ddp = _logged(runs["tmp"] / "single", "loss/total"), _logged(runs["tmp"] / "ddp", "loss/total")
    assert len(ddp) == TOTAL_STEPS
    np.testing.assert_allclose(ddp, single, rtol=1e-4)


@pytest.mark.slow  # one 2-process launch for the module: about 50 s on 2 cores
def test_two_processes_teacher_cache_is_shared_and_exact(runs):
    """Epoch 2 reads the logits both processes stored in epoch 1, and the run equals the uncached one."""
    filled = np.load(runs["tmp"] / "ddp" / "teacher_cache" / "filled.npy")
    assert filled.shape == (32,) and filled.all()
    assert _metrics(runs["tmp"] / "ddp")["final"] == _metrics(runs["tmp"] / "single")["final"]
    # the shared store: each process of ddp-store added the rows it labelled; ddp found all 32 there
    first = _metrics(runs["tmp"] / "ddp-store")["teacher_pass"]
    assert first["rows"] == 32 and first["reused"] == 0
    shards = sorted((runs["tmp"] / "store").rglob("shard-*.npz"))
    assert [len(np.load(s)["keys"]) for s in shards] == [16, 16]
    assert _metrics(runs["tmp"] / "ddp")["teacher_pass"]["rows"] == 0
    assert _metrics(runs["tmp"] / "ddp")["teacher_pass"]["reused"] == 32


@pytest.mark.slow  # one 2-process launch for the module: about 50 s on 2 cores
def test_two_processes_resume_equals_uninterrupted(runs):
    resumed, full = runs["tmp"] / "ddp-resumed", runs["tmp"] / "ddp"
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["step-3", "step-6"]
    assert len(list((resumed / "checkpoints" / "step-3").glob("random_states_*.pkl"))) == 2  # one per process
    assert _metrics(resumed)["final"] == _metrics(full)["final"]
    a, b = _weights(full), _weights(resumed)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.slow  # one 2-process launch for the module: about 50 s on 2 cores
def test_two_processes_random_matching_with_projections(runs):
    out = runs["tmp"] / "random"
    assert _metrics(out)["steps"] == 4  # 1 epoch of 32 rows, global batch 8
    projections = torch.load(out / "projections.pt")
    assert projections and all(v.shape[-1] == 16 for k, v in projections.items() if k.endswith("weight"))


@pytest.mark.slow  # one 2-process launch for the module: about 50 s on 2 cores
def test_two_processes_general_stage_freezes_what_no_loss_reaches(runs):
    """Hidden-state MSE only, no LM loss: the MLM head gets no gradient; frozen before DDP wraps the student,
    the run gets past step 2 (DDP otherwise fails: 'Expected to have finished reduction ...')."""
    assert _metrics(runs["tmp"] / "general")["steps"] == 3
    frozen = [line for line in runs["stdout"].splitlines() if line.startswith("frozen")]
    assert len(frozen) == 1  # printed by the main process only
    assert "student.cls.predictions.transform.dense.weight" in frozen[0]
    assert "student.bert.encoder.layer.0.output.dense.weight" not in frozen[0]


def test_several_processes_without_a_process_group_are_refused(tmp_path, glue_dir, minilm_path, monkeypatch):
    """Plain torchrun on a CPU without train.cpu: each process would train alone into the same output_dir."""
    teacher = save_tiny_model(tiny_bert(2, 32, 4), tmp_path / "teacher", minilm_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(
        ConfigError, match=r"^train\.cpu: 2 processes were launched \(WORLD_SIZE=2\).*Fix: on a CPU set"
    ):
        run(load_config(None, _task(tmp_path / "out", teacher, glue_dir, 4)))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # one 2-process launch for the module: about 50 s on 2 cores
def test_two_processes_fill_one_token_cache_and_train_the_uncached_run(runs):
    """The top-k token cache filled by both processes' teacher passes (each its share of the rows) and the chunked
    divergence read from it: the run equals the 2-process run on full logits, up to the cache's fp16 log p (each
    process averages over its own scored tokens, so a 1-process run of the same global batch weighs them otherwise)."""
    ddp, plain = _metrics(runs["tmp"] / "causal-ddp"), _metrics(runs["tmp"] / "causal-ddp-plain")
    (cache,) = (runs["tmp"] / "causal-ddp" / "teacher_cache").glob("token-topk-*")
    assert np.load(cache / "filled.npy").all() and ddp["teacher_pass"]["rows"] == 64
    assert ddp["steps"] == plain["steps"] == 16  # 64 rows, 2 epochs, 2 processes x 4 rows a step
    assert ddp["final"]["perplexity"] == pytest.approx(plain["final"]["perplexity"], rel=2e-3)


@pytest.mark.slow  # one 2-process launch for the module: about 50 s on 2 cores
def test_two_processes_train_the_fused_projection_as_the_plain_run(runs):
    """train.fused_output_projection under DDP: the lm_head's gradient, taken inside the fused losses (outside the
    wrapped forward), still reaches every process's reducer, and the run equals the 2-process plain run."""
    fused, plain = _metrics(runs["tmp"] / "causal-ddp-fused"), _metrics(runs["tmp"] / "causal-ddp-plain")
    assert fused["steps"] == plain["steps"] == 16
    assert fused["final"]["perplexity"] == pytest.approx(plain["final"]["perplexity"], rel=1e-4)
