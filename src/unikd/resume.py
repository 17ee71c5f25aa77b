"""Checked resume: a resumed run trains with the config it started with, from a checkpoint that loads whole.

- ``config_changes(old, new)``: the result-changing differences between a run's config.yaml and the config a
  ``--resume`` brings (``config.RESUME_MUTABLE_FIELDS`` may differ freely); ``check_resume_config`` refuses them
  unless ``--resume-with-changes``, and ``record_resume`` writes each accepted change, with the step it took
  effect at, to ``resume_history.json``.
- ``checkpoint_problem(ckpt, process_index)``: why a checkpoint cannot be resumed from (its state json, model,
  optimizer or RNG state missing or unreadable), or None. Accelerate's ``load_state`` skips a missing RNG state
  without a word (the run would then draw other dropout masks and batches), so the RNG file is read here first.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from unikd.config import RESUME_MUTABLE_FIELDS, RunConfig, read_run_config
from unikd.errors import ConfigError
from unikd.io import atomic_write_json

HISTORY = "resume_history.json"
_ABSENT = "<absent>"


def flatten_fields(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    """Dotted field -> value of a config dump (list entries of dicts by index: ``plan.terms.0.temperature``)."""
    if isinstance(value, dict):
        for key, sub in value.items():
            flatten_fields(sub, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, sub in enumerate(value):
            flatten_fields(sub, f"{prefix}.{i}", out)
    else:
        out[prefix] = value
    return out


def config_changes(old: RunConfig, new: RunConfig) -> dict[str, dict[str, Any]]:
    """Dotted field -> {"old", "new"} for every difference that can change the result (list entries by index,
    e.g. ``plan.terms.0.temperature``; a term present on one side only shows as ``<absent>`` on the other).
    A fine-tune trains on the labels only, so its plan is no part of it (as in the study's config hash)."""
    a = flatten_fields(old.model_dump(mode="json"), "", {})
    b = flatten_fields(new.model_dump(mode="json"), "", {})
    no_plan = old.stage == new.stage == "finetune"
    changes = {}
    for key in sorted(a.keys() | b.keys()):
        if key in RESUME_MUTABLE_FIELDS or key == "output_dir" or (no_plan and key.startswith("plan.")):
            continue
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if va != vb:
            changes[key] = {"old": va, "new": vb}
    return changes


def check_resume_config(output_dir: Path, cfg: RunConfig, allow_changes: bool) -> dict[str, dict[str, Any]]:
    """The accepted changes of a resume (empty when none or no config.yaml yet); refuses result-changing ones
    without ``allow_changes``."""
    stored = Path(output_dir) / "config.yaml"
    if not stored.is_file():
        return {}
    changes = config_changes(read_run_config(stored), cfg)
    if changes and not allow_changes:
        listed = ", ".join(f"{k} ({v['old']!r} -> {v['new']!r})" for k, v in changes.items())
        raise ConfigError(
            ", ".join(changes),
            f"--resume with a config that differs from the run's {stored}: {listed}; the checkpoints were trained "
            "with the old values",
            "resume with the run's own config (drop the changed overrides), or pass --resume-with-changes to "
            f"continue with the new values (recorded in {HISTORY}), or start a new output_dir",
        )
    return changes


def record_resume(output_dir: Path, step: int, changes: dict[str, dict[str, Any]]) -> None:
    """Append ``{step, time, changes}`` to the run's resume_history.json (nothing to record: nothing written)."""
    if not changes:
        return
    path = Path(output_dir) / HISTORY
    history = json.loads(path.read_text()) if path.is_file() else []
    history.append({"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "changes": changes})
    atomic_write_json(path, history)


def checkpoint_problem(ckpt: Path, process_index: int = 0) -> str | None:
    """Why ``ckpt`` cannot be resumed from, or None when its state json, model, optimizer and RNG state read."""
    from accelerate.utils import load

    try:
        saved = json.loads((ckpt / "unikd_state.json").read_text())
        if not isinstance(saved, dict) or not isinstance(saved.get("step"), int):
            return "unikd_state.json has no step"
    except (OSError, ValueError) as exc:
        return f"unikd_state.json unreadable ({type(exc).__name__})"
    if not any(ckpt.glob("model*.safetensors")) and not any(ckpt.glob("pytorch_model*.bin")):
        return "no model weights"
    if not any(ckpt.glob("optimizer*.bin")):
        return "no optimizer state"
    rng = ckpt / f"random_states_{process_index}.pkl"
    try:
        states = load(rng)
        if "torch_manual_seed" not in states:
            return f"{rng.name} holds no torch RNG state"
    except Exception as exc:  # noqa: BLE001 - missing, truncated or not a pickle: all mean "not resumable"
        return f"{rng.name} unreadable ({type(exc).__name__})"
    return None
