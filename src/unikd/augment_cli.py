"""``unikd augment``: what a config's augmentation makes of its labelled rows, to inspect before training."""

from __future__ import annotations

import json
from pathlib import Path

from unikd.config import load_config
from unikd.data import load_glue
from unikd.data.augment import augment_dataset
from unikd.data.transfer import Augmented
from unikd.errors import ConfigError
from unikd.io import atomic_write_text
from unikd.models import load_model, load_tokenizer, model_config, model_kind_for, resolve_model_path


def augment_sample(config: Path, overrides: list[str], *, rows: int = 3, out: Path | None = None) -> str:
    """The first ``rows`` labelled rows and their copies from every augment source, as text (and JSONL)."""
    cfg = load_config(config, overrides)
    sources = [(i, s) for i, s in enumerate(cfg.data.transfer) if isinstance(s, Augmented)]
    if not sources:
        raise ConfigError("data.transfer", "has no augment source", "add {kind: augment} to data.transfer")
    path = resolve_model_path(cfg.teacher.path, "teacher.path")
    tokenizer = load_tokenizer(path)
    teacher = load_model(path, model_kind_for(cfg.stage, model_config(path)), field="teacher.path")
    labelled = load_glue(cfg.data.task, "train", cfg.data.data_dir, limit=cfg.data.train_limit, seed=cfg.seed)
    labelled = labelled.select(range(min(rows, len(labelled))))
    lines, records = [], []
    for i, source in sources:
        copies = augment_dataset(
            labelled,
            tokenizer,
            source,
            embedding_matrix=teacher.get_input_embeddings().weight,
            log=lambda s: lines.append(s),
        )
        lines.append(f"data.transfer[{i}] ({source.method}): {len(copies)} copies of {len(labelled)} rows")
        for row in labelled:
            texts = [row[c] for c in ("text_a", "text_b") if c in row]
            lines.append(f"  row {row['idx']} (label {row['label']}): " + " ||| ".join(texts))
            for copy in copies.filter(lambda r, idx=row["idx"]: r["idx"] == idx):
                lines.append("    -> " + " ||| ".join(copy[c] for c in ("text_a", "text_b") if c in copy))
                records.append({"source": i, **copy})
    if out is not None:
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in records))
        lines.append(f"wrote {len(records)} copies to {out}")
    return "\n".join(lines)
