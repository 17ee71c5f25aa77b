"""Runs unikd jobs one after another inside one 2-process launch; tests/test_distributed.py starts it with
``ACCELERATE_USE_CPU=true python -m torch.distributed.run --standalone --nproc_per_node 2 distributed_driver.py
JOBS.json``. One launch for all jobs: starting the processes (importing torch and transformers twice over on a
2-core machine) costs more than the tiny runs themselves. The last job should be a CLI one (it prints its result).

A job is ``{"overrides": [...], "resume": bool, "stop_after": int | null}`` (``unikd.train.run``) or
``{"cli": [...]}`` (the ``unikd`` command line, e.g. ``["distill", "key=value", ...]``).
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
from pathlib import Path

from accelerate.state import AcceleratorState, GradientState, PartialState


def main(jobs_file: str) -> None:
    # a hang (one process waiting in a collective the other never enters) prints both stacks instead of timing out
    faulthandler.dump_traceback_later(float(os.environ.get("UNIKD_DRIVER_TIMEOUT", "240")), exit=True)
    from unikd.cli import app
    from unikd.config import load_config
    from unikd.train import run

    jobs = json.loads(Path(jobs_file).read_text())
    destroy = PartialState.destroy_process_group
    for i, job in enumerate(jobs):
        # A run tears its process group down last thing (end_training). Forming a new gloo group in the same
        # processes is flaky (connectFullMesh refused), so every job but the last keeps the group alive; the
        # last one ends it for real, after its saves, as every launched run does.
        PartialState.destroy_process_group = destroy if i == len(jobs) - 1 else lambda self, group=None: None
        if "cli" in job:
            code = app(job["cli"], standalone_mode=False)  # returns (not raises) a typer.Exit's code
            if code:
                raise SystemExit(code)
        else:
            run(load_config(None, job["overrides"]), resume=job.get("resume", False), stop_after=job.get("stop_after"))
        AcceleratorState._reset_state()  # the next run's Accelerator builds on the same PartialState (group)
        GradientState._reset_state()


if __name__ == "__main__":
    main(sys.argv[1])
