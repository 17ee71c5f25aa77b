"""Several processes: the process group a launch must form, how Accelerate shards the loader and steps the
scheduler (so the schedule ends exactly at the last step), and freezing what no loss reaches before DDP wraps it.
One process passes through every function here unchanged."""

from __future__ import annotations

import math
import os

import torch

from unikd.config import RunConfig
from unikd.distiller import Distiller
from unikd.errors import ConfigError

#: the teacher's forward dtype per teacher.precision (int8 quantizes the weights instead)
TEACHER_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": None}


def check_process_group(accelerator) -> None:
    """Refuse a launch of several processes that formed no process group: each would train the whole run
    alone, all into one output_dir (plain ``torchrun`` on a CPU without ``train.cpu`` / ``ACCELERATE_USE_CPU``:
    Accelerate only joins CPU processes into a gloo group when told the run is on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and accelerator.num_processes == 1:
        raise ConfigError(
            "train.cpu",
            f"{world} processes were launched (WORLD_SIZE={world}) but they formed no process group, so each "
            "would run the whole training alone into the same output_dir",
            "on a CPU set train.cpu=true (or ACCELERATE_USE_CPU=true) so Accelerate joins them into a gloo group; "
            "on GPUs launch with `accelerate launch` (see examples/accelerate/)",
        )


def scheduler_steps_per_optimizer_step(accelerator, grad_accum: int) -> int:
    """How often Accelerate's ``AcceleratedScheduler`` steps the wrapped scheduler per optimizer step: once per
    call when it is not tied to the optimizer (the loop calls it every micro-batch), once with ``split_batches``,
    else ``num_processes`` times (it assumes a global batch ``num_processes`` times the single-process one).
    The schedule is sized by this factor so the learning rate reaches its end exactly at the last step."""
    if not accelerator.step_scheduler_with_optimizer:
        return grad_accum
    return 1 if accelerator.split_batches else accelerator.num_processes


def shard_len(accelerator, batches: int) -> int:
    """Batches per process once Accelerate shards a loader of ``batches``: each process takes every N-th batch,
    the last round padded to a full one (``even_batches``); with ``split_batches`` each batch is split instead."""
    if accelerator.num_processes == 1 or accelerator.split_batches:
        return batches
    return math.ceil(batches / accelerator.num_processes)


def freeze_unreached(cfg: RunConfig, accelerator, plan, teacher, student, make_batch) -> None:
    """Freeze the student parameters (and projections) no loss of the plan reaches, before DDP wraps them.

    DDP waits for a gradient of every trainable parameter each step; a parameter the objective never reaches
    (the pooler or LM head under a hidden-state-only plan) makes the second step fail. One probe step on
    the batch ``make_batch()`` collates finds them (those whose gradient stays None), with the RNG forked so the
    run's random stream (MLM masking included) is untouched; under a hard-label weight schedule the last step is
    probed too (a weight of 0 skips that loss, and a linear schedule positive anywhere is positive at an end).
    Random matching never gets here: its pairs change per step, so DDP looks for unused parameters itself. The
    names come from the main process, so every process freezes the same ones. AdamW skips parameters without a
    gradient, so freezing them changes no result."""
    from accelerate.utils import broadcast_object_list

    total = 2  # the ends of every linear schedule: step 0 and the last step
    steps = [0] + ([1] if cfg.plan.hard_label_weight_end is not None else [])
    named = [("student." + n, p) for n, p in student.named_parameters() if p.requires_grad]
    named += [("plan." + n, p) for n, p in plan.named_parameters() if p.requires_grad]
    dtype = TEACHER_DTYPES[cfg.teacher.precision]
    probe = Distiller(plan, teacher, student, attention=cfg.train.attention_capture, teacher_dtype=dtype)
    plan.to(accelerator.device)
    student.to(accelerator.device)
    try:
        with torch.random.fork_rng():
            batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in make_batch().items()}
            for step in steps:
                loss, _ = probe.step(batch, step=step, total_steps=total)
                loss.backward()
    finally:
        probe.remove()
    unreached = [name for name, p in named if p.grad is None]
    for _, p in named:
        p.grad = None
    unreached = broadcast_object_list([unreached])[0]
    params = dict(named)
    for name in unreached:
        params[name].requires_grad_(False)
    if unreached:
        accelerator.print(f"frozen (no loss of the plan reaches them, DDP would wait for their gradients): {unreached}")
