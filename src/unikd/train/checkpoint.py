"""Checkpoints and resume: step directories written atomically, a full disk said in one line, a resume that brings
the run's own config and starts from the newest checkpoint that loads whole.

=================================  ==================================================================================
``checkpoints/step-N/``            Accelerate's ``save_state`` (model, optimizer, scheduler, RNG states) and
                                   ``unikd_state.json`` (step, best, history, wall_s), renamed into place from
                                   ``.tmp-step-N`` once whole; the newest ``train.keep_checkpoints`` are kept
``resume_history.json``            each accepted ``--resume-with-changes``: the step and the fields it changed
=================================  ==================================================================================

``checkpoint_problem(ckpt, process_index)`` says why a checkpoint cannot be resumed from (its state json, model,
optimizer or RNG state missing or unreadable). Accelerate's ``load_state`` skips a missing RNG state without a word
(the run would then draw other dropout masks and batches), so the RNG file is read here first.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from unikd.config import RunConfig, read_run_config
from unikd.errors import ConfigError, warn
from unikd.identity import changes as config_changes
from unikd.io import atomic_write_json, follow_umask

CHECKPOINTS = "checkpoints"
HISTORY = "resume_history.json"


# ---- the step directories --------------------------------------------------------------------------
def step_dirs(output_dir: Path, *, whole: bool = False) -> list[Path]:
    """Every ``checkpoints/step-N`` directory, oldest first; ``whole``: only those with their ``unikd_state.json``
    (written last, so a checkpoint to count on). Atomic renames leave no partial one, but a disk can still corrupt
    or a user delete a file: resume reads them all and says why it skips one."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    steps = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    if whole:
        steps = [p for p in steps if (p / "unikd_state.json").is_file()]
    return sorted(steps, key=lambda p: int(p.name[5:]))


def save_checkpoint(accelerator, output_dir: Path, step: int, extra: dict, keep: int) -> None:
    """accelerator.save_state into a temp dir, then an atomic rename: a crash never leaves half a checkpoint."""
    root = output_dir / CHECKPOINTS
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        # made before the barrier: save_state makes it on the main process only, while every process writes its
        # RNG state into it (a race under several processes)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            atomic_write_json(tmp / "unikd_state.json", {"step": step, **extra})
            follow_umask(tmp)  # save_state's safetensors weights come out 0600
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    except Exception as exc:  # each writer raises its own type on a full disk; anything else is re-raised
        if not disk_full(exc, root):
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # a partial checkpoint must not be mistaken for one, nor fill the disk
        raise _disk_full_error(accelerator, root, step) from exc
    if accelerator.is_main_process:
        for old in step_dirs(output_dir, whole=True)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


#: a free-space floor under which a writer's error is taken for a full disk: safetensors raises SafetensorError and
#: torch.save a RuntimeError ("unexpected pos ...") there, neither with an errno
_NEARLY_FULL_BYTES = 1 << 20
_FULL_DISK_WORDS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def disk_full(exc: BaseException, where: Path) -> bool:
    """Whether ``exc`` (raised while writing under ``where``) means the disk is full: an OSError with ENOSPC or
    EDQUOT, an error whose text says so, or any writer's error while less than 1 MiB is left on that disk."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, OSError) and exc.errno is not None:
        return False  # another file-system error (permissions, a missing directory) is what it says
    if any(s in str(exc) for s in _FULL_DISK_WORDS):  # safetensors' Rust writer: "... (os error 28)"
        return True
    existing = next((p for p in (where, *where.parents) if p.exists()), None)
    return existing is not None and shutil.disk_usage(existing).free < _NEARLY_FULL_BYTES


def state_bytes(accelerator) -> int:
    """What ``save_state`` writes, near enough: the tensors of every prepared model's and optimizer's state."""
    states = [m.state_dict() for m in accelerator._models] + [o.state_dict() for o in accelerator._optimizers]
    total, stack = 0, list(states)
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


def _disk_full_error(accelerator, root: Path, step: int) -> ConfigError:
    existing = next(p for p in (root, *root.parents) if p.exists())
    need, free = state_bytes(accelerator) / 2**20, shutil.disk_usage(existing).free / 2**20
    return ConfigError(
        "output_dir",
        f"the disk filled up while writing checkpoint step-{step} in {root} (removed the partial .tmp-step-{step}); "
        f"a checkpoint needs about {need:.1f} MiB, {free:.1f} MiB are free",
        "free space on that disk or choose an output_dir on a larger one, then rerun with --resume; "
        "fewer train.keep_checkpoints keep less on disk",
    )


# ---- starting or resuming ----------------------------------------------------------------------------
def finished_metrics(cfg: RunConfig, resume: bool, changes: dict) -> dict | None:
    """Never train over a finished or checkpointed run: its results would be silently replaced. A finished
    run under --resume has nothing left to do: its metrics (a changed config is refused: it trained with the old)."""
    output_dir = Path(cfg.output_dir)
    if not resume and ((output_dir / "metrics.json").is_file() or step_dirs(output_dir, whole=True)):
        raise ConfigError(
            "output_dir",
            f"{output_dir} already holds a finished or started run",
            "pass --resume to continue it, or choose another output_dir",
        )
    if not (resume and (output_dir / "metrics.json").is_file()):
        return None
    if changes:
        raise ConfigError(
            ", ".join(changes),
            f"{output_dir} is a finished run; it was trained with the old values",
            "choose another output_dir to train with the new ones",
        )
    return json.loads((output_dir / "metrics.json").read_text())


def check_resume_config(output_dir: Path, cfg: RunConfig, allow_changes: bool) -> dict[str, dict[str, Any]]:
    """The accepted changes of a resume (empty when none or no config.yaml yet); refuses result-changing ones
    (``unikd.identity.changes``) without ``allow_changes``."""
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


def resume_from_checkpoint(state) -> None:
    """Restore model/optimizer/scheduler/RNG from the newest checkpoint that loads whole, and where the loop stood
    (``state``: the loop's ``State``).

    A checkpoint with a missing or unreadable state json, model, optimizer or RNG state is skipped with a warning
    for the one before it; none loadable is an error (an RNG state Accelerate cannot read would otherwise be
    skipped silently, and the run would continue with other numbers)."""
    accelerator, problems = state.accelerator, []
    for ckpt in reversed(step_dirs(state.output_dir)):
        problem = checkpoint_problem(ckpt, accelerator.process_index)
        if problem is None:
            try:
                accelerator.load_state(str(ckpt))
            except Exception as exc:  # noqa: BLE001 - any unreadable part: try the checkpoint before it
                problem = f"it does not load ({type(exc).__name__}: {exc})"
        if problem is None:
            saved = json.loads((ckpt / "unikd_state.json").read_text())
            state.step, state.best, state.history = saved["step"], saved["best"], saved.get("history", [])
            state.seconds_before = float(saved.get("wall_s") or 0.0)  # checkpoints before it was recorded: none
            accelerator.print(f"resumed from {ckpt} at step {state.step}")
            return
        problems.append(f"{ckpt.name}: {problem}")
        warn(f"cannot resume from {ckpt} ({problem}); trying the checkpoint before it")
    if problems:
        raise ConfigError(
            "output_dir",
            f"no checkpoint in {state.output_dir / CHECKPOINTS} can be resumed from ({'; '.join(problems)})",
            "delete that checkpoints folder to start again from step 0, or choose another output_dir",
        )
    accelerator.print(f"--resume: no checkpoint in {state.output_dir / CHECKPOINTS}, starting from step 0")
