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
        runs["no-KD" if kind == "no-KD" else label][seed] = {
            "ppl": m["final"]["perplexity"],
            "nll": m["generation"]["teacher_nll"],
            "rouge": m["generation"]["rouge_l"],
            "wall": wall,
        }
    twin = runs.pop("no-KD")
    lines = [
        "| student | seeds | dev perplexity (mean) | vs no-KD per seed | paired 95% | teacher NLL of samples | "
        "vs no-KD (paired 95%) | ROUGE-L | wall per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def mean(xs):
        return sum(xs) / len(xs)

    seeds = sorted(twin)
    t = [twin[s] for s in seeds]
    lines.append(
        f"| no-KD twin | {len(t)} | {mean([r['ppl'] for r in t]):.2f} | | | {mean([r['nll'] for r in t]):.3f} | | "
        f"{mean([r['rouge'] for r in t]):.1f} | {mean([r['wall'] for r in t]):.0f} s |"
    )
    for label, by_seed in runs.items():
        common = [s for s in seeds if s in by_seed]
        kd = [by_seed[s] for s in common]
        logs = [math.log(by_seed[s]["ppl"] / twin[s]["ppl"]) for s in common]
        nll = [by_seed[s]["nll"] - twin[s]["nll"] for s in common]
        ratio, nd = paired_stats(logs), paired_stats(nll)
        ci = f"[{_pct(ratio['ci_low'])}, {_pct(ratio['ci_high'])}]" if ratio["ci_low"] is not None else "-"
        nci = f" [{nd['ci_low']:+.3f}, {nd['ci_high']:+.3f}]" if nd["ci_low"] is not None else ""
        lines.append(
            f"| {label} | {len(kd)} | {mean([r['ppl'] for r in kd]):.2f} | {', '.join(_pct(x) for x in logs)} | {ci} "
            f"| {mean([r['nll'] for r in kd]):.3f} | {nd['diff_mean']:+.3f}{nci} | {mean([r['rouge'] for r in kd]):.1f} "
            f"| {mean([r['wall'] for r in kd]):.0f} s |"
        )
    if teacher:
        lines.append(
            f"\nTeacher (fine-tuned): dev perplexity {teacher['final']['perplexity']:.2f}; unigram baseline "
            f"{teacher['trivial_baseline']['perplexity']:.1f}."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1]))
