"""examples/accelerate/*.yaml are what `accelerate launch --config_file` reads: checked with accelerate's own parsers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "examples" / "accelerate").glob("*.yaml"))


def test_the_examples_are_there():
    names = {p.stem for p in CONFIGS}
    assert {"ddp", "fsdp2", "deepspeed-zero2", "deepspeed-zero3", "multi-cpu-mpirun"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_accelerate_reads_the_config(path):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    config = ClusterConfig.from_yaml_file(path)  # unknown top-level keys raise here
    launch_args = {action.dest for action in launch_command_parser()._actions}
    # `accelerate launch` turns each key of these sections into the launch argument of the same name; a key
    # it does not know is silently ignored, so check them against the parser.
    for section in ("fsdp_config", "deepspeed_config", "mpirun_config"):
        unknown = set(getattr(config, section) or {}) - launch_args
        assert not unknown, f"{path.name}: {section} keys accelerate launch ignores: {sorted(unknown)}"


def test_zero3_keeps_the_teacher_out_of_zero_init():
    """DeepSpeed issue 3175: with zero3_init_flag the frozen teacher is partitioned at from_pretrained."""
    zero3 = yaml.safe_load((CONFIGS[0].parent / "deepspeed-zero3.yaml").read_text())
    assert zero3["deepspeed_config"]["zero_stage"] == 3
    assert zero3["deepspeed_config"]["zero3_init_flag"] is False
    fsdp = yaml.safe_load((CONFIGS[0].parent / "fsdp2.yaml").read_text())
    assert fsdp["fsdp_config"]["fsdp_version"] == 2
