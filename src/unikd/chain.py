"""Chained steps of one run (``then:``): each step trains from the previous step's student.

TinyBERT's task recipe is two steps, not one mixed objective (Jiao et al. 2020, §3.2): intermediate-layer
distillation (embeddings, hidden states, attention), then prediction-layer distillation (the logits) from the
student the first step made, each with its own schedule. A run config says it as the first step's fields plus
``then: [<fragment>, ...]``; each fragment is deep-merged over the run's own config (lists replace, so a fragment's
``plan.terms`` is the step's whole objective) and validated when the config loads, so an error names
``then[0].plan.terms.0.loss`` before anything trains.

=====================  ===========================================================================================
run directory          holds
=====================  ===========================================================================================
``steps/1/``, ...      every step but the last: a complete run (config.yaml, student/, metrics.json)
``./``                 the last step, as any run: student/ (what export and push read), metrics.json, whose
                       ``chain`` lists each step's directory, steps, final scores and seconds (``wall_s``:
                       the steps' sum)
=====================  ===========================================================================================

``--resume`` skips a step that finished and resumes the one that did not. Chains run in one process (each step
ends its Accelerator and with it the process group).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from unikd.config import RunConfig, step_dicts
from unikd.errors import ConfigError
from unikd.io import atomic_write_json


def check_one_process() -> None:
    """Chains run in one process: each step ends its Accelerator, which tears down the process group the next step
    would need."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "then",
            "chained steps run in one process in this version",
            "run each step as its own run (student.init.strategy=pretrained on the previous student), "
            "or run the chain without torchrun/accelerate launch",
        )


def run_chain(cfg, run_step: Callable[..., dict], **kw) -> dict:
    """Train every step in order with ``run_step`` (``unikd.train.run``, whose ``resume`` returns a finished step's
    metrics at once); the last step's metrics.json gains ``chain``."""
    check_one_process()
    steps = step_dicts(cfg)
    results = []
    for step in steps:
        results.append(run_step(RunConfig.model_validate(step), **kw))
        if "stopped_at" in results[-1]:
            return results[-1]  # stopped before the step finished (stop_after): --resume picks it up
    # a finished chain resumed returns its last step's metrics.json, which holds the chain's sum: the step's own
    own = [r["chain"][-1].get("wall_s") if "chain" in r else r.get("wall_s") for r in results]
    chain = [
        {"step": i, "output_dir": s["output_dir"], "steps": r.get("steps"), "final": r.get("final"), "wall_s": w}
        for i, (s, r, w) in enumerate(zip(steps, results, own), start=1)
    ]
    final = dict(results[-1], chain=chain, wall_s=sum(own) if None not in own else None)  # the whole chain's
    atomic_write_json(Path(cfg.output_dir) / "metrics.json", final)
    return final
