"""The no-KD baselines tuned as hard as KD (``baseline_search:`` in a study file): before the study trains, every
distinct no-KD student of each task trains at each point of the grid on one seed, scored on held-out training rows
(``data.holdout``, never dev), and the best point becomes a ``no-KD tuned`` student beside the untuned twin on every
seed. ``baseline_search.json`` records every score and the choice; the report pairs each KD variant with the tuned
student as well.

A twin is told apart from the study's other no-KD students by ``search_key``: its hash payload without the seed and
the searched fields, so every seed's twin of one variant finds the choice its search made.
"""

from __future__ import annotations

from pathlib import Path

from unikd.errors import ConfigError
from unikd.identity import config_hash, is_augmentation_only
from unikd.io import atomic_write_json
from unikd.study.db import DB_NAME, StudyDB
from unikd.study.expand import PlannedRun, grid_points, point_label, search_key, with_point
from unikd.study.file import StudyConfig
from unikd.study.schedule import check_holdout_first

SEARCH_FILE = "baseline_search.json"


def baseline_search(study: StudyConfig, root: Path, planned: list[PlannedRun], run_planned, **how) -> tuple:
    """Run the search (through ``run_planned``, the runner's, as a study of its own in the same database: finished
    points are found by hash) and return ({(task, search key): the best point}, the search's summary); an empty
    choice when it stopped (``--max-hours``) or a run failed. ``how``: the runner's workers, runner, echo,
    max_hours, retry_failed."""
    search = study.baseline_search
    seed = search.seed if search.seed is not None else study.seeds[0]
    twins: dict[tuple, PlannedRun] = {}
    wanted = _searched_baselines(planned, search.variants)
    for run in planned:
        if run.kind == "no-KD" and run.seed == seed and not is_augmentation_only(run.config):
            if wanted is not None and run.run_id not in wanted:
                continue
            twins.setdefault((run.task, search_key(run.config, search.grid)), run)
    name = f"{study.name} / baseline search"
    runs = [r for r in planned if r.kind == "teacher"]
    points = grid_points(search.grid)
    by_twin: dict[tuple, list[tuple[dict, PlannedRun]]] = {}
    for key, twin in twins.items():
        for point in points:
            cfg = with_point(twin.config, point)
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"holdout": search.holdout})})
            teacher_hash = next(t.config_hash for t in runs if t.run_id == twin.teacher_id)
            h = config_hash(cfg, str(root), teacher_hash)
            run_id = f"{twin.task}-no-kd-search-s{seed}-{h[:8]}"
            cfg = cfg.model_copy(update={"output_dir": str(root / "runs" / run_id)})
            run = PlannedRun(
                run_id=run_id,
                kind="no-KD",
                task=twin.task,
                seed=seed,
                label=f"no-KD search ({point_label(point)})",
                axes={},
                config=cfg,
                config_hash=h,
                teacher_id=twin.teacher_id,
                study=name,
            )
            runs.append(run)
            by_twin.setdefault(key, []).append((point, run))
    check_holdout_first(runs, search.holdout, how["echo"], "baseline_search.holdout")
    how["echo"](
        f"baseline search: {len(twins)} no-KD student(s) x {len(points)} grid points, seed {seed}, scored on "
        f"{search.holdout} held-out training rows"
    )
    sub = study.model_copy(update={"name": name, "latency": study.latency.model_copy(update={"enabled": False})})
    summary = run_planned(sub, runs, root, **how)
    if summary["pending"] or summary["status"].get("failed"):
        return {}, summary
    return _choose(study, root, by_twin, seed), summary


def _searched_baselines(planned: list[PlannedRun], variants: list[str] | None) -> set[str] | None:
    """The run ids of the no-KD twins of ``variants`` (None: every twin); a label no KD variant has is refused."""
    if variants is None:
        return None
    labels = {r.label for r in planned if r.kind == "kd"}
    unknown = [v for v in variants if v not in labels]
    if unknown:
        raise ConfigError(
            "baseline_search.variants",
            f"{unknown} name no KD variant of the study",
            f"give labels among {sorted(labels)}",
        )
    return {r.baseline_id for r in planned if r.kind == "kd" and r.label in variants}


def _choose(study: StudyConfig, root: Path, by_twin: dict, seed: int) -> dict:
    """The best point per twin by its held-out score (ties: the earlier point); writes baseline_search.json."""
    search = study.baseline_search
    with StudyDB(root / DB_NAME) as db:
        # by run id, current or not: a later expansion of the same directory (the study itself) un-marks them
        scores = {
            row["run_id"]: row["score"] for row in db.rows(study=f"{study.name} / baseline search", current_only=False)
        }
    chosen, record = {}, []
    for key, tried in by_twin.items():
        scored = [(point, scores.get(run.run_id)) for point, run in tried]
        best = max(
            (i for i, (_, s) in enumerate(scored) if s is not None), key=lambda i: (scored[i][1], -i), default=None
        )
        if best is not None:
            chosen[key] = scored[best][0]
        record.append(
            {
                "task": key[0],
                "twin": tried[0][1].config.output_dir,
                "scores": [{"point": p, "score": s} for p, s in scored],
                "chosen": scored[best][0] if best is not None else None,
            }
        )
    atomic_write_json(
        root / SEARCH_FILE,
        {"study": study.name, "seed": seed, "holdout": search.holdout, "grid": search.grid, "twins": record},
    )
    return chosen
