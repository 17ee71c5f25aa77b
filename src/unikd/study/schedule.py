"""The schedule check (``schedule_check:`` in a study file): before the study trains, each KD variant at every
candidate step budget on one seed, scored on held-out training rows (``data.holdout``, never dev), and the best
budget per variant is what the study then trains it (and its twins) at. ``schedule_check.json`` records it; the
report shows it beside the study's own runs.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from unikd.config import deep_merge
from unikd.errors import ConfigError
from unikd.identity import canonical
from unikd.io import atomic_write_json
from unikd.study.db import DB_NAME, StudyDB
from unikd.study.expand import PlannedRun, expand_study
from unikd.study.file import StudyConfig

SCHEDULE_FILE = "schedule_check.json"
#: below this many held-out rows an accuracy near 80% has a standard error over 1 point: on SST-2 with 100 rows
#: (4 points) the check chose the budget dev ranks last (docs/study-cpu.md, "Step budgets")
SCHEDULE_HOLDOUT_ADVISED = 1600


def holdout_noise(rows: int) -> str:
    """What a schedule check on ``rows`` held-out rows can resolve: the binomial standard error at 80% accuracy."""
    se = 100 * math.sqrt(0.8 * 0.2 / rows)
    return (
        f"schedule_check.holdout={rows}: a held-out accuracy near 80% has a standard error of about {se:.1f} points "
        f"on {rows} rows, so budgets closer than that are ranked by noise (hold out {SCHEDULE_HOLDOUT_ADVISED}+ rows "
        "where the labels allow, or compare budgets on three seeds)"
    )


def schedule_check(study: StudyConfig, root: Path, run_study, workers, runner, echo, max_hours, retry_failed):
    """``study.schedule_check``: the study at each candidate budget on one seed, scored on held-out training rows,
    as studies of their own in the same database, each run by ``run_study`` (the runner's; teachers and repeated
    configs are found by hash, so a finished check is not trained again); returns ({(task, label): best steps},
    the last check's summary) and writes ``schedule_check.json`` (every score, the choice, the variants that keep
    their own steps)."""
    check = study.schedule_check
    seed = check.seed if check.seed is not None else study.seeds[0]
    scores: dict[tuple[str, str], dict[int, float]] = {}
    fixed: set[tuple[str, str]] = set()
    summary: dict = {}
    # the teacher fine-tune reads base's train section: it keeps its own steps (the same teacher, found by hash)
    teacher_steps = deep_merge(study.base.get("train") or {}, study.teacher_finetune.get("train") or {})
    teacher = deep_merge(study.teacher_finetune, {"train": {"max_steps": teacher_steps.get("max_steps")}})
    if check.holdout < SCHEDULE_HOLDOUT_ADVISED:
        echo(f"warning: {holdout_noise(check.holdout)}")
    started = time.perf_counter()
    for i, steps in enumerate(check.max_steps):
        name = f"{study.name} / schedule check {steps} steps"
        base = deep_merge(study.base, {"data": {"holdout": check.holdout}, "train": {"max_steps": steps}})
        sub = study.model_copy(
            update={"name": name, "seeds": [seed], "base": base, "teacher_finetune": teacher, "schedule_check": None}
        )
        if i == 0:
            check_holdout_first(expand_study(sub, root), check.holdout, echo)
        echo(f"schedule check: {steps} steps, seed {seed}, scored on {check.holdout} held-out training rows")
        left = None if max_hours is None else max(0.0, max_hours - (time.perf_counter() - started) / 3600)
        summary = run_study(
            sub, workers, retry_failed=retry_failed, runner=runner, output_dir=root, echo=echo, max_hours=left
        )
        if summary["pending"]:
            return {}, summary
        if summary["status"].get("failed"):
            echo(
                f"schedule check: {summary['status']['failed']} run(s) failed at {steps} steps; the study stops "
                "before choosing any budget (fix the error in study.sqlite, then rerun with --retry-failed)"
            )
            return {}, summary
        with StudyDB(root / DB_NAME) as db:
            for row in db.rows(study=name, status="done"):
                key = (row["task"], row["label"])
                if row["kind"] != "kd":
                    continue
                if row["config"]["train"]["max_steps"] != steps or row["config"].get("then"):
                    fixed.add(key)  # its own steps (a chain, or a run that sets train.max_steps): kept
                if row["score"] is not None:
                    scores.setdefault(key, {})[steps] = row["score"]
    chosen = {
        key: max(by_steps.items(), key=lambda kv: (kv[1], -kv[0]))[0]  # the best score; a tie: the fewer steps
        for key, by_steps in scores.items()
        if key not in fixed
    }
    for (task, label), by_steps in scores.items():
        pick = chosen.get((task, label))
        row = ", ".join(f"{n}: {100 * v:.2f}" for n, v in sorted(by_steps.items()))
        echo(f"  {task} {label}: {row} -> " + (f"{pick} steps" if pick else "its own steps"))
    atomic_write_json(
        root / SCHEDULE_FILE,
        {
            "study": study.name,  # the report shows the check with this study's runs only (a directory holds several)
            "seed": seed,
            "holdout": check.holdout,
            "candidates": check.max_steps,
            "variants": [
                {
                    "task": t,
                    "label": lbl,
                    "scores": {str(n): v for n, v in sorted(by.items())},
                    "max_steps": chosen.get((t, lbl)),
                }
                for (t, lbl), by in scores.items()
            ],
        },
    )
    return chosen, summary


def check_holdout_first(planned: list[PlannedRun], holdout: int, echo, field: str = "schedule_check.holdout") -> None:
    """``<field>`` (a schedule check's or a baseline search's holdout) comes out of each task's labelled training
    rows: refuse a holdout that leaves none to train on before the teachers train for nothing (the runs would each
    fail on ``data.holdout``)."""
    from unikd.data.labelled import load_task_data

    seen: set[str] = set()
    for run in planned:
        data = run.config.data
        key = canonical([data.model_dump(mode="json"), run.config.seed])
        if run.kind == "teacher" or key in seen:
            continue
        seen.add(key)
        try:
            rows = len(load_task_data(data.model_copy(update={"holdout": None}), seed=run.config.seed).train)
        except ConfigError:  # a missing data_dir, an unreadable file: before anything trains, as the runs would
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a hub dataset while offline: the runs will say more
            echo(f"note: {field} not checked before running ({type(exc).__name__}: {exc})")
            return
        if holdout >= rows:
            raise ConfigError(
                field,
                f"holds out {holdout} of the {rows} labelled training rows of {run.task} (data.train_limit="
                f"{data.train_limit}), leaving none for the check's runs to train on",
                f"use {field} below {rows}, e.g. {max(1, rows // 5)} (20%); the check's runs train on the rest",
            )
