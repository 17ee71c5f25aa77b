"""Study reports: Markdown and CSV tables, and matplotlib plots, from a study's SQLite database.

``make_report(study_dir)`` reads the finished runs of the study's latest expansion (``current`` rows with
status ``done``) and writes into ``study_dir``:

- ``results.csv``: one row per task x variant (``label``): kind, axis values, n (seeds), mean and std of
  the task score and of every other dev metric, parameters, CPU latency (p50 per batch size), steps and wall time;
- ``summary.csv``: one row per variant: per-task score mean/std and the GLUE average
  (``unikd.metrics.glue_average`` over the per-task means; its std is over the per-seed averages);
- ``paired.csv``: per KD variant and task, the paired per-seed difference to the no-KD baseline
  (``paired_to_baseline``): n, mean and 95% Student-t interval;
- ``report.md``: both tables (scores x100) plus per-axis marginal tables, the paired differences, the
  comparison of two variants when asked (``compare=(A, B)``: ``compare_variants``) and the list of failed runs;
- ``score_vs_parameters.png``, ``score_vs_latency.png``: one panel per task (and the GLUE average),
  teacher (star) and no-KD baselines (squares) marked apart from the KD students (circles);
- ``axis_<name>.png``: per axis, bars of the mean score per value (over seeds and the other axes) with
  std error bars, grouped by task, next to the teacher and the no-KD baseline(s).

Std is the sample standard deviation (n - 1); it is 0 when n = 1.
"""

from __future__ import annotations

import csv
import json
import os
from collections import OrderedDict
from pathlib import Path

from unikd.compat import schedule_check_study
from unikd.errors import ConfigError
from unikd.guards import WEAK_TEACHER_HEADROOM
from unikd.io import atomic_write_text
from unikd.student import human_count
from unikd.study.aggregate import (
    GLUE,
    all_glue,
    extra_latency,
    latency_batches,
    aggregate,
    compare_variants,
    marginal,
    paired_to_baseline,
    paired_to_augmentation_only,
    paired_to_pseudo_labels,
    paired_to_tuned_baseline,
)
from unikd.study.plots import plots
from unikd.study.schedule import SCHEDULE_FILE, SCHEDULE_HOLDOUT_ADVISED, holdout_noise
from unikd.study.tuning import SEARCH_FILE


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------
def _fmt_score(mean, std, n=None) -> str:
    if mean is None:
        return "-"
    text = f"{100 * mean:.2f} ± {100 * (std or 0.0):.2f}"
    return text + (f" (n={n})" if n is not None else "")


def _fmt_params(p) -> str:
    return "-" if p is None else human_count(p)


def _fmt_ms(m, s=None) -> str:
    if m is None:
        return "-"
    return f"{m:.2f}" + (f" ± {s:.2f}" if s else "")


def _md_table(header: list[str], body: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in row] for row in [header] + body]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
    return "\n".join(lines)


def _write_csv(path: Path, records: list[dict]) -> None:
    if not records:
        atomic_write_text(path, "")
        return
    fields = list(OrderedDict.fromkeys(k for r in records for k in r))
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in records:
        writer.writerow(
            {k: ("" if r.get(k) is None else (repr(r[k]) if isinstance(r[k], float) else r[k])) for k in fields}
        )
    atomic_write_text(path, buf.getvalue())


def _load_rows(study_dir: Path) -> list[dict]:
    from unikd.study import DB_NAME, StudyDB

    if not (study_dir / DB_NAME).is_file():
        raise ConfigError(
            "study_dir",
            f"{study_dir / DB_NAME} does not exist",
            "pass the output_dir of a study run with `unikd study`",
        )
    with StudyDB(study_dir / DB_NAME) as db:
        rows = db.rows(current_only=True)
    if not rows:
        raise ConfigError("study_dir", f"{study_dir / DB_NAME} holds no runs", "run `unikd study` first")
    return rows


def _summary_section(per_variant, tasks) -> list[str]:
    extra = extra_latency(per_variant)
    average = ["GLUE avg" if all_glue(tasks) else "avg"] if tasks else []
    header = ["variant", "kind"] + tasks + average + ["parameters", "latency (ms)"] + [h for _, h in extra]
    body = []
    for v in per_variant:
        body.append(
            [v["label"], v["kind"]]
            + [_fmt_score(v[f"{t}_mean"], v[f"{t}_std"], v[f"{t}_n"] or None) for t in tasks]
            + ([_fmt_score(v[f"{GLUE}_mean"], v[f"{GLUE}_std"])] if tasks else [])
            + [_fmt_params(v["parameters"]), _fmt_ms(v["latency_ms_mean"])]
            + [_fmt_ms(v[k]) for k, _ in extra]
        )
    return ["## Summary", "", _md_table(header, body), ""]


def _per_task_section(per_task, tasks, metrics) -> list[str]:
    md = ["## Per task", ""]
    for task in tasks:
        recs = [r for r in per_task if r["task"] == task]
        task_metrics = [m for m in metrics if any(r.get(f"{m}_mean") is not None for r in recs)]
        extra = extra_latency(recs)
        header = ["variant", "kind", "n", "score"] + task_metrics + ["parameters", "latency (ms)"]
        header += [h for _, h in extra] + ["steps", "wall (s)"]
        body = [
            [r["label"], r["kind"], str(r["n"]), _fmt_score(r["score_mean"], r["score_std"])]
            + [_fmt_score(r[f"{m}_mean"], r[f"{m}_std"]) for m in task_metrics]
            + [_fmt_params(r["parameters"]), _fmt_ms(r["latency_ms_mean"], r["latency_ms_std"])]
            + [_fmt_ms(r[k], r[k.replace("_mean", "_std")]) for k, _ in extra]
            + ["-" if r["steps"] is None else str(r["steps"])]
            + ["-" if r["wall_s_mean"] is None else f"{r['wall_s_mean']:.0f}"]
            for r in recs
        ]
        md += [f"### {task}", "", _md_table(header, body), ""]
    return md


def _teacher_section(rows: list[dict], per_task: list[dict], paired: list[dict]) -> list[str]:
    """Each task's teacher against the trivial baseline (its headroom; under WEAK_TEACHER_HEADROOM: flagged weak),
    and how much of the teacher-student gap each KD variant closes: per task (the mean paired gain over its no-KD
    twin, over the gap from that twin to the teacher, capped at 100%) and pooled over the tasks (the gains' sum
    over the gaps' sum, uncapped)."""
    teachers = {r["task"]: r for r in rows if r["kind"] == "teacher" and r["status"] == "done"}
    if not teachers:
        return []
    body = []
    for task, t in teachers.items():
        trivial = ((t.get("metrics") or {}).get("trivial_baseline") or {}).get("score")
        head = None if trivial is None or t["score"] is None else t["score"] - trivial
        flag = "" if head is None or head >= WEAK_TEACHER_HEADROOM else " (weak teacher: KD may not pay)"
        body.append(
            [
                task,
                f"{100 * t['score']:.2f}",
                "-" if trivial is None else f"{100 * trivial:.2f}",
                "-" if head is None else f"{100 * head:+.2f}{flag}",
            ]
        )
    md = [
        "## Teachers and the gap closed",
        "",
        _md_table(["task", "teacher", "trivial baseline", "headroom"], body),
        "",
    ]
    means = {(r["task"], r["label"]): r["score_mean"] for r in per_task}
    gaps: dict[str, dict[str, tuple[float, float]]] = {}
    for p in paired:
        t = teachers.get(p["task"])
        base = means.get((p["task"], p["baseline"])) if p["baseline"] and " / " not in p["baseline"] else None
        if t is None or base is None or p["diff_mean"] is None or t["score"] is None or t["score"] <= base:
            continue
        gaps.setdefault(p["label"], {})[p["task"]] = (p["diff_mean"], t["score"] - base)
    if not gaps:
        return md
    tasks = list(teachers)
    rows_md = []
    for label, by_task in gaps.items():
        cells = [(f"{100 * min(1.0, by_task[t][0] / by_task[t][1]):.0f}%" if t in by_task else "-") for t in tasks]
        pooled = sum(g for g, _ in by_task.values()) / sum(gap for _, gap in by_task.values())
        rows_md.append(
            [label, *cells, f"{100 * pooled:.0f}%" + ("" if len(by_task) == len(tasks) else " (tasks with a pair)")]
        )
    md += [
        "Gap closed: the mean paired gain over the no-KD twin, over the gap from that twin to the teacher; per task "
        "capped at 100% (a student above a weak teacher closes all of it, not more), pooled over the tasks uncapped.",
        "",
        _md_table(["variant", *tasks, "pooled"], rows_md),
        "",
    ]
    return md


def _per_axis_section(rows, tasks, axis_names) -> list[str]:
    if len(axis_names) <= 1:
        return []
    md = ["## Per axis (mean over seeds and the other axes)", ""]
    for axis in axis_names:
        stats = marginal(rows, axis)
        bars = list(OrderedDict.fromkeys(bar for (_, bar) in stats))
        body = [[bar] + [_fmt_score(*stats[(t, bar)]) if (t, bar) in stats else "-" for t in tasks] for bar in bars]
        md += [f"### {axis}", "", _md_table([axis] + tasks, body), ""]
    return md


def _fmt_diff(stats: dict) -> tuple[str, str]:
    """(mean, 95% interval) of ``paired_stats`` x100."""
    if stats["diff_mean"] is None:
        return "-", "-"
    if stats["ci_low"] is None:
        return f"{100 * stats['diff_mean']:+.2f}", "n/a (n < 2)"
    return f"{100 * stats['diff_mean']:+.2f}", f"[{100 * stats['ci_low']:+.2f}, {100 * stats['ci_high']:+.2f}]"


PAIRED_NOTE = (
    "Paired by seed, scores x100: mean difference and 95% Student-t interval, mean ± t(0.975, n - 1) · sd / √n "
    "(no interval when n < 2)."
)


def _paired_section(paired: list[dict], against: str = "no-KD") -> list[str]:
    if not paired:
        return []
    body = [
        [p["task"], p["label"], p["baseline"] or "-", p["steps"] or "-", str(p["n"]), *_fmt_diff(p)] for p in paired
    ]
    what = {
        "no-KD": "Each KD variant minus the no-KD run of the same task, seed and step budget (the same student, data "
        "and optimizer, without the plan, transfer data or teacher cache; '-' where there is none). ",
        "pseudo-labels": "Each KD variant with transfer data minus the pseudo-label run on the same rows (the same "
        "task, seed, step budget, student and transfer data, the teacher's argmax as the label and no KD loss): "
        "what the KD loss adds beyond more labelled data ('-' where there is none). ",
        "tuned no-KD": "Each KD variant minus the no-KD student a baseline search tuned on held-out training rows "
        "(the same task, seed, student and data; the searched settings are its own): what KD gains over a baseline "
        "tuned as hard as it ('-' where there is none). ",
        "augmentation-only": "Each KD variant with augmented rows minus the augmentation-only run on the same copies "
        "(the same task, seed, step budget and student; the copies keep their source rows' gold labels, no teacher): "
        "what the teacher adds beyond more rows ('-' where there is none). ",
    }[against]
    return [
        f"## Paired differences to {against}",
        "",
        what + PAIRED_NOTE,
        "",
        _md_table(["task", "variant", f"{against} baseline", "steps", "n", "difference", "95% interval"], body),
        "",
    ]


def comparison_md(records: list[dict], a: str, b: str) -> str:
    """The Markdown section of ``compare_variants(rows, a, b)``."""
    body = [["GLUE avg" if r["task"] == GLUE else r["task"], str(r["n"]), *_fmt_diff(r)] for r in records]
    return "\n".join(
        [
            f"## Comparison: {a} − {b}",
            "",
            "Per task (and the per-seed task average). " + PAIRED_NOTE,
            "",
            _md_table(["task", "n", "difference", "95% interval"], body),
            "",
        ]
    )


def _unfinished_sections(rows) -> list[str]:
    md = []
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        md += ["## Failed runs", "", "Re-run them with `unikd study ... --retry-failed`.", ""]
        body = []
        for r in failed:
            lines = (r.get("error") or "").strip().splitlines()
            first = next((ln for ln in lines if ln.strip()), "")
            body.append([r["run_id"], r["task"], r["label"], first[:160]])
        md += [_md_table(["run", "task", "variant", "error"], body), ""]
    pending = [r for r in rows if r["status"] in ("pending", "running")]
    if pending:
        md += [
            f"{len(pending)} run(s) not finished: "
            + ", ".join(r["run_id"] for r in pending[:20])
            + (" ..." if len(pending) > 20 else ""),
            "",
        ]
    return md


def _any_pair(paired: list[dict]) -> list[dict]:
    """A pairing's records, or none when not one variant found its baseline (a study run before the control)."""
    return paired if any(p["n"] for p in paired) else []


def _paired_to_tuned(study_dir: Path, rows: list[dict]) -> list[dict]:
    """The pairing to the tuned no-KD students, when the study directory holds a baseline search."""
    path = study_dir / SEARCH_FILE
    if not path.is_file():
        return []
    return paired_to_tuned_baseline(rows, list(json.loads(path.read_text())["grid"]))


def _schedule_section(study_dir: Path, studies: list[str]) -> list[str]:
    """The schedule check's held-out scores per budget and the steps each variant trained at (schedule_check.json),
    where the check is one of the reported ``studies``' (another study in the same directory did not train by it)."""
    path = study_dir / SCHEDULE_FILE
    if not path.is_file():
        return []
    check = json.loads(path.read_text())
    if schedule_check_study(check, studies[0] if studies else None) not in studies:
        return []
    budgets = [str(n) for n in check["candidates"]]
    body = [
        [v["task"], v["label"]]
        + ["-" if v["scores"].get(b) is None else f"{100 * v['scores'][b]:.2f}" for b in budgets]
        + [str(v["max_steps"]) if v["max_steps"] else "its own"]
        for v in check["variants"]
    ]
    noise = f" Note: {holdout_noise(check['holdout'])}." if check["holdout"] < SCHEDULE_HOLDOUT_ADVISED else ""
    return [
        "## Schedule check",
        "",
        f"Seed {check['seed']}, scored on {check['holdout']} held-out training rows (not dev); each variant then "
        f"trained at its best budget (a tie: the fewer steps), its baselines at the same steps.{noise}",
        "",
        _md_table(["task", "variant"] + [f"{b} steps" for b in budgets] + ["chosen"], body),
        "",
    ]


def _splits_note(study_dir: Path, studies: list[str]) -> str:
    """Which split chose and which reports (issue 35): the scores are dev's; what the study chose itself was
    chosen on held-out training rows, and a ranking read off this report is chosen on the dev it reports."""
    chose = []
    path = study_dir / SCHEDULE_FILE
    if path.is_file():
        check = json.loads(path.read_text())
        if schedule_check_study(check, studies[0] if studies else None) in studies:
            chose.append(f"the schedule check chose the step budgets on {check['holdout']} held-out training rows")
    path = study_dir / SEARCH_FILE
    if path.is_file():
        search = json.loads(path.read_text())
        chose.append(
            f"the baseline search chose the tuned no-KD settings on {search['holdout']} held-out training rows"
        )
    head = "Splits: every score in this report is on dev, which chose nothing here"
    if chose:
        return f"{head}: {'; '.join(chose)}. A ranking of the variants read off these tables is chosen on dev."
    return (
        f"{head}. A ranking of the variants read off these tables is chosen and reported on the same dev rows: "
        "confirm it on held-out training rows (a schedule check or baseline search: data.holdout) or another task."
    )


def _scores_note(tasks: list[str], batches: list[str]) -> str:
    latency = f"Latency: CPU p50 at batch {batches[0]} in PyTorch" + (
        f" (batch {', '.join(batches[1:])}: their own columns)." if len(batches) > 1 else "."
    )
    if all_glue(tasks):
        return (
            "Scores are each task's dev `score` x100 (accuracy; MRPC: (accuracy + F1) / 2; STS-B: (Pearson + "
            f"Spearman) / 2), mean ± sample std over seeds (0 when n = 1). {latency} "
            "GLUE avg: unikd.metrics.glue_average over the per-task means (its ± is over per-seed averages)."
        )
    return (
        "Scores are each task's dev `score` x100 (eval.metric, else the task type's default: accuracy, "
        "Pearson, sample F1, entity F1), mean ± sample std over seeds (0 when n = 1). "
        f"{latency} avg: the mean of the per-task means (its ± is over per-seed averages)."
    )


def make_report(study_dir: str | os.PathLike, compare: tuple[str, str] | None = None) -> dict[str, str]:
    """Write report.md, results.csv, summary.csv, paired.csv and the plots into ``study_dir``; returns {file name:
    path} of everything written. ``compare`` (A, B): report.md also holds ``comparison_md`` of A − B."""
    from unikd.study import DB_NAME

    study_dir = Path(study_dir)
    rows = _load_rows(study_dir)
    comparison = comparison_md(compare_variants(rows, *compare), *compare) if compare else None
    names = list(OrderedDict.fromkeys(r["study"] for r in rows))
    done = [r for r in rows if r["status"] == "done"]
    per_task, per_variant, tasks, metrics = aggregate(rows)
    axis_names = list(OrderedDict.fromkeys(a for r in done for a in (r.get("axes") or {})))
    written: dict[str, str] = {}

    def out(name: str) -> Path:
        p = study_dir / name
        written[name] = str(p)
        return p

    _write_csv(out("results.csv"), per_task)
    _write_csv(out("summary.csv"), per_variant)
    paired = paired_to_baseline(rows)
    _write_csv(out("paired.csv"), paired)
    paired_pseudo = paired_to_pseudo_labels(rows)
    if paired_pseudo:
        _write_csv(out("paired_pseudo_labels.csv"), paired_pseudo)
    paired_tuned = _any_pair(_paired_to_tuned(study_dir, rows))
    if paired_tuned:
        _write_csv(out("paired_tuned_no_kd.csv"), paired_tuned)
    paired_augment = _any_pair(paired_to_augmentation_only(rows))
    if paired_augment:
        _write_csv(out("paired_augmentation_only.csv"), paired_augment)
    figures = plots(rows, per_task, per_variant, tasks, axis_names, out) if done else []
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    md = [
        f"# Study report: {', '.join(names)}",
        "",
        "Runs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f" (database {DB_NAME}).",
        "",
        _scores_note(tasks, latency_batches(done)),
        "",
        _splits_note(study_dir, names),
        "",
    ]
    if per_variant:
        md += _summary_section(per_variant, tasks) + _per_task_section(per_task, tasks, metrics)
        md += _teacher_section(rows, per_task, paired)
        md += _per_axis_section(rows, tasks, axis_names) + _paired_section(paired)
        md += _paired_section(paired_pseudo, "pseudo-labels")
        md += _paired_section(paired_tuned, "tuned no-KD")
        md += _paired_section(paired_augment, "augmentation-only")
        md += [comparison] if comparison else []
    else:
        md += ["No finished runs yet.", ""]
    if figures:
        md += ["## Plots", ""] + [f"![{title}]({name})" for title, name in figures] + [""]
    md += _schedule_section(study_dir, names)
    md += _unfinished_sections(rows)
    atomic_write_text(out("report.md"), "\n".join(md))
    return written


__all__ = ["comparison_md", "make_report"]
