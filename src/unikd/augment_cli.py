"""``unikd augment``: what a config's augmentation makes of its labelled rows, to inspect before training."""

from __future__ import annotations

import json
import statistics
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
    path = resolve_model_path(cfg.teacher.path, "teacher.path", cfg.teacher.gguf_file)
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


def _teacher_outputs(model, tokenizer, ds, max_length: int, batch_size: int = 64):
    """The teacher's argmax class per row of ``ds`` (its value, for a one-output regression head)."""
    import torch

    out = []
    model.eval()
    for lo in range(0, len(ds), batch_size):
        part = ds[lo : lo + batch_size]
        args = [part["text_a"]] + ([part["text_b"]] if "text_b" in part else [])
        enc = tokenizer(*args, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**enc).logits
        out.append(logits[:, 0] if logits.shape[-1] == 1 else logits.argmax(-1))
    return torch.cat(out)


def flip_rate(config: Path, overrides: list[str], *, rows: int = 500) -> dict:
    """How often augmentation changes a row's label, as the run's fine-tuned teacher reads it: ``rows`` labelled
    rows drawn with the run's seed, each augment source's copies of them, and the teacher on both.

    ===========================  =====================================================================================
    key                          meaning
    ===========================  =====================================================================================
    ``teacher_on_sources``       the teacher's accuracy on the drawn rows against their gold labels
    ``copies_at_gold``           the share of copies the teacher gives their source row's gold label (what the
                                 augmentation-only control trains them as)
    ``flip_rate``                the share of copies the teacher classes differently from their source row: the
                                 label-flip estimate (a copy the teacher reads as another class)
    ``mean_abs_change``          regression: the mean |teacher(copy) - teacher(source)|, beside ``label_std``
    ===========================  =====================================================================================
    """
    from unikd.data import load_task_data

    cfg = load_config(config, overrides)
    sources = [(i, s) for i, s in enumerate(cfg.data.transfer) if isinstance(s, Augmented)]
    if not sources:
        raise ConfigError("data.transfer", "has no augment source", "add {kind: augment} to data.transfer")
    if cfg.stage != "task":
        raise ConfigError(
            "stage", f"is {cfg.stage!r}: the flip rate reads a fine-tuned teacher", "use a task-stage config"
        )
    path = resolve_model_path(cfg.teacher.path, "teacher.path", cfg.teacher.gguf_file)
    tokenizer = load_tokenizer(path)
    teacher = load_model(path, model_kind_for(cfg.stage, model_config(path)), field="teacher.path")
    task = load_task_data(cfg.data, seed=cfg.seed)
    labelled = task.train.shuffle(seed=cfg.seed).select(range(min(rows, len(task.train))))
    on_sources = _teacher_outputs(teacher, tokenizer, labelled, cfg.data.max_length)
    by_idx = {int(i): k for k, i in enumerate(labelled["idx"])}
    regression = task.spec.task_type == "regression"
    gold = labelled["label"]
    result = {"rows": len(labelled), "task_type": task.spec.task_type, "sources": {}}
    if not regression:
        result["teacher_on_sources"] = float(sum(int(p) == g for p, g in zip(on_sources, gold)) / len(gold))
    for i, source in sources:
        copies = augment_dataset(
            labelled, tokenizer, source, embedding_matrix=teacher.get_input_embeddings().weight, log=lambda s: None
        )
        if len(copies) == 0:
            raise ConfigError(
                f"data.transfer[{i}]",
                f"made no copy of the {len(labelled)} rows (every copy equalled its source row and was dropped)",
                "raise p_replace or copies, or draw more --rows",
            )
        on_copies = _teacher_outputs(teacher, tokenizer, copies, cfg.data.max_length)
        src = [by_idx[int(i)] for i in copies["idx"]]
        if regression:
            change = [abs(float(c) - float(on_sources[k])) for c, k in zip(on_copies, src)]
            entry = {"mean_abs_change": sum(change) / len(change), "label_std": statistics.pstdev(gold)}
        else:
            entry = {
                "flip_rate": sum(int(c) != int(on_sources[k]) for c, k in zip(on_copies, src)) / len(src),
                "copies_at_gold": sum(int(c) == gold[k] for c, k in zip(on_copies, src)) / len(src),
            }
        result["sources"][f"data.transfer[{i}]"] = {"copies": len(copies), "method": source.method, **entry}
    return result


def flip_rate_text(config: Path, overrides: list[str], *, rows: int, out: Path | None = None) -> str:
    """``flip_rate`` as lines to print (and JSON at ``out``)."""
    rates = flip_rate(config, overrides, rows=rows)
    lines = [f"{rates['rows']} labelled rows drawn"]
    if "teacher_on_sources" in rates:
        lines[0] += f"; the teacher's accuracy on them: {100 * rates['teacher_on_sources']:.1f}%"
    for name, r in rates["sources"].items():
        if "flip_rate" in r:
            lines.append(
                f"{name} ({r['method']}, {r['copies']} copies): the teacher classes {100 * r['flip_rate']:.1f}% of "
                f"the copies differently from their source row; {100 * r['copies_at_gold']:.1f}% at the source's "
                "gold label"
            )
        else:
            lines.append(
                f"{name} ({r['method']}, {r['copies']} copies): the teacher's value moves by "
                f"{r['mean_abs_change']:.3f} on average from its source row's (the labels' std: {r['label_std']:.3f})"
            )
    if out is not None:
        atomic_write_text(out, json.dumps(rates, indent=2) + "\n")
        lines.append(f"wrote {out}")
    return "\n".join(lines)
