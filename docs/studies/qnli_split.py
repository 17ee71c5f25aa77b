"""Make the held-out fifth task: QNLI's public dev set split into a train and a dev part, by question.

Only QNLI's dev file (5,463 question/sentence pairs) is in ../shared/data/glue/QNLI/. QNLI pairs a question with
several sentences of its paragraph, so a row-level split would put the same question on both sides; the rule splits
by question instead: a row is dev when sha256(question) is 0 mod 5 (about a fifth of the 4,100 questions), train
otherwise. No random state, so every machine makes the same files. Written in GLUE's TSV layout
(``<out>/QNLI/train.tsv``, ``dev.tsv``: index, question, sentence, label), so ``data.task: qnli`` with
``data.data_dir: <out>`` reads it with GLUE's loader and metric. Numbers on it are not comparable with published
QNLI dev scores.

    python docs/studies/qnli_split.py ../shared/data/glue runs/data/glue-qnli-heldout
"""

from __future__ import annotations

import csv
import hashlib
import sys
from pathlib import Path


def split(glue_dir: Path, out: Path) -> dict[str, int]:
    with open(glue_dir / "QNLI" / "dev.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = rows[0], rows[1:]
    parts: dict[str, list[list[str]]] = {"train": [], "dev": []}
    for row in body:
        dev = int(hashlib.sha256(row[1].encode("utf-8")).hexdigest(), 16) % 5 == 0
        parts["dev" if dev else "train"].append(row)
    (out / "QNLI").mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        with open(out / "QNLI" / f"{name}.tsv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
            writer.writerow(header)
            for i, row in enumerate(part):
                writer.writerow([str(i), *row[1:]])
    return {name: len(part) for name, part in parts.items()}


if __name__ == "__main__":
    print(split(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else "runs/data/glue-qnli-heldout")))
