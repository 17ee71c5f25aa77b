"""What identifies a run: one table that puts every ``RunConfig`` field in exactly one class, and every rule that
asks it. Study expansion (hashes, twins), resume (what may change), the report (pairing) and the quickstart (its
no-KD student) call these functions; nothing else decides.

===========  ==================================================================================================
class        meaning, and what follows from it
===========  ==================================================================================================
``result``   changes what the run computes: hashed, a resume may not change it, a KD run and its no-KD twin
             share it (pairing compares it; ``seed`` and the step budget are paired on separately)
``kd``       changes what a KD run computes and only a KD run has it: hashed, a resume may not change it; the
             no-KD twin drops it, pairing ignores it
``speed``    how fast, where or in what memory the same numbers come out: not hashed, a resume may change it
             (``train.teacher_cache_dir``: only a KD run has it, so the twin drops it too)
``watch``    how the run is watched: logging, evaluation and checkpoint cadence, progress, trackers, where it
             writes, whether a weak teacher may start it: a resume may change it; hash version 3 hashed the
             cadence fields (``unikd.compat``)
===========  ==================================================================================================

A new ``RunConfig`` field gets a line in ``FIELDS``; tests/test_identity.py fails while one is missing.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from unikd.compat import HASHED_WATCH_FIELDS_V3, drop_added_after_v3
from unikd.config import step_dicts

RESULT, KD, SPEED, WATCH = "result", "kd", "speed", "watch"

#: every RunConfig field (a section name covers every field inside it) -> its class
FIELDS: dict[str, str] = {
    "stage": KD,  # task (a teacher) or finetune (none): what the twin changes
    "teacher.path": RESULT,  # the twin is built from the same model (a fine-tuned teacher's layers)
    "teacher.precision": KD,  # the teacher's forward; a fine-tune runs no teacher
    "teacher.allow_weak": WATCH,  # decides whether a run may start, never its result
    "teacher.gguf_file": RESULT,  # which weights teacher.path holds
    "teacher.ensemble": KD,  # more teachers: only the soft targets change (the twin starts from teacher.path)
    "teacher.weight": KD,
    "teacher.ensemble_weighting": KD,
    "student": RESULT,
    "data": RESULT,
    "data.transfer": KD,  # rows only a teacher can label
    "plan": KD,
    "then": KD,  # chained steps: the twin trains once, for the chain's total budget
    "optim": RESULT,
    "train": RESULT,
    "train.epochs": RESULT,
    "train.max_steps": RESULT,
    "train.teacher_cache": KD,  # the teacher's logits from a pass before step 1 (agree to fp32 rounding)
    "train.teacher_cache_topk": KD,
    "train.teacher_cache_dir": SPEED,  # where logits already computed may be found
    "train.attention_capture": SPEED,  # inline and recompute give the same losses and gradients
    "train.logits_chunk_tokens": SPEED,  # chunked divergences: the same losses and gradients (unikd.chunked)
    "train.fused_output_projection": SPEED,  # the lm_head per chunk inside the losses: the same losses and gradients
    "train.keep_freed_memory": SPEED,  # the allocator's heap setting
    "train.cpu": SPEED,  # where a CPU-only run runs anyway
    "train.progress": WATCH,
    "train.report_to": WATCH,
    "train.log_every": WATCH,
    "train.eval_every": WATCH,
    "train.save_every": WATCH,
    "train.keep_checkpoints": WATCH,
    "train.eval_batch_size": WATCH,
    "eval": RESULT,  # the metric is the run's score and picks its best checkpoint
    "eval.generation.batch_size": SPEED,  # prompts generated together: the same greedy samples
    "output_dir": WATCH,
    "seed": RESULT,
}
#: fields a fine-tune ignores (it trains on the labels only): a new default plan keeps finished teachers
FINETUNE_IGNORES = ("plan",)
#: result fields a pairing matches separately (per seed; the step budget as trained, ``total_steps``)
PAIRED_SEPARATELY = ("seed", "train.epochs", "train.max_steps")


def field_class(path: str, default: str | None = None) -> str:
    """The class of a dotted field (``plan.terms.0.temperature`` -> ``kd``): its own entry or its section's. A field
    in none is a KeyError, or ``default`` when given (a stored config of an older unikd may hold a retired field)."""
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        cls = FIELDS.get(".".join(parts[:n]))
        if cls is not None:
            return cls
    if default is not None:
        return default
    raise KeyError(f"{path!r} is in no class of unikd.identity.FIELDS")


def flatten_fields(value: Any, prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Dotted field -> value of a config dump (list entries of dicts by index: ``plan.terms.0.temperature``)."""
    out = {} if out is None else out
    if isinstance(value, dict):
        for key, sub in value.items():
            flatten_fields(sub, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, sub in enumerate(value):
            flatten_fields(sub, f"{prefix}.{i}", out)
    else:
        out[prefix] = value
    return out


def _drop(dump: dict, keep) -> dict:
    """A deep copy of a config dump holding only the fields ``keep(path)`` accepts (empty sections kept)."""
    out: dict = {}
    for key, value in dump.items():
        if isinstance(value, dict) and any(p.startswith(f"{key}.") for p in FIELDS):
            out[key] = _drop_section(value, key, keep)
        elif keep(key):
            out[key] = copy.deepcopy(value)
    return out


def _drop_section(section: dict, prefix: str, keep) -> dict:
    out = {}
    for key, value in section.items():
        path = f"{prefix}.{key}"
        if isinstance(value, dict) and any(p.startswith(f"{path}.") for p in FIELDS):
            out[key] = _drop_section(value, path, keep)
        elif keep(path):
            out[key] = copy.deepcopy(value)
    return out


# ---- the hash -------------------------------------------------------------------------------------------------
def hash_payload(cfg) -> dict:
    """What can change a run's result, as a JSON-able mapping: the result and KD fields (a fine-tune without its
    plan), plus what hash version 3 also hashed (``unikd.compat``: the cadence fields, and fields added since
    left out at their defaults)."""
    dump = cfg.model_dump(mode="json")
    drop_added_after_v3(dump)
    finetune = dump.get("stage") == "finetune"

    def keep(path: str) -> bool:
        if finetune and path.split(".")[0] in FINETUNE_IGNORES:
            return False
        return field_class(path) in (RESULT, KD) or path in HASHED_WATCH_FIELDS_V3

    return _drop(dump, keep)


def canonical(obj: Any) -> str:
    """The canonical JSON text of a mapping (sorted keys, no spaces): what a hash is taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(cfg, root: str | None = None, teacher_hash: str | None = None) -> str:
    """sha256 of ``canonical(hash_payload(cfg))``. Paths under a study's output_dir ``root`` are written relative to
    it, so a moved study keeps its hashes; a run that reads a study teacher also hashes that teacher's config hash.
    Changing what is hashed means bumping the database's HASH_VERSION (databases are re-hashed on open)."""
    text = canonical(hash_payload(cfg))
    if root:
        text = text.replace(json.dumps(root)[1:-1], "<study>")
    if teacher_hash:
        text += "|teacher:" + teacher_hash
    return hashlib.sha256(text.encode()).hexdigest()


def same_run(a, b) -> bool:
    """Whether two configs compute the same run (their hash payloads agree; paths compared as written)."""
    return canonical(hash_payload(a)) == canonical(hash_payload(b))


# ---- resume ---------------------------------------------------------------------------------------------------
_ABSENT = "<absent>"


def changes(old, new) -> dict[str, dict[str, Any]]:
    """Dotted field -> {"old", "new"} for every difference a resume may not make: the result and KD fields (list
    entries by index, e.g. ``plan.terms.0.temperature``; a term present on one side only shows as ``<absent>`` on
    the other). A fine-tune trains on the labels only, so its plan is no part of it (as in the hash)."""
    a = flatten_fields(old.model_dump(mode="json"))
    b = flatten_fields(new.model_dump(mode="json"))
    finetune = old.stage == new.stage == "finetune"
    out = {}
    for key in sorted(a.keys() | b.keys()):
        if field_class(key) not in (RESULT, KD) or (finetune and key.split(".")[0] in FINETUNE_IGNORES):
            continue
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if va != vb:
            out[key] = {"old": va, "new": vb}
    return out


# ---- twins ----------------------------------------------------------------------------------------------------
def _pop_path(data: dict, path: str) -> Any:
    *parents, leaf = path.split(".")
    node = data
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return node.pop(leaf, None) if isinstance(node, dict) else None


def chain_budget(cfg) -> int | None:
    """A config's total optimizer steps when every step sets ``train.max_steps`` (a chain: their sum), else None."""
    budgets = [step["train"]["max_steps"] for step in step_dicts(cfg)]
    return sum(budgets) if all(budgets) else None


def no_kd_twin(data: Mapping, cfg=None) -> tuple[dict, list]:
    """The no-KD twin of a KD run's config mapping ``data`` (``cfg``: the same, validated): the same student, data,
    optimizer and result fields, trained as a fine-tune without the KD fields; a chain becomes one fine-tune with
    the chain's total step budget. Returns (the twin's mapping, the KD run's transfer sources, [] without)."""
    twin = copy.deepcopy(dict(data))
    twin["stage"] = "finetune"
    transfer = _pop_path(twin, "data.transfer") or []
    for path, cls in FIELDS.items():
        if cls == KD and path not in ("stage", "then", "data.transfer"):
            _pop_path(twin, path)
    _pop_path(twin, "train.teacher_cache_dir")  # a store of teacher logits, for a run that has no teacher
    twin.setdefault("train", {})
    if twin.pop("then", None) and cfg is not None:
        budget = chain_budget(cfg)
        if budget:
            twin["train"]["max_steps"] = budget
    return twin, transfer


def pseudo_label_twin(twin: Mapping, transfer: list, teacher_store: str | None = None) -> dict:
    """The pseudo-label twin of a transfer variant: its no-KD twin with the transfer rows back, trained on the
    teacher's argmax over them and no KD loss (separates a KD gain from a more-data gain); ``teacher_store``: the
    argmax read from the teacher cache and this shared store (the KD runs' own)."""
    p_data = copy.deepcopy(dict(twin))
    p_data |= {"stage": "task", "plan": {"terms": [], "pseudo_labels": True}}
    p_data["data"]["transfer"] = transfer
    if teacher_store:
        p_data.setdefault("train", {}).update(teacher_cache=True, teacher_cache_dir=teacher_store)
    return p_data


def sequence_kd_twin(twin: Mapping, cfg) -> dict:
    """The pseudo-label twin of a sequence-level KD run (``cfg``: its validated config): its no-KD twin trained on
    the same teacher generations (the same ``plan.sampling``, the same file) with next-token cross-entropy and no
    soft targets, which separates what the teacher's tokens give from what its distributions give."""
    p_data = copy.deepcopy(dict(twin))
    p_data["stage"] = "task"
    p_data["plan"] = {
        "terms": [],
        "hard_label_weight": 1.0,
        "policy": "sequence_kd",
        "sampling": cfg.plan.sampling.model_dump(mode="json"),
        "generations": cfg.plan.generations,
    }
    return p_data


def augmentation_only_twin(twin: Mapping, transfer: list) -> dict | None:
    """The augmentation-only twin of a variant with augmented rows: its no-KD twin trained on the same augmented
    copies with their source row's gold label (``source_labels``), no teacher: what more rows alone give, apart
    from what the teacher gives. None when the variant has no augment source."""
    copies = [
        dict(s, source_labels=True)
        for s in transfer
        if (s.get("kind") if isinstance(s, Mapping) else None) == "augment"
    ]
    if not copies:
        return None
    a_data = copy.deepcopy(dict(twin))
    a_data.setdefault("data", {})["transfer"] = copies
    return a_data


def augment_signature(config: Mapping | None) -> str:
    """The augment sources of a config dump, without ``source_labels``: a KD variant and its augmentation-only twin
    share it."""
    transfer = ((config or {}).get("data") or {}).get("transfer") or []
    kept = [{k: v for k, v in s.items() if k != "source_labels"} for s in transfer if s.get("kind") == "augment"]
    return canonical(kept)


def is_augmentation_only(config) -> bool:
    """Whether a config (a ``RunConfig`` or its dump) is an augmentation-only control: a fine-tune on augmented
    copies that keep their gold labels."""
    dump = config.model_dump(mode="json") if hasattr(config, "model_dump") else (config or {})
    transfer = (dump.get("data") or {}).get("transfer") or []
    return dump.get("stage") == "finetune" and bool(transfer) and all(s.get("source_labels") for s in transfer)


def is_pseudo_labels(config) -> bool:
    """Whether a config (a ``RunConfig`` or its dump) trains on the teacher's argmax (or, sequence-level, on its
    generations) instead of a KD loss."""
    dump = config.model_dump(mode="json") if hasattr(config, "model_dump") else (config or {})
    plan = dump.get("plan") or {}
    sequence = plan.get("policy") == "sequence_kd" and not plan.get("terms")
    return dump.get("stage") == "task" and (bool(plan.get("pseudo_labels")) or sequence)


# ---- pairing --------------------------------------------------------------------------------------------------
def pairing_key(config: Mapping | None, ignore=()) -> str:
    """A run's result fields without those paired on separately (seed, the step budget) and ``ignore`` (dotted
    paths: a baseline search's fields): a KD run shares it with the no-KD and pseudo-label twins of its student and
    data, whatever the KD fields, speed or watching."""
    dump = copy.deepcopy(dict(config or {}))
    for path in ignore:
        _pop_path(dump, path)
    return canonical(_drop(dump, lambda p: field_class(p, RESULT) == RESULT and p not in PAIRED_SEPARATELY))


def total_steps(metrics: Mapping | None) -> int | None:
    """A run's optimizer steps from its metrics.json: a chained run's (``chain``) over all its steps (None while a
    step's count is missing), as its no-KD twin trains them in one."""
    metrics = metrics or {}
    if metrics.get("chain"):
        steps = [step.get("steps") for step in metrics["chain"]]
        return sum(steps) if all(steps) else None
    return metrics.get("steps")
