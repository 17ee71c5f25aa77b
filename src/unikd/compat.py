"""What unikd keeps reading from its own older versions, in one place: stored configs of the flat term model,
checkpoints whose projections were keyed by term index, the config hash of HASH_VERSION 3, schedule checks that
name no study. Each shim says what wrote the old form; none is needed by a file this version writes.

This module imports nothing from unikd: the core (plan, knowledge) and the rooms above it may all use it.
"""

from __future__ import annotations

import re
from typing import Any

# ---- configs of the flat term model (one class for every knowledge type) -----------------------------------
#: the defaults of the one flat term model unikd had before one class per knowledge type: a stored config
#: (a run's config.yaml, a study database row) carries every one of them on every term
LEGACY_FLAT_DEFAULTS: dict[str, Any] = {
    "temperature": 1.0,
    "temperature_end": None,
    "t2_scaling": True,
    "matching": "uniform",
    "k": None,
    "teacher_layer": None,
    "student_layer": None,
    "include_embeddings": False,
    "layer_reduction": "mean",
    "attention_on": "probs",
    "head_reduction": "per_head",
    "relations": ["qq", "kk", "vv"],
    "relation_heads": None,
    "projection": True,
    "projection_activation": None,
}
#: pass as ``model_validate(..., context=STORED)`` to read a config written by an older unikd
STORED = {"stored_config": True}


def drop_flat_term_leftovers(data: dict, fields) -> dict:
    """A stored term of the flat model without the flat fields its class (``fields``) lacks, where they hold the
    flat model's default (they meant nothing there); a changed one is kept, so validation names it."""
    return {
        k: v for k, v in data.items() if k in fields or k not in LEGACY_FLAT_DEFAULTS or v != LEGACY_FLAT_DEFAULTS[k]
    }


# ---- checkpoints whose projections were keyed by term index --------------------------------------------------
# projections.pt / checkpoints written before projections were keyed by term name: "<term index>_<layer>"
_LEGACY_PROJECTION_KEY = re.compile(r"^(\d+)_([^.:]+)$")


def upgrade_projection_keys(state_dict: dict, head: str, term_keys: list[str]) -> None:
    """Rename projections saved as ``<head><term index>_<layer>`` to ``<head><term key>:<layer>``, in place."""
    for old in [k for k in state_dict if k.startswith(head)]:
        name, _, tail = old[len(head) :].partition(".")
        hit = _LEGACY_PROJECTION_KEY.match(name)
        if hit and int(hit[1]) < len(term_keys):
            new = f"{head}{term_keys[int(hit[1])]}:{hit[2]}.{tail}"
            if new not in state_dict:
                state_dict[new] = state_dict.pop(old)


# ---- the config hash of HASH_VERSION 3 ------------------------------------------------------------------------
#: fields added after hash version 3 (own data, data.skip_malformed, data.transfer, holdout, pseudo-labels,
#: length grouping, chained steps): at these values a run's hash payload leaves them out, so the runs of a study
#: written before they existed keep their hashes
ADDED_AFTER_HASH_V3: dict[str, Any] = {
    "data.skip_malformed": False,
    "data.transfer": [],
    "data.eval_text_limit": None,
    "data.holdout": None,
    "data.dataset": None,
    "data.dataset_config": None,
    "data.revision": None,
    "data.files": {},
    "data.columns": {
        "text": None,
        "text_pair": None,
        "label": None,
        "tokens": None,
        "tags": None,
        "prompt": None,
        "response": None,
        "messages": None,
    },
    "data.render": "auto",
    "data.prompt_separator": "\n",
    "data.chat_template": None,
    "data.train_on_prompt": False,
    "data.qa": {
        "question": "question",
        "context": "context",
        "answers": "answers",
        "stride": 128,
        "max_answer_length": 30,
        "n_best": 20,
    },
    "teacher.gguf_file": None,
    "teacher.ensemble": [],
    "teacher.weight": 1.0,
    "teacher.ensemble_weighting": "fixed",
    "data.label_names": None,
    "data.task_type": None,
    "data.tag_scheme": "auto",
    "data.label_all_tokens": False,
    "data.name": None,
    "data.text_column": "text",
    "eval.generation": {"max_new_tokens": 64, "temperature": 0.0, "top_p": 1.0, "rows": 0, "show": 5, "batch_size": 16},
    "eval": {"metric": None},
    "plan.pseudo_labels": False,
    "plan.policy": "off_policy",
    "plan.on_policy_lambda": 0.5,
    "plan.generations": None,
    "plan.sampling": {"max_new_tokens": 64, "temperature": 1.0, "top_p": 1.0},
    "train.group_by_length": False,
    "then": [],
}

#: watching fields (``unikd.identity``: they never change what a run computes) that hash version 3 hashed; they stay
#: in the payload so every finished study run is still found by its hash. A hash version 4 would drop them and
#: re-hash the databases (``StudyDB._rehash``).
HASHED_WATCH_FIELDS_V3 = (
    "train.log_every",
    "train.eval_every",
    "train.save_every",
    "train.keep_checkpoints",
    "train.eval_batch_size",
)


#: fields of a ``data.transfer`` entry added after hash version 3, left out of the payload at these values
TRANSFER_ADDED_AFTER_HASH_V3: dict[str, Any] = {"source_labels": False}
#: fields of a ``plan.terms`` entry added since hash version 3 (the divergences' shape parameters)
TERM_ADDED_AFTER_HASH_V3: dict[str, Any] = {"beta": None, "alpha": None}


def drop_added_after_v3(payload: dict) -> None:
    """Remove, in place, every ``ADDED_AFTER_HASH_V3`` field of a config dump that holds its listed value."""
    for entry in (payload.get("data") or {}).get("transfer") or []:
        for name, default in TRANSFER_ADDED_AFTER_HASH_V3.items():
            if isinstance(entry, dict) and entry.get(name, default) == default:
                entry.pop(name, None)
    steps = [payload, *(s for s in payload.get("then") or [] if isinstance(s, dict))]
    for step in steps:
        for term in (step.get("plan") or {}).get("terms") or []:
            for name, default in TERM_ADDED_AFTER_HASH_V3.items():
                if isinstance(term, dict) and name in term and term[name] == default:
                    term.pop(name)
    for path, default in ADDED_AFTER_HASH_V3.items():
        *parents, leaf = path.split(".")
        node = payload
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == default:
            node.pop(leaf)


# ---- schedule checks ------------------------------------------------------------------------------------------
def schedule_check_study(check: dict, default: str | None) -> str | None:
    """The study a schedule_check.json belongs to; files written before it was recorded name none: ``default``."""
    return check.get("study", default)
