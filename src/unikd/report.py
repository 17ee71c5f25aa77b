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
import math
import os
import re
import statistics
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from unikd.errors import ConfigError
from unikd.io import atomic_path, atomic_write_text

KIND_ORDER = {"teacher": 0, "no-KD": 1, "kd": 2}
GLUE = "glue_avg"


def _task_average(scores: dict) -> float:
    """GLUE's average (``unikd.metrics.glue_average``) when every task is a GLUE task; with a study's own data specs
    among them (named by their ``name``), the plain mean of the task scores."""
    from unikd.metrics import glue_average

    if _all_glue(list(scores)):
        return glue_average(scores)
    return statistics.fmean(float(v) for v in scores.values())


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (0 for a single value); (None, None) for no values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


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


def _steps(row: dict) -> int | None:
    """Optimizer steps of a run: a chained run's over all its steps (metrics.json ``chain``)."""
    metrics = row.get("metrics") or {}
    if metrics.get("chain"):
        return sum(step.get("steps") or 0 for step in metrics["chain"])
    return metrics.get("steps")


def _latency_batches(done: list[dict]) -> list[str]:
    """The batch sizes timed, in the study's order (the first is ``latency_ms``'s); ["1"] for older rows."""
    found = OrderedDict.fromkeys(b for r in done for b in (r.get("latency_by_batch") or {}))
    return list(found) or ["1"]


def _extra_latency(records: list[dict]) -> list[tuple[str, str]]:
    """(record key, table header) of each latency column beyond the first batch size's."""
    keys = OrderedDict.fromkeys(k for r in records for k in r if k.startswith("latency_b") and k.endswith("_ms_mean"))
    return [(k, f"latency b{k[len('latency_b') : -len('_ms_mean')]} (ms)") for k in keys]


def _all_glue(tasks: list[str]) -> bool:
    from unikd.data import TASK_ALIASES
    from unikd.data.tasks import _norm

    return all(_norm(t) in TASK_ALIASES for t in tasks)


def aggregate(rows: list[dict]) -> tuple[list[dict], list[dict], list[str], list[str]]:
    """(per task x variant records, per variant records, tasks, metric names) from database rows."""
    done = [r for r in rows if r["status"] == "done"]
    tasks = list(OrderedDict.fromkeys(r["task"] for r in done))
    metrics = _metric_names(done)
    axis_names = list(OrderedDict.fromkeys(a for r in done for a in (r.get("axes") or {})))
    extra_batches = _latency_batches(done)[1:]
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


def paired_stats(diffs: Sequence[float]) -> dict:
    """{"n", "diff_mean", "ci_low", "ci_high"} of paired differences: the mean and its 95% Student-t interval,
    mean ± t.ppf(0.975, n - 1) * sd / sqrt(n) (sample sd); the interval is None when n < 2, the mean when n = 0."""
    n = len(diffs)
    mean = statistics.fmean(diffs) if n else None
    if n < 2:
        return {"n": n, "diff_mean": mean, "ci_low": None, "ci_high": None}
    from scipy.stats import t

    half = float(t.ppf(0.975, n - 1)) * statistics.stdev(diffs) / math.sqrt(n)
    return {"n": n, "diff_mean": mean, "ci_low": mean - half, "ci_high": mean + half}


def _pairing_key(config: dict | None) -> str:
    """A run's config without its seed, output_dir, what KD adds (stage, plan, chained steps, transfer data, teacher
    cache) and what sets its length (epochs, max_steps): a KD run shares it with the no-KD baselines of its student
    and data."""
    c = dict(config or {})
    for key in ("output_dir", "seed", "stage", "plan", "then"):
        c.pop(key, None)
    for section, keys in (
        ("train", ("teacher_cache", "teacher_cache_topk", "teacher_cache_dir", "epochs", "max_steps")),
        ("data", ("transfer",)),
    ):
        c[section] = {k: v for k, v in (c.get(section) or {}).items() if k not in keys}
    return json.dumps(c, sort_keys=True, default=str)


def _steps(row: dict):
    """A run's optimizer steps; a chained run's (``then:``) over all its steps, as its no-KD baseline has them."""
    metrics = row.get("metrics") or {}
    if metrics.get("chain") and all(step.get("steps") for step in metrics["chain"]):
        return sum(step["steps"] for step in metrics["chain"])
    return metrics.get("steps")


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


def _same_run_key(r: dict) -> tuple:
    return (r["task"], r["seed"], _steps(r), _pairing_key(r["config"]))


def paired_to_baseline(rows: list[dict]) -> list[dict]:
    """Per KD variant and task, its score minus the no-KD run's of the same task, seed, step budget (the runs'
    ``metrics["steps"]``) and config otherwise (``_pairing_key``), over the seeds that have both:
    {"task", "label", "baseline" (the no-KD label(s) or None), "steps", **paired_stats}."""
    return _paired_to(rows, lambda r: r["kind"] == "no-KD", lambda r: r["kind"] == "kd", _same_run_key)


def _is_pseudo_labels(row: dict) -> bool:
    return row["kind"] == "kd" and bool(((row.get("config") or {}).get("plan") or {}).get("pseudo_labels"))


def _transfer(row: dict) -> str:
    return json.dumps(((row.get("config") or {}).get("data") or {}).get("transfer") or [], sort_keys=True)


def paired_to_pseudo_labels(rows: list[dict]) -> list[dict]:
    """Per KD variant with transfer data and task, its score minus the pseudo-label run's on the same rows (same
    task, seed, step budget, student and transfer data; the teacher's argmax as the label, no KD loss), over the
    seeds that have both: what KD adds beyond more labelled data. {"task", "label", "baseline", "steps",
    **paired_stats}."""
    return _paired_to(
        rows,
        _is_pseudo_labels,
        lambda r: r["kind"] == "kd" and not _is_pseudo_labels(r) and _transfer(r) != "[]",
        lambda r: (*_same_run_key(r), _transfer(r)),
    )


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


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------
def _fmt_score(mean, std, n=None) -> str:
    if mean is None:
        return "-"
    text = f"{100 * mean:.2f} ± {100 * (std or 0.0):.2f}"
    return text + (f" (n={n})" if n is not None else "")


def _fmt_params(p) -> str:
    if p is None:
        return "-"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(p) >= scale:
            return f"{p / scale:.2f}{unit}"
    return str(int(p))


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


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "axis"


_STYLE = {
    "teacher": dict(marker="*", s=220, color="tab:red", zorder=4),
    "no-KD": dict(marker="s", s=70, color="tab:gray", zorder=3),
    "kd": dict(marker="o", s=50, zorder=3),
}


def _scatter(
    per_task: list[dict], per_variant: list[dict], tasks: list[str], x_key: str, x_label: str, path: Path, title: str
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(tasks) + ([GLUE] if len(tasks) > 1 else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == GLUE:
            points = [(v, v.get(x_key), v[f"{GLUE}_mean"], v[f"{GLUE}_std"]) for v in per_variant]
            ax.set_title("GLUE average")
        else:
            points = [(r, r.get(x_key), r["score_mean"], r["score_std"]) for r in per_task if r["task"] == panel]
            ax.set_title(panel)
        cmap = plt.get_cmap("tab10")
        kd_i = 0
        no_kd = [rec["label"] for rec, *_ in points if rec["kind"] == "no-KD"]
        for rec, x, y, s in points:
            if x is None or y is None:
                continue
            kind = rec["kind"]
            style = dict(_STYLE.get(kind, _STYLE["kd"]))
            if kind == "kd":
                style["color"] = cmap(kd_i % 10)
                kd_i += 1
            elif kind == "no-KD" and len(no_kd) > 1:
                shade = 0.3 + 0.5 * no_kd.index(rec["label"]) / (len(no_kd) - 1)
                style["color"] = (shade, shade, shade)
            ax.errorbar(
                [x], [100 * y], yerr=[100 * (s or 0.0)], fmt="none", ecolor=style["color"], alpha=0.6, capsize=3
            )
            ax.scatter([x], [100 * y], label=rec["label"], edgecolors="black", linewidths=0.5, **style)
        ax.set_xlabel(x_label)
        ax.set_ylabel("score (x100)")
        if x_key == "parameters":
            ax.ticklabel_format(axis="x", style="sci", scilimits=(6, 6))
        ax.grid(True, alpha=0.3)
    handles, labels = [], []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _bars(rows: list[dict], axis: str, tasks: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = marginal(rows, axis)
    bars = list(OrderedDict.fromkeys(bar for (_, bar) in stats))
    n_bars = max(1, len(bars))
    width = 0.8 / n_bars
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + len(tasks) * (0.5 + 0.35 * n_bars)), 4.5))
    cmap = plt.get_cmap("tab10")
    kd_i = 0
    no_kd = [b for b in bars if b.startswith("no-KD")]
    for j, bar in enumerate(bars):
        if bar == "teacher":
            color, hatch = "tab:red", None
        elif bar.startswith("no-KD"):
            shade = 0.45 + 0.4 * no_kd.index(bar) / max(1, len(no_kd) - 1)
            color, hatch = (shade, shade, shade), "//"
        else:
            color, hatch = cmap(kd_i % 10), None
            kd_i += 1
        xs, ys, es = [], [], []
        for i, task in enumerate(tasks):
            m, s, _ = stats.get((task, bar), (None, None, 0))
            if m is None:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(100 * m)
            es.append(100 * (s or 0.0))
        ax.bar(
            xs,
            ys,
            width=width,
            yerr=es,
            capsize=3,
            label=bar,
            color=color,
            hatch=hatch,
            edgecolor="black",
            linewidth=0.5,
        )
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks)
    ax.set_ylabel("score (x100), mean ± std")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


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


def _plots(rows, per_task, per_variant, tasks, axis_names, out) -> list[tuple[str, str]]:
    """Score vs parameters / latency, and one bar chart per axis: (title, file name) of each."""
    plots: list[tuple[str, str]] = []
    _scatter(
        per_task, per_variant, tasks, "parameters", "parameters", out("score_vs_parameters.png"), "score vs parameters"
    )
    plots.append(("score vs parameters", "score_vs_parameters.png"))
    if any(r.get("latency_ms_mean") is not None for r in per_task):
        _scatter(
            per_task,
            per_variant,
            tasks,
            "latency_ms_mean",
            "CPU latency, batch 1, p50 (ms)",
            out("score_vs_latency.png"),
            "score vs CPU latency",
        )
        plots.append(("score vs latency", "score_vs_latency.png"))
    for axis in axis_names:
        name = f"axis_{_safe(axis)}.png"
        _bars(rows, axis, tasks, out(name), f"{axis}: score per value (mean ± std over seeds)")
        plots.append((f"axis {axis}", name))
    return plots


def _summary_section(per_variant, tasks) -> list[str]:
    extra = _extra_latency(per_variant)
    average = ["GLUE avg" if _all_glue(tasks) else "avg"] if tasks else []
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
        extra = _extra_latency(recs)
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


def _schedule_section(study_dir: Path, studies: list[str]) -> list[str]:
    """The schedule check's held-out scores per budget and the steps each variant trained at (schedule_check.json),
    where the check is one of the reported ``studies``' (another study in the same directory did not train by it)."""
    from unikd.study.runner import SCHEDULE_FILE, SCHEDULE_HOLDOUT_ADVISED, holdout_noise

    path = study_dir / SCHEDULE_FILE
    if not path.is_file():
        return []
    check = json.loads(path.read_text())
    if check.get("study", studies[0] if studies else None) not in studies:  # files before 2026-12-06 name none
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


def _scores_note(tasks: list[str], batches: list[str]) -> str:
    latency = f"Latency: CPU p50 at batch {batches[0]} in PyTorch" + (
        f" (batch {', '.join(batches[1:])}: their own columns)." if len(batches) > 1 else "."
    )
    if _all_glue(tasks):
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
    plots = _plots(rows, per_task, per_variant, tasks, axis_names, out) if done else []
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    md = [
        f"# Study report: {', '.join(names)}",
        "",
        "Runs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f" (database {DB_NAME}).",
        "",
        _scores_note(tasks, _latency_batches(done)),
        "",
    ]
    if per_variant:
        md += _summary_section(per_variant, tasks) + _per_task_section(per_task, tasks, metrics)
        md += _per_axis_section(rows, tasks, axis_names) + _paired_section(paired)
        md += _paired_section(paired_pseudo, "pseudo-labels")
        md += [comparison] if comparison else []
    else:
        md += ["No finished runs yet.", ""]
    if plots:
        md += ["## Plots", ""] + [f"![{title}]({name})" for title, name in plots] + [""]
    md += _schedule_section(study_dir, names)
    md += _unfinished_sections(rows)
    atomic_write_text(out("report.md"), "\n".join(md))
    return written


__all__ = [
    "aggregate",
    "compare_variants",
    "comparison_md",
    "make_report",
    "marginal",
    "mean_std",
    "paired_stats",
    "paired_to_baseline",
    "paired_to_pseudo_labels",
]
