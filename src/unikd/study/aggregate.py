"""A study's numbers from its database rows: per task x variant and per variant (mean ± std over seeds, the task
average), per axis value (``marginal``), and the paired per-seed differences of each KD variant to its no-KD and
pseudo-label twins (``identity.pairing_key`` says which runs are twins) or of two variants (``compare_variants``).
``unikd.study.report`` writes them as tables, ``unikd.study.plots`` as figures."""

from __future__ import annotations

import json
import statistics
from collections import OrderedDict

from unikd.errors import ConfigError
from unikd.identity import augment_signature, is_augmentation_only, is_pseudo_labels, pairing_key, total_steps
from unikd.stats import mean_std, paired_stats

KIND_ORDER = {"teacher": 0, "no-KD": 1, "kd": 2}
GLUE = "glue_avg"


def _task_average(scores: dict) -> float:
    """GLUE's average (``unikd.metrics.glue_average``) when every task is a GLUE task; with a study's own data specs
    among them (named by their ``name``), the plain mean of the task scores."""
    from unikd.metrics import glue_average

    if all_glue(list(scores)):
        return glue_average(scores)
    return statistics.fmean(float(v) for v in scores.values())


def _metric_names(rows: list[dict]) -> list[str]:
    names: list[str] = []
    for r in rows:
        for k in (r.get("metrics") or {}).get("final") or {}:
            if k != "score" and k not in names:
                names.append(k)
    return names


def _group_rows(rows: list[dict]) -> "OrderedDict[tuple[str, str], list[dict]]":
    """(task, label) -> rows, teacher first, then no-KD, then KD variants in study order."""
    groups: OrderedDict[tuple[str, str], list[dict]] = OrderedDict()
    for r in sorted(rows, key=lambda r: KIND_ORDER.get(r["kind"], 3)):
        groups.setdefault((r["task"], r["label"]), []).append(r)
    return groups


def latency_batches(done: list[dict]) -> list[str]:
    """The batch sizes timed, in the study's order (the first is ``latency_ms``'s); ["1"] for older rows."""
    found = OrderedDict.fromkeys(b for r in done for b in (r.get("latency_by_batch") or {}))
    return list(found) or ["1"]


def extra_latency(records: list[dict]) -> list[tuple[str, str]]:
    """(record key, table header) of each latency column beyond the first batch size's."""
    keys = OrderedDict.fromkeys(k for r in records for k in r if k.startswith("latency_b") and k.endswith("_ms_mean"))
    return [(k, f"latency b{k[len('latency_b') : -len('_ms_mean')]} (ms)") for k in keys]


def all_glue(tasks: list[str]) -> bool:
    from unikd.data import TASK_ALIASES
    from unikd.data.tasks import _norm

    return all(_norm(t) in TASK_ALIASES for t in tasks)


def aggregate(rows: list[dict]) -> tuple[list[dict], list[dict], list[str], list[str]]:
    """(per task x variant records, per variant records, tasks, metric names) from database rows."""
    done = [r for r in rows if r["status"] == "done"]
    tasks = list(OrderedDict.fromkeys(r["task"] for r in done))
    metrics = _metric_names(done)
    axis_names = list(OrderedDict.fromkeys(a for r in done for a in (r.get("axes") or {})))
    extra_batches = latency_batches(done)[1:]
    per_task: list[dict] = []
    for (task, label), group in _group_rows(done).items():
        rec = {
            "task": task,
            "label": label,
            "kind": group[0]["kind"],
            "n": len(group),
            "seeds": " ".join(str(r["seed"]) for r in group),
        }
        for a in axis_names:
            rec[f"axis:{a}"] = (group[0].get("axes") or {}).get(a, "")
        rec["score_mean"], rec["score_std"] = mean_std([r["score"] for r in group])
        for m in metrics:
            rec[f"{m}_mean"], rec[f"{m}_std"] = mean_std(
                [((r.get("metrics") or {}).get("final") or {}).get(m) for r in group]
            )
        rec["parameters"] = group[0].get("parameters")
        rec["latency_ms_mean"], rec["latency_ms_std"] = mean_std([r.get("latency_ms") for r in group])
        for b in extra_batches:
            rec[f"latency_b{b}_ms_mean"], rec[f"latency_b{b}_ms_std"] = mean_std(
                [(r.get("latency_by_batch") or {}).get(b) for r in group]
            )
        rec["wall_s_mean"], _ = mean_std([r.get("wall_s") for r in group])
        rec["steps"] = _steps(group[0])
        per_task.append(rec)

    per_variant: list[dict] = []
    labels = list(OrderedDict.fromkeys(rec["label"] for rec in per_task))
    for label in labels:
        recs = {rec["task"]: rec for rec in per_task if rec["label"] == label}
        first = next(iter(recs.values()))
        out = {"label": label, "kind": first["kind"]}
        for a in axis_names:
            out[f"axis:{a}"] = first.get(f"axis:{a}", "")
        for t in tasks:
            rec = recs.get(t)
            out[f"{t}_mean"] = rec["score_mean"] if rec else None
            out[f"{t}_std"] = rec["score_std"] if rec else None
            out[f"{t}_n"] = rec["n"] if rec else 0
        complete = all(out[f"{t}_mean"] is not None for t in tasks)
        out[f"{GLUE}_mean"] = _task_average({t: out[f"{t}_mean"] for t in tasks}) if complete and tasks else None
        # std of the per-seed GLUE averages, over the seeds that have every task
        by_seed: dict = {}
        for r in done:
            if r["label"] == label and r["score"] is not None:
                by_seed.setdefault(r["seed"], {})[r["task"]] = r["score"]
        seed_avgs = [_task_average(s) for s in by_seed.values() if set(s) == set(tasks)] if complete else []
        out[f"{GLUE}_std"] = mean_std(seed_avgs)[1] if seed_avgs else None
        params = [rec["parameters"] for rec in recs.values() if rec["parameters"] is not None]
        out["parameters"] = max(params) if params else None  # regression heads have 1 output fewer: take max
        lats = [rec["latency_ms_mean"] for rec in recs.values() if rec["latency_ms_mean"] is not None]
        out["latency_ms_mean"] = statistics.fmean(lats) if lats else None
        for b in extra_batches:
            lats = [rec[f"latency_b{b}_ms_mean"] for rec in recs.values() if rec[f"latency_b{b}_ms_mean"] is not None]
            out[f"latency_b{b}_ms_mean"] = statistics.fmean(lats) if lats else None
        per_variant.append(out)
    return per_task, per_variant, tasks, metrics


def marginal(rows: list[dict], axis: str) -> "OrderedDict[tuple[str, str], tuple[float | None, float | None, int]]":
    """(task, bar label) -> (mean, std, n) of the score over seeds and the other axes: KD rows by their
    value of ``axis``; the teacher; the no-KD baselines by their value of ``axis`` ('no-KD' when the
    baseline does not depend on it)."""
    out: OrderedDict = OrderedDict()
    groups: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
    for r in sorted((r for r in rows if r["status"] == "done"), key=lambda r: KIND_ORDER.get(r["kind"], 3)):
        value = (r.get("axes") or {}).get(axis)
        if r["kind"] == "teacher":
            bar = "teacher"
        elif r["kind"] == "no-KD":
            bar = "no-KD" if value in (None, "no-KD") else f"no-KD ({value})"
        else:
            if value is None:
                continue
            bar = str(value)
        groups.setdefault((r["task"], bar), []).append(r["score"])
    for key, scores in groups.items():
        m, s = mean_std(scores)
        out[key] = (m, s, len([x for x in scores if x is not None]))
    return out


def _paired_to(rows: list[dict], is_baseline, is_variant, key) -> list[dict]:
    """Per variant (``is_variant`` of its first row) and task, its score minus the baseline run (``is_baseline``)
    with the same ``key(row)``, over the seeds that have both: {"task", "label", "baseline" (its label(s) or None),
    "steps", **paired_stats}."""
    done = [r for r in rows if r["status"] == "done" and r["score"] is not None]
    baselines: dict[tuple, dict] = {}
    for r in done:
        if is_baseline(r):
            baselines.setdefault(key(r), r)
    out = []
    for (task, label), group in _group_rows(done).items():
        if not is_variant(group[0]):
            continue
        diffs, names = [], []
        for r in group:
            b = baselines.get(key(r))
            if b is not None:
                diffs.append(r["score"] - b["score"])
                names.append(b["label"])
        steps = " ".join(str(x) for x in OrderedDict.fromkeys(_steps(r) for r in group) if x is not None)
        baseline = " / ".join(OrderedDict.fromkeys(names)) or None
        out.append({"task": task, "label": label, "baseline": baseline, "steps": steps, **paired_stats(diffs)})
    return out


def _steps(row: dict) -> int | None:
    """A database row's optimizer steps (``identity.total_steps`` of its metrics)."""
    return total_steps(row.get("metrics"))


def _same_run_key(r: dict) -> tuple:
    return (r["task"], r["seed"], _steps(r), pairing_key(r["config"]))


def paired_to_baseline(rows: list[dict]) -> list[dict]:
    """Per KD variant and task, its score minus the no-KD run's of the same task, seed, step budget (the runs'
    ``identity.total_steps``) and config otherwise (``identity.pairing_key``), over the seeds that have both:
    {"task", "label", "baseline" (the no-KD label(s) or None), "steps", **paired_stats}."""
    return _paired_to(
        rows, lambda r: r["kind"] == "no-KD" and not is_augmentation_only(r.get("config")), _is_kd, _same_run_key
    )


def _is_kd(r: dict) -> bool:
    return r["kind"] == "kd"


def _transfer(row: dict) -> str:
    """A row's transfer sources, without the fields unikd added since at their defaults (rows of older runs)."""
    sources = ((row.get("config") or {}).get("data") or {}).get("transfer") or []
    return json.dumps(
        [{k: v for k, v in s.items() if not (k == "source_labels" and v is False)} for s in sources], sort_keys=True
    )


def paired_to_augmentation_only(rows: list[dict]) -> list[dict]:
    """Per KD variant with augmented rows and task, its score minus the augmentation-only run's (the same copies
    with their source rows' gold labels, no teacher; same task, seed, step budget and student): what the teacher
    adds beyond more rows. {"task", "label", "baseline", "steps", **paired_stats}."""
    return _paired_to(
        rows,
        lambda r: r["kind"] == "no-KD" and is_augmentation_only(r.get("config")),
        lambda r: _is_kd(r) and not is_pseudo_labels(r.get("config")) and augment_signature(r.get("config")) != "[]",
        lambda r: (*_same_run_key(r), augment_signature(r.get("config"))),
    )


def paired_to_pseudo_labels(rows: list[dict]) -> list[dict]:
    """Per KD variant with transfer data and task, its score minus the pseudo-label run's on the same rows (same
    task, seed, step budget, student and transfer data; the teacher's argmax as the label, no KD loss), over the
    seeds that have both: what KD adds beyond more labelled data. {"task", "label", "baseline", "steps",
    **paired_stats}."""

    def pseudo(r: dict) -> bool:
        return r["kind"] == "kd" and is_pseudo_labels(r.get("config"))

    return _paired_to(
        rows,
        pseudo,
        lambda r: r["kind"] == "kd" and not pseudo(r) and _transfer(r) != "[]",
        lambda r: (*_same_run_key(r), _transfer(r)),
    )


def paired_to_tuned_baseline(rows: list[dict], searched: list[str]) -> list[dict]:
    """Per KD variant and task, its score minus the tuned no-KD student's of the same task, seed and config otherwise
    (the ``searched`` fields and the step budget may differ: the search chose them; ``unikd.study.tuning``): what KD
    gains over a baseline tuned as hard as it. {"task", "label", "baseline", "steps", **paired_stats}."""

    def tuned(r: dict) -> bool:
        return r["kind"] == "no-KD" and ("tuned" in r["label"]) and not is_augmentation_only(r.get("config"))

    return _paired_to(rows, tuned, _is_kd, lambda r: (r["task"], r["seed"], pairing_key(r["config"], ignore=searched)))


def compare_variants(rows: list[dict], a: str, b: str) -> list[dict]:
    """The paired per-seed score difference of variant ``a`` minus variant ``b`` (report labels) per task and, with
    several tasks, of their per-seed task averages (task ``glue_avg``; the seeds with every task):
    [{"task", **paired_stats}]. Raises ConfigError naming the available labels for an unknown one."""
    done = [r for r in rows if r["status"] == "done" and r["score"] is not None]
    labels = list(OrderedDict.fromkeys(label for (_, label) in _group_rows(done)))
    for label in (a, b):
        if label not in labels:
            raise ConfigError(
                "--compare",
                f"no finished variant is labelled {label!r}",
                "use labels as the report shows them: " + ", ".join(repr(x) for x in labels),
            )
    score = {(r["label"], r["task"], r["seed"]): r["score"] for r in done}
    tasks = list(OrderedDict.fromkeys(r["task"] for r in done))
    seeds = list(OrderedDict.fromkeys(r["seed"] for r in done))
    out = []
    for task in tasks:
        both = [s for s in seeds if (a, task, s) in score and (b, task, s) in score]
        out.append({"task": task, **paired_stats([score[(a, task, s)] - score[(b, task, s)] for s in both])})
    if len(tasks) > 1:
        both = [s for s in seeds if all((x, t, s) in score for x in (a, b) for t in tasks)]
        diffs = [
            _task_average({t: score[(a, t, s)] for t in tasks}) - _task_average({t: score[(b, t, s)] for t in tasks})
            for s in both
        ]
        out.append({"task": GLUE, **paired_stats(diffs)})
    return out
