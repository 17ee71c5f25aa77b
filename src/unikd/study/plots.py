"""A study's figures (matplotlib, Agg): score against parameters and against CPU latency, one panel per task and
the task average, the teacher (star) and no-KD baselines (squares) apart from the KD students (circles); per axis,
bars of the mean score per value with std error bars, next to the teacher and the no-KD baseline(s)."""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

from unikd.io import atomic_path
from unikd.study.aggregate import GLUE, marginal


def _file_stem(name: str) -> str:
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


def plots(rows, per_task, per_variant, tasks, axis_names, out) -> list[tuple[str, str]]:
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
        name = f"axis_{_file_stem(axis)}.png"
        _bars(rows, axis, tasks, out(name), f"{axis}: score per value (mean ± std over seeds)")
        plots.append((f"axis {axis}", name))
    return plots
