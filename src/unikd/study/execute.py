"""One study run's execution, wherever it runs: ``execute_run`` trains a planned config (or collects one trained
elsewhere), measures its CPU latency and never raises (a crash is a 'failed' outcome); the worker pool it runs in
when a study has ``--workers`` > 1 (spawned processes that die with the study). The parent alone writes the
database (``unikd.study.runner``)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from unikd.config import RunConfig
from unikd.study.file import LatencySettings

ERROR_TAIL = 4000

Runner = Callable[[RunConfig], Any]


def _default_runner(cfg: RunConfig, resume: bool = False):
    from unikd.train import run

    return run(cfg, resume=resume)


def error_tail(text: str, limit: int = ERROR_TAIL) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def measure_latency(model_dir: str | os.PathLike, seq_len: int, settings: LatencySettings) -> dict[int, float]:
    """CPU p50 latency (ms) in PyTorch at each of ``settings.batch_sizes``, in their order."""
    from unikd.latency import bench_latency

    rows = bench_latency(
        {"model": str(model_dir)},
        batch_sizes=tuple(settings.batch_sizes),
        seq_len=seq_len,
        threads=settings.threads,
        backends=("torch",),
        warmup=settings.warmup,
        repeats=settings.repeats,
    )
    by_batch = {int(r["batch_size"]): float(r["p50_ms"]) for r in rows}
    return {b: by_batch[b] for b in settings.batch_sizes}


def latency_fields(by_batch: dict[int, float] | None) -> dict:
    """The database's latency columns: ``latency_ms`` the first batch size's, ``latency_by_batch`` every one."""
    if not by_batch:
        return {"latency_ms": None, "latency_by_batch": None}
    return {"latency_ms": next(iter(by_batch.values())), "latency_by_batch": {str(b): v for b, v in by_batch.items()}}


def _outcome_from_dir(cfg: RunConfig, returned: Any) -> dict:
    out_dir = Path(cfg.output_dir)
    metrics = None
    if (out_dir / "metrics.json").is_file():
        metrics = json.loads((out_dir / "metrics.json").read_text())
    elif isinstance(returned, Mapping):
        metrics = dict(returned)
    metrics = {k: v for k, v in (metrics or {}).items() if k != "history"}
    final = metrics.get("final") or {}
    return {"metrics": metrics, "score": _finite(final.get("score")), "parameters": metrics.get("parameters")}


def execute_run(job: dict, runner: Runner | None = None) -> dict:
    """Run one planned config and measure its latency; never raises (a crash is a 'failed' outcome).

    ``job``: {"config": RunConfig dump, "latency": LatencySettings dump, "collect": bool}. With ``collect``
    the run finished elsewhere: its metrics.json is read and only the latency is measured.
    """
    t0 = time.perf_counter()
    try:
        cfg = RunConfig.model_validate(job["config"])
        collected = bool(job.get("collect"))  # trained elsewhere: no part of this study's time per run
        if collected:
            returned = None
        else:
            # Resuming is the trainer's; a custom runner is always handed a clean directory's config.
            returned = runner(cfg) if runner else _default_runner(cfg, resume=bool(job.get("resume")))
        outcome = {"status": "done", "collected": collected, **_outcome_from_dir(cfg, returned)}
        # the trainer's seconds, summed over resumed attempts (metrics.json); this call's where it has none
        wall = _finite(outcome["metrics"].get("wall_s"))
        outcome["wall_s"] = wall if wall is not None or collected else time.perf_counter() - t0
        if isinstance(returned, Mapping) and "stopped_at" in returned:
            raise RuntimeError(f"the run stopped at step {returned['stopped_at']} before finishing")
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - every crash is recorded, the study goes on
        tb = traceback.format_exc()
        return {
            "status": "failed",
            "wall_s": time.perf_counter() - t0,
            "error": error_tail(f"{type(exc).__name__}: {exc}\n{tb}"),
        }
    settings = LatencySettings.model_validate(job.get("latency") or {})
    student = Path(cfg.output_dir) / "student"
    if settings.enabled and (student / "config.json").is_file():
        try:
            outcome |= latency_fields(measure_latency(student, settings.seq_len or cfg.data.max_length, settings))
        except Exception as exc:  # noqa: BLE001 - a timing problem does not fail a finished run
            outcome |= latency_fields(None)
            outcome["error"] = error_tail(f"latency not measured: {type(exc).__name__}: {exc}")
    return outcome


def _die_with_parent() -> None:
    """Linux: have the kernel send this worker SIGTERM when the study process dies (killed, Ctrl-C'd
    twice, out of memory). Otherwise a stopped study leaves its workers training on, orphaned, writing
    into run directories the next call is about to use."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):  # no prctl: the worker simply outlives a killed parent
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _worker_init(threads: int | None) -> None:
    _die_with_parent()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads:
        import torch

        torch.set_num_threads(threads)


def make_pool(workers: int):
    """A spawn-context process pool; each worker gets cpu_count // workers torch threads."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // workers)
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(threads,),
    )


def submit(pool, job: dict, runner):
    """``execute_run(job, runner)`` in the pool; a pool broken by a dead worker refuses new work: the run then
    fails as an already submitted one does (its future holds the error)."""
    from concurrent.futures import Future

    try:
        return pool.submit(execute_run, job, runner)
    except Exception as exc:  # noqa: BLE001 - BrokenProcessPool: a worker died
        fut: Future = Future()
        fut.set_exception(exc)
        return fut
