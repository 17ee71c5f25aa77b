"""The generative study's table (docs/study-cpu.md, "Generative decoders") from its database: per objective the mean
GSM8K dev response perplexity, each seed's relative change against the no-KD twin of the same seed with the paired
95% interval of the log ratio, the teacher's NLL per token of the student's samples (paired difference to the
twin's), ROUGE-L and the wall time per run.

    python docs/studies/generative_table.py docs/study-cpu/databases/cpu-generative-gsm8k.sqlite
"""

from __future__ import annotations

import json
import math
import sqlite3
import sys
from collections import defaultdict

from unikd.stats import paired_stats


def _pct(x: float) -> str:
    return f"{100 * math.expm1(x):+.1f}%"


def _row(label: str, by_seed: dict, twin: dict, mean) -> str:
    common = [s for s in sorted(twin) if s in by_seed]
    kd = [by_seed[s] for s in common]
    logs = [math.log(by_seed[s]["ppl"] / twin[s]["ppl"]) for s in common]
    nll = [by_seed[s]["nll"] - twin[s]["nll"] for s in common]
    ratio, nd = paired_stats(logs), paired_stats(nll)
    ci = f"[{_pct(ratio['ci_low'])}, {_pct(ratio['ci_high'])}]" if ratio["ci_low"] is not None else "-"
    nci = f" [{nd['ci_low']:+.3f}, {nd['ci_high']:+.3f}]" if nd["ci_low"] is not None else ""
    return (
        f"| {label} | {len(kd)} | {mean([r['ppl'] for r in kd]):.2f} | {', '.join(_pct(x) for x in logs)} | {ci} "
        f"| {mean([r['nll'] for r in kd]):.3f} | {nd['diff_mean']:+.3f}{nci} | {mean([r['rouge'] for r in kd]):.1f} "
        f"| {mean([r['wall'] for r in kd]):.0f} s |"
    )


#: (A, B) pairs of the study's variants compared seed by seed: perplexity ratio A / B with its paired interval
CONTRASTS = (
    ("forward KL, top-64 cache", "forward KL"),  # issue 38: the top-k cache against the online teacher
    ("forward KL, pruned init", "forward KL"),  # issue 38: the pruned student against uniform teacher layers
    ("no-KD (forward KL, pruned init)", "no-KD"),  # ... and their twins, without a teacher
)


def _contrasts(runs: dict, twins: dict) -> list[str]:
    both = {**runs, **twins}
    lines = []
    for a, b in CONTRASTS:
        if a not in both or b not in both:
            continue
        common = [s for s in sorted(both[b]) if s in both[a]]
        logs = [math.log(both[a][s]["ppl"] / both[b][s]["ppl"]) for s in common]
        st = paired_stats(logs)
        ci = f"[{_pct(st['ci_low'])}, {_pct(st['ci_high'])}]" if st["ci_low"] is not None else "-"
        lines.append(f"\n{a} vs {b}: perplexity {', '.join(_pct(x) for x in logs)} (seeds {common}); paired 95% {ci}")
    return lines


def main(path: str) -> str:
    db = sqlite3.connect(path)
    rows = db.execute("SELECT kind, label, seed, metrics, wall_s FROM runs WHERE status = 'done' AND current = 1")
    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    teacher = None
    for kind, label, seed, metrics, wall in rows:
        m = json.loads(metrics)
        if kind == "teacher":
            teacher = m
            continue
        runs[label][seed] = {
            "ppl": m["final"]["perplexity"],
            "nll": m["generation"]["teacher_nll"],
            "rouge": m["generation"]["rouge_l"],
            "wall": wall,
        }
    twins = {label: by_seed for label, by_seed in runs.items() if label.startswith("no-KD")}
    for label in twins:
        runs.pop(label)
    lines = [
        "| student | seeds | dev perplexity (mean) | vs no-KD per seed | paired 95% | teacher NLL of samples | "
        "vs no-KD (paired 95%) | ROUGE-L | wall per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def mean(xs):
        return sum(xs) / len(xs)

    for label, twin in twins.items():
        t = [twin[s] for s in sorted(twin)]
        name = "no-KD twin" + label[len("no-KD") :]
        lines.append(
            f"| {name} | {len(t)} | {mean([r['ppl'] for r in t]):.2f} | | | {mean([r['nll'] for r in t]):.3f} | | "
            f"{mean([r['rouge'] for r in t]):.1f} | {mean([r['wall'] for r in t]):.0f} s |"
        )
    for label, by_seed in runs.items():
        twin = twins.get(f"no-KD ({label})", twins["no-KD"])  # a variant with its own student has its own twin
        lines.append(_row(label, by_seed, twin, mean))
    lines += _contrasts(runs, twins)
    if teacher:
        lines.append(
            f"\nTeacher (fine-tuned): dev perplexity {teacher['final']['perplexity']:.2f}; unigram baseline "
            f"{teacher['trivial_baseline']['perplexity']:.1f}."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1]))
