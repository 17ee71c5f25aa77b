"""Leave-one-task-out selection of the KD objective, from the committed study reports (issue 35).

For each of SST-2, MRPC, RTE and STS-B the objective is chosen on the other three tasks alone (the highest mean
paired gain over the no-KD twin on their dev sets) and tested on the held-out task's dev, which played no part in
the choice. The candidates are the objectives every task ran (docs/study-cpu/transfer-glue3 and transfer-sst2):
TinyBERT two-step with extra rows, logits KD with extra rows, logits KD on the labels alone, and pseudo-labels
(the teacher's argmax on the extra rows, no KD loss). The extra rows are 4 augmented copies per row on the three
small tasks and real unlabelled SST-2 sentences on SST-2; the students are 3 x 384 from the teacher's layers,
600 steps (docs/study-cpu.md has the setups).

    python docs/studies/loto.py            # prints the Markdown table docs/study-cpu.md carries
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

REPORTS = Path(__file__).resolve().parents[1] / "study-cpu"

#: candidate -> the label each task's study gave it
CANDIDATES = {
    "TinyBERT two-step + extra rows": {
        "sst2": "TinyBERT two-step + transfer",
        "*": "TinyBERT two-step + augmentation",
    },
    "logits KD + extra rows": {"sst2": "logits KD + transfer", "*": "logits KD + augmentation"},
    "logits KD, labels only": {"sst2": "logits KD, 2,000 labels", "*": "logits KD"},
    "pseudo-labels": {"sst2": "pseudo-labels", "*": "pseudo-labels"},
}
TASKS = ("sst2", "mrpc", "rte", "stsb")


def paired_gains() -> dict[tuple[str, str], tuple[float, float, float]]:
    """(task, candidate) -> (mean paired gain over no-KD, 95% interval low, high), from the reports' paired.csv."""
    rows = []
    for study in ("transfer-glue3", "transfer-sst2"):
        with open(REPORTS / study / "paired.csv", newline="") as f:
            rows += list(csv.DictReader(f))
    out = {}
    for cand, labels in CANDIDATES.items():
        for task in TASKS:
            label = labels.get(task, labels["*"])
            hit = [r for r in rows if r["task"] == task and r["label"] == label]
            if len(hit) != 1:
                sys.exit(f"no single paired row for {task} / {label!r} in the reports")
            r = hit[0]
            out[task, cand] = (float(r["diff_mean"]), float(r["ci_low"]), float(r["ci_high"]))
    return out


def loto_table() -> str:
    gains = paired_gains()
    lines = [
        "| held-out task | chosen on the other three | their mean gain | held-out gain over no-KD (95% CI) "
        "| held-out rank of the choice |",
        "|---|---|---|---|---|",
    ]
    for held in TASKS:
        others = [t for t in TASKS if t != held]
        score = {c: sum(gains[t, c][0] for t in others) / len(others) for c in CANDIDATES}
        chosen = max(score, key=score.get)
        mean, lo, hi = gains[held, chosen]
        ranked = sorted(CANDIDATES, key=lambda c: -gains[held, c][0])
        lines.append(
            f"| {held} | {chosen} | {100 * score[chosen]:+.2f} | {100 * mean:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}] "
            f"| {ranked.index(chosen) + 1} of {len(ranked)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(loto_table())
