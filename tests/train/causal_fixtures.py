"""The decoder teacher the causal-LM run tests share: a 2-layer Llama fine-tuned on the toy addition task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import addition_rows, tiny_llama, word_tokenizer

from unikd.config import load_config
from unikd.train import run


def causal_files(root: Path) -> list[str]:
    return [
        f"data.files.train={root / 'train.jsonl'}",
        f"data.files.validation={root / 'validation.jsonl'}",
        "data.max_length=16",
        "train.progress=false",
        "train.batch_size=32",
    ]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A 2-layer Llama fine-tuned on 300 addition rows (6 epochs), scored on 60 dev rows."""
    root = tmp_path_factory.mktemp("causal")
    tok = word_tokenizer(root / "base")
    model = tiny_llama(
        layers=2, hidden=64, heads=4, vocab=len(tok), positions=32, bos_token_id=2, eos_token_id=3, pad_token_id=0
    )
    model.save_pretrained(root / "base")
    for split, n, seed in (("train", 300, 1), ("validation", 60, 2)):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in addition_rows(n, seed)))
    overrides = ["stage=finetune", f"teacher.path={root / 'base'}", f"output_dir={root / 'teacher'}"]
    metrics = run(load_config(None, [*overrides, "train.epochs=6", "optim.lr=3e-3", *causal_files(root)]))
    return root, metrics
