"""The held-out QNLI study's tables (docs/study-cpu.md, "The recipe where nobody chose it") from its database: each
run's dev accuracy per seed, and each KD variant's paired difference (95% interval over seeds) to its own no-KD
twin, to the tuned no-KD student, to its pseudo-label and augmentation-only twins.

    python docs/studies/qnli_table.py docs/study-cpu/databases/cpu-heldout-qnli.sqlite
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import sys

from unikd.stats import paired_stats

#: the study's KD variants, in the table's order
VARIANTS = (
    "recipe as written (two-step + augmentation)",
    "two-step + augmentation, labels in step 2",
    "one-step logits KD + labels",
    "recipe, 2 x 384 (no width slice)",
    "recipe, 3 x 384 (the four tasks' depth)",
)


def _runs(db: str) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    rows = con.execute(
        "SELECT run_id, kind, label, seed, score, status, config FROM runs WHERE study = 'cpu-heldout-qnli' AND "
        "current = 1"
    ).fetchall()
    return [dict(r) for r in rows]


def _student(config: str) -> str:
    shape = json.loads(config)["student"]["shape"]
    return f"{shape.get('num_layers')}x{shape.get('hidden_size')}"


def _steps(config: str) -> int:
    cfg = json.loads(config)
    return (cfg["train"]["max_steps"] or 0) + sum((s.get("train") or {}).get("max_steps") or 0 for s in cfg["then"])


def _by_seed(runs: list[dict], keep) -> dict[int, float]:
    return {r["seed"]: 100 * r["score"] for r in runs if r["status"] == "done" and keep(r)}


def _paired(a: dict[int, float], b: dict[int, float]) -> str:
    common = sorted(set(a) & set(b))
    if not common:
        return "-"
    diffs = [a[s] - b[s] for s in common]
    st = paired_stats(diffs)
    ci = f" [{st['ci_low']:+.2f}, {st['ci_high']:+.2f}]" if st["ci_low"] is not None else ""
    return f"{st['diff_mean']:+.2f}{ci} ({', '.join(f'{d:+.2f}' for d in diffs)})"


def main(db: str) -> None:
    runs = _runs(db)
    teacher = next(r for r in runs if r["kind"] == "teacher")
    print(f"teacher {100 * teacher['score']:.2f}\n")
    print("| run | student | updates | seed 1 | seed 2 | seed 3 | mean |")
    print("|---|---|---|---|---|---|---|")
    for r_label in sorted({r["label"] for r in runs if r["kind"] != "teacher"}):
        group = [r for r in runs if r["label"] == r_label]
        for student in sorted({_student(r["config"]) for r in group}):
            for steps in sorted({_steps(r["config"]) for r in group if _student(r["config"]) == student}):
                scores = _by_seed(
                    group, lambda r, a=student, n=steps: _student(r["config"]) == a and _steps(r["config"]) == n
                )
                cells = [f"{scores[s]:.2f}" if s in scores else "-" for s in (1, 2, 3)]
                mean = f"{statistics.mean(scores.values()):.2f}" if scores else "-"
                print(f"| {r_label} | {student} | {steps} | {' | '.join(cells)} | {mean} |")
    print()
    print("| KD variant | − its no-KD twin | − tuned no-KD | − pseudo-labels | − augmentation-only |")
    print("|---|---|---|---|---|")
    tuned = _by_seed(runs, lambda r: r["label"] == "no-KD tuned")
    for v in VARIANTS:
        kd_runs = [r for r in runs if r["label"] == v and r["kind"] == "kd"]
        if not kd_runs:
            continue
        student, steps = _student(kd_runs[0]["config"]), _steps(kd_runs[0]["config"])
        kd = _by_seed(kd_runs, lambda r: True)

        def twin(r, prefix, student=student, steps=steps):
            return (
                r["label"].startswith(prefix)
                and _student(r["config"]) == student
                and (prefix != "no-KD" or _steps(r["config"]) == steps)
                and r["label"] != "no-KD tuned"
            )

        no_kd = _by_seed(runs, lambda r: r["kind"] == "no-KD" and twin(r, "no-KD"))
        augmented = bool(json.loads(kd_runs[0]["config"])["data"]["transfer"])  # only these have the two controls
        pseudo = _by_seed(runs, lambda r, t=twin: t(r, "pseudo-labels")) if augmented else {}
        augment = _by_seed(runs, lambda r, t=twin: t(r, "augmentation-only")) if augmented else {}
        tuned_here = tuned if student == "2x320" else {}
        print(
            f"| {v} | {_paired(kd, no_kd)} | {_paired(kd, tuned_here)} | {_paired(kd, pseudo)} "
            f"| {_paired(kd, augment)} |"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/study-cpu/databases/cpu-heldout-qnli.sqlite")
