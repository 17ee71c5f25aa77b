"""Running a study: each run in this process or a spawned worker, the database written by the parent."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
import traceback
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from unikd.config import RunConfig, dump_config, stored_config
from unikd.errors import ConfigError
from unikd.io import atomic_write_text
from unikd.study.db import DB_NAME, StudyDB
from unikd.study import execute
from unikd.identity import is_augmentation_only, is_pseudo_labels, same_run
from unikd.study.expand import PlannedRun, expand_study
from unikd.study.shapes import check_study_shapes
from unikd.study.execute import Runner, latency_fields, error_tail, execute_run, make_pool, submit
from unikd.study.schedule import schedule_check
from unikd.study.tuning import baseline_search
from unikd.study.file import LatencySettings, StudyConfig, read_study


# ---------------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------------
def _saved_config(out: Path) -> RunConfig | None:
    try:
        return stored_config(yaml.safe_load((out / "config.yaml").read_text()))
    except Exception:  # noqa: BLE001 - missing or unreadable: not this run's
        return None


def _same_run(saved: RunConfig | None, run: PlannedRun) -> bool:
    return saved is not None and same_run(saved, run.config)


def _prepare_dir(run: PlannedRun, echo) -> dict:
    """How to start ``run`` in its output directory: collect a run of the same config finished elsewhere
    (metrics.json beside its config.yaml), resume an interrupted attempt of the same config from its last
    checkpoint, and never delete another config's results - they are moved aside to ``<dir>.replaced-<time>``
    (a teacher directory is shared by every teacher config)."""
    out = run.output_dir
    if not out.exists():
        return {}
    finished = (out / "metrics.json").is_file()
    if _same_run(_saved_config(out), run):
        return {"collect": True} if finished else {"resume": True}
    if finished or (out / "student").is_dir():
        aside = out.with_name(f"{out.name}.replaced-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
        out.rename(aside)
        echo(f"  note: {out} held another config's results; moved to {aside}")
    else:
        shutil.rmtree(out)  # an attempt that never got to results
    return {}


def _command(path: Path) -> str:
    return f"accelerate launch -m unikd.cli distill {shlex.quote(str(path))}"


def run_study(
    study_path_or_obj: str | os.PathLike | Mapping | StudyConfig,
    workers: int = 1,
    print_commands: bool = False,
    retry_failed: bool = False,
    runner: Runner | None = None,
    *,
    overrides: list[str] | None = None,
    output_dir: str | os.PathLike | None = None,
    echo: Callable[[str], None] | None = None,
    max_hours: float | None = None,
) -> dict:
    """Run (or print) every pending run of a study; returns a summary.

    - finished runs (same config hash, status ``done``) are skipped; ``failed`` ones only run again with
      ``retry_failed``; ``pending``/``running`` (interrupted) ones run;
    - teachers first, then the baselines and KD runs, the pseudo-label runs last; a KD/no-KD run whose teacher
      is not done is recorded as failed ("teacher ... not available");
    - ``workers > 1``: a spawn-context process pool, one config per task; ``runner`` must then be
      picklable (a module-level function). ``runner(cfg)`` defaults to ``unikd.train.run``. Latency is
      then timed in this process after each phase (teachers, the rest), one model at a time;
    - ``print_commands``: write configs/<run_id>.yaml for each pending run and print the accelerate
      commands (teachers first) instead of running;
    - ``max_hours``: no run starts once that many hours have passed since the first one could; the runs in
      flight finish, the others stay ``pending`` (listed in ``summary["pending"]``) for the next call.

    Summary: {"study", "output_dir", "database", "planned", "skipped", "executed", "done", "failed",
    "pending", "commands", "status" (counts over the study's current rows)}.
    """
    echo = echo or (lambda s: print(s, flush=True))
    study = read_study(study_path_or_obj, overrides)
    root = Path(output_dir or study.output_dir).expanduser().resolve()
    planned = expand_study(study, root)  # the one expansion; it validates every run config, as load_study does
    if workers < 1:
        raise ConfigError("--workers", f"must be at least 1, got {workers}", "use --workers 1 (sequential) or more")
    if max_hours is not None and not max_hours >= 0:  # NaN too
        raise ConfigError("--max-hours", f"must be hours >= 0, got {max_hours}", "e.g. --max-hours 7.5")
    _check_shapes_first(study, planned, echo)
    started = time.perf_counter()
    how = dict(workers=workers, runner=runner, echo=echo, retry_failed=retry_failed)
    chosen = None
    if study.schedule_check is not None and print_commands:
        echo("schedule_check: the commands below train at the study's own steps; run the study to check them first")
    elif study.schedule_check is not None:
        chosen, check_summary = schedule_check(study, root, run_study, workers, runner, echo, max_hours, retry_failed)
        # --max-hours stopped the check (the next call goes on with it), or a run failed: no budget is chosen
        if check_summary["pending"] or check_summary["status"].get("failed"):
            return check_summary
        planned = expand_study(study, root, max_steps=chosen)
    if study.baseline_search is not None and print_commands:
        echo("baseline_search: the commands below leave the tuned no-KD students out; run the study to search first")
    elif study.baseline_search is not None:
        tuned, search_summary = baseline_search(
            study, root, planned, run_planned, **how, max_hours=_left(max_hours, started)
        )
        if search_summary["pending"] or search_summary["status"].get("failed"):
            return search_summary
        planned = expand_study(study, root, max_steps=chosen, tuned=tuned)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "study.yaml", yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False))
    return run_planned(study, planned, root, **how, max_hours=_left(max_hours, started), print_commands=print_commands)


def _left(max_hours: float | None, started: float) -> float | None:
    """What is left of ``max_hours`` since ``started``: one clock for the checks and the study."""
    return None if max_hours is None else max(0.0, max_hours - (time.perf_counter() - started) / 3600)


def run_planned(
    study: StudyConfig,
    planned: list[PlannedRun],
    root: Path,
    *,
    workers: int = 1,
    runner: Runner | None = None,
    echo,
    retry_failed: bool = False,
    max_hours: float | None = None,
    print_commands: bool = False,
) -> dict:
    """The database part of ``run_study``: record ``planned`` as the rows of ``study.name`` (finished ones found by
    hash) and run or print the pending ones; returns the summary."""
    summary: dict[str, Any] = {
        "study": study.name,
        "output_dir": str(root),
        "database": str(root / DB_NAME),
        "planned": len(planned),
        "skipped": [],
        "executed": [],
        "done": [],
        "failed": [],
        "pending": [],
        "commands": [],
    }
    with StudyDB(root / DB_NAME) as db:
        db.begin_study(study.name, {run.task for run in planned})
        todo = _plan_rows(db, planned, retry_failed, echo, summary)
        if print_commands:
            _print_commands(todo, root, echo, summary)
        else:
            _run_pending(db, study, planned, todo, root, workers, runner, echo, summary, max_hours)
        summary["status"] = _status_counts(db, study.name)
    return summary


def _check_shapes_first(study: StudyConfig, planned: list[PlannedRun], echo) -> None:
    """Fail fast on a plan/shape/init error, before the teachers train for nothing."""
    try:
        check_study_shapes(study, runs=planned)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a hub teacher while offline: the runs will say more
        echo(f"note: shapes not checked before running ({type(exc).__name__}: {exc})")


def _plan_rows(db: StudyDB, planned: list[PlannedRun], retry_failed: bool, echo, summary: dict) -> list[PlannedRun]:
    """Insert (or re-attach) every planned run's row; returns the runs to execute, the others are skipped."""
    todo: list[PlannedRun] = []
    attached: dict[str, str] = {}  # planned teacher id -> the id of the row it re-attached to
    for run in planned:
        if run.teacher_id:
            run.teacher_id = attached.get(run.teacher_id, run.teacher_id)
        if run.baseline_id:  # baselines are planned before their KD runs
            run.baseline_id = attached.get(run.baseline_id, run.baseline_id)
        planned_id = run.run_id
        row = db.plan(run)
        attached[planned_id] = row["run_id"]
        if run.kind == "teacher" and row["status"] == "done" and not (run.output_dir / "student").is_dir():
            echo(
                f"teacher {row['run_id']} is recorded done but {run.output_dir / 'student'} is gone: "
                "fine-tuning it again"
            )
            summary.setdefault("_refit", {})[row["run_id"]] = row["score"]
            todo.append(run)
        elif row["status"] == "done" or (row["status"] == "failed" and not retry_failed):
            summary["skipped"].append(run.run_id)
        else:
            todo.append(run)
    return todo


def _run_pending(
    db: StudyDB,
    study: StudyConfig,
    planned: list[PlannedRun],
    todo: list[PlannedRun],
    root: Path,
    workers: int,
    runner: Runner | None,
    echo,
    summary: dict,
    max_hours: float | None,
) -> None:
    """The teachers first, then the baselines and KD runs whose teacher is done; here or in a pool. After
    ``max_hours`` no run starts: the ones left stay pending (the rest too when a teacher is left)."""
    latency = study.latency.model_dump()
    teachers = [r for r in todo if r.kind == "teacher"]
    # The pseudo-label baselines after every variant and its no-KD pair: a --max-hours stop then leaves the
    # primary comparison complete over all seeds (a width-depth study: 36 of its 54 runs) rather than every
    # comparison on the first seeds only.
    rest = sorted((r for r in todo if r.kind != "teacher"), key=lambda r: _is_control(r.config))
    echo(
        f"study {study.name!r}: {len(planned)} runs, {len(summary['skipped'])} finished or failed "
        f"before (skipped), {len(todo)} to run -> {root}"
    )
    _backfill_latency(db, [r for r in planned if r.run_id in summary["skipped"]], latency, echo)
    started = time.perf_counter()
    summary["_progress"] = {"total": len(todo), "started": started}
    deadline = None if max_hours is None else started + 3600 * max_hours
    pool = make_pool(workers) if workers > 1 and todo else None
    try:
        pending = _execute_all(db, teachers, latency, pool, workers, runner, echo, summary, deadline)
        if pending:
            pending += rest
        else:
            ready = _fail_blocked(db, rest, summary)
            pending = _execute_all(db, ready, latency, pool, workers, runner, echo, summary, deadline)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    summary["pending"] = [r.run_id for r in pending]
    if pending:
        echo(
            f"--max-hours {max_hours} reached after {_duration(time.perf_counter() - started)}: no new run started, "
            f"{len(pending)} left pending"
        )
    _refresh_model_cards(db, planned)


def _is_control(cfg: RunConfig) -> bool:
    """A pseudo-label or augmentation-only twin: run after every variant and its no-KD pair."""
    return is_pseudo_labels(cfg) or is_augmentation_only(cfg)


def _refresh_model_cards(db: StudyDB, planned: list[PlannedRun]) -> None:
    """Each finished run's model card again, now with its no-KD baseline's metrics and the measured latencies."""
    from unikd.hub import refresh_model_card

    by_id = {r.run_id: r for r in planned}
    rows = {r.run_id: db.get(r.run_id) or {} for r in planned}
    for run in planned:
        if rows[run.run_id].get("status") != "done":
            continue
        base = by_id.get(run.baseline_id) if run.baseline_id else None
        final = base.output_dir / "metrics.json" if base is not None else None
        baseline = json.loads(final.read_text()).get("final") if final is not None and final.is_file() else None
        who = (("this student", run), ("teacher", by_id.get(run.teacher_id)), ("no-KD student", base))
        latency = {name: rows[r.run_id].get("latency_ms") for name, r in who if r is not None}
        latency = {k: v for k, v in latency.items() if v is not None}
        try:
            refresh_model_card(run.output_dir, baseline=baseline, latency=latency or None)
        except (OSError, ValueError) as exc:  # a card never fails a finished study (ConfigError is a ValueError)
            print(f"  note: model card of {run.run_id} not refreshed ({type(exc).__name__}: {exc})", flush=True)


def _fail_blocked(db: StudyDB, runs: list[PlannedRun], summary: dict) -> list[PlannedRun]:
    """Record the runs whose teacher is not done as failed; returns the others."""
    ready, blocked = [], []
    for r in runs:
        t = db.get(r.teacher_id) if r.teacher_id else None
        (ready if t is None or t["status"] == "done" else blocked).append(r)
    for r in blocked:
        t = db.get(r.teacher_id)
        db.record(
            r.run_id,
            {
                "status": "failed",
                "error": f"teacher {r.teacher_id} not available "
                f"(status {t['status'] if t else 'missing'}); re-run with --retry-failed "
                "after fixing it",
            },
        )
        summary["failed"].append(r.run_id)
    return ready


def _status_counts(db: StudyDB, study: str) -> dict[str, int]:
    """Status -> number of the study's current rows."""
    counts: dict[str, int] = {}
    for row in db.rows(study=study):
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def _print_commands(todo: list[PlannedRun], root: Path, echo, summary: dict) -> None:
    cfg_dir = root / "configs"
    teachers = [r for r in todo if r.kind == "teacher"]
    rest = [r for r in todo if r.kind != "teacher"]
    for title, group in (
        ("# 1. teachers (the runs below read their student/ directories)", teachers),
        ("# 2. no-KD baselines and KD students (after the teachers finish)", rest),
    ):
        if not group:
            continue
        echo(title)
        for run in group:
            path = cfg_dir / f"{run.run_id}.yaml"
            atomic_write_text(path, dump_config(run.config))
            cmd = _command(path)
            summary["commands"].append(cmd)
            echo(cmd)
    echo(f"# then `unikd study` again (same study and overrides) collects the finished runs into {root / DB_NAME}")


def _execute_all(
    db: StudyDB, runs: list[PlannedRun], latency: dict, pool, workers: int, runner, echo, summary: dict, deadline
) -> list[PlannedRun]:
    """Run ``runs`` here (``pool`` None) or in the pool, ``workers`` at a time, the results written here one by
    one; none starts once ``time.perf_counter()`` passes ``deadline`` (None: no limit). Returns the runs not
    started."""
    if pool is None:
        return _execute_here(db, runs, latency, runner, echo, summary, deadline)
    return _execute_in_pool(db, runs, latency, pool, workers, runner, echo, summary, deadline)


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() >= deadline


def _job(run: PlannedRun, latency: dict, echo) -> dict:
    return {"config": run.config.model_dump(mode="json"), "latency": latency, **_prepare_dir(run, echo)}


def _execute_here(db: StudyDB, runs, latency: dict, runner, echo, summary: dict, deadline) -> list[PlannedRun]:
    for i, run in enumerate(runs):
        if _past(deadline):
            return runs[i:]
        job = _job(run, latency, echo)
        how = " (collecting)" if job.get("collect") else " (resuming)" if job.get("resume") else ""
        echo(f"[{i + 1}/{len(runs)}] {run.kind} {run.run_id}{how}")
        db.mark_running(run.run_id)
        _store(db, run, execute_run(job, runner), echo, summary)
    return []


def _execute_in_pool(
    db: StudyDB, runs, latency: dict, pool, workers: int, runner, echo, summary: dict, deadline
) -> list[PlannedRun]:
    """Keep ``workers`` runs submitted (a run is marked running when it is handed to the pool, so the ones never
    started stay pending); latency is timed here afterwards, one model at a time, not next to others training."""
    from concurrent.futures import FIRST_COMPLETED, wait

    settings = LatencySettings.model_validate(latency)
    queue = list(runs)
    futures: dict = {}
    finished = []
    while True:
        while queue and len(futures) < workers and not _past(deadline):
            run = queue.pop(0)
            job = _job(run, {**latency, "enabled": False}, echo)
            db.mark_running(run.run_id)
            futures[submit(pool, job, runner)] = run
            echo(f"submitted {run.kind} {run.run_id}")
        if not futures:
            break
        done, _ = wait(futures, return_when=FIRST_COMPLETED)
        for fut in done:
            run = futures.pop(fut)
            try:
                outcome = fut.result()
            except Exception as exc:  # noqa: BLE001 - a worker died (killed, out of memory) or runner unpicklable
                outcome = {
                    "status": "failed",
                    "error": error_tail(f"worker failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"),
                }
            _store(db, run, outcome, echo, summary)
            if outcome["status"] == "done":
                finished.append(run)
    if settings.enabled:
        for run in finished:
            _time_latency(db, run, settings, echo)
    return queue


def _time_latency(db: StudyDB, run: PlannedRun, settings: LatencySettings, echo) -> None:
    student = run.output_dir / "student"
    if not (student / "config.json").is_file():
        return
    try:
        fields = latency_fields(
            execute.measure_latency(student, settings.seq_len or run.config.data.max_length, settings)
        )
        db.set_latency(run.run_id, fields["latency_ms"], by_batch=fields["latency_by_batch"])
        echo(f"  latency {run.run_id}: " + ", ".join(f"b{b} {v:.2f} ms" for b, v in fields["latency_by_batch"].items()))
    except Exception as exc:  # noqa: BLE001 - a timing problem does not fail a finished run
        db.set_latency(run.run_id, None, f"latency not measured: {type(exc).__name__}: {exc}")


def _needs_latency(row: dict, settings: LatencySettings) -> bool:
    """No latency yet, or not at every batch size asked for (batch sizes added to a finished study)."""
    if row["latency_ms"] is None:
        return True
    if len(settings.batch_sizes) == 1:
        return False
    return not {str(b) for b in settings.batch_sizes} <= set(row.get("latency_by_batch") or {})


def _backfill_latency(db: StudyDB, finished: list[PlannedRun], latency: dict, echo) -> None:
    """Time the finished runs that have no latency yet - a pool study stopped before the end of a phase
    times nothing of that phase - or not at every batch size asked for, here, before any worker starts."""
    settings = LatencySettings.model_validate(latency)
    if not settings.enabled:
        return
    for run in finished:
        row = db.get(run.run_id)
        if row and row["status"] == "done" and _needs_latency(row, settings):
            _time_latency(db, run, settings, echo)


def _store(db: StudyDB, run: PlannedRun, outcome: dict, echo, summary: dict) -> None:
    db.record(run.run_id, outcome)
    summary["executed"].append(run.run_id)
    if not outcome.get("collected"):  # the ETA divides by the runs trained here (a collected one took seconds)
        summary["_trained"] = summary.get("_trained", 0) + 1
    if outcome["status"] == "done":
        summary["done"].append(run.run_id)
        _check_refit(run, outcome, summary, echo)
        _flag_weak_teacher(run, outcome, summary, echo)
        score = outcome.get("score")
        lat = outcome.get("latency_ms")
        echo(
            f"  done {run.run_id}: score={score if score is None else round(score, 4)} "
            f"params={outcome.get('parameters')}" + ("" if lat is None else f" latency_ms={lat:.2f}")
        )
    else:
        summary["failed"].append(run.run_id)
        last = (outcome.get("error") or "").strip().splitlines()
        echo(f"  FAILED {run.run_id}: {last[-1] if last else 'unknown error'}")
    progress = summary.get("_progress")
    if progress:
        elapsed = time.perf_counter() - progress["started"]
        echo(
            progress_line(
                len(summary["done"]), len(summary["failed"]), progress["total"], elapsed, summary.get("_trained", 0)
            )
        )


def _flag_weak_teacher(run: PlannedRun, outcome: dict, summary: dict, echo) -> None:
    """A fine-tuned teacher no better than the trivial baseline on dev: its KD runs will each be refused (unless
    teacher.allow_weak); say so once, in the summary's warnings, when the teacher finishes."""
    from unikd.guards import TEACHER_MARGIN

    trivial = ((outcome.get("metrics") or {}).get("trivial_baseline") or {}).get("score")
    score = outcome.get("score")
    if run.kind != "teacher" or trivial is None or score is None or score > trivial + TEACHER_MARGIN:
        return
    message = (
        f"teacher {run.run_id} ({run.task}) scores {score:.4f} on dev, not above the trivial baseline "
        f"({trivial:.4f}) by {TEACHER_MARGIN}: its students' KD runs will be refused unless teacher.allow_weak; "
        "fine-tune it on more rows or steps (teacher_finetune)"
    )
    summary.setdefault("warnings", []).append(message)
    echo("WARNING: " + message)


def _check_refit(run: PlannedRun, outcome: dict, summary: dict, echo) -> None:
    """A teacher fine-tuned again (its directory was gone: a study resumed from its database alone) must be the
    one the finished runs distilled from; the same seed, data and threads give the same weights on a CPU, so its
    dev score must match the recorded one. If not, say so: those runs' results are then from another teacher."""
    recorded = summary.get("_refit", {}).get(run.run_id)
    score = outcome.get("score")
    if recorded is None or score is None or abs(score - recorded) <= 1e-9:
        return
    message = (
        f"teacher {run.run_id} fine-tuned again scores {score:.6f}, the recorded run {recorded:.6f}: the runs "
        "finished before distilled from the recorded teacher (another machine or thread count?); to compare like "
        "with like, start the study afresh in another output_dir"
    )
    summary.setdefault("warnings", []).append(message)
    echo("WARNING: " + message)


def progress_line(done: int, failed: int, total: int, elapsed_s: float, executed: int) -> str:
    """The study's overall progress after a run: runs done/failed/left, wall time per run so far, the ETA.

    ``executed`` counts the runs that ran here (a run failed because its teacher failed took no time, one
    finished elsewhere and collected took seconds: neither counts, or the ETA would be minutes for hours); with a
    pool, wall time per run already divides by the workers' parallelism, so the ETA is the wall time left."""
    left = max(total - done - failed, 0)
    per_run = elapsed_s / executed if executed else None
    timing = "" if per_run is None else f", {_duration(per_run)} per run, ETA {_duration(per_run * left)}"
    return f"study progress: {done} done, {failed} failed, {left} left of {total}{timing}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
