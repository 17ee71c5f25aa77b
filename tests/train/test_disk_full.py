"""A full disk while saving: every writer's error (OSError, safetensors' SafetensorError, torch.save's RuntimeError)
ends in one line naming output_dir with the MiB needed, the partial folder removed; saved files keep the umask."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import tiny_bert

from unikd.errors import ConfigError
from unikd.train import checkpoint
from unikd.train.outputs import save_model


@pytest.fixture
def accelerator_and_model():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(512, 512)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.ones(2, 512)).sum().backward()
    optimizer.step()
    return accelerator, model


@contextlib.contextmanager
def _small_disk(where: Path, size: str):
    """A tmpfs of ``size`` at ``where`` (root on Linux); the test is skipped where none can be mounted."""
    where.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip() or made.returncode})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".tmp-*"))


def test_a_real_full_disk_while_checkpointing_is_one_line_and_leaves_no_partial_folder(tmp_path, accelerator_and_model):
    accelerator, _ = accelerator_and_model  # 1 MiB of weights, 2 MiB of AdamW moments: a 2 MiB disk cannot hold them
    with _small_disk(tmp_path / "disk", "2m") as disk:
        with pytest.raises(ConfigError) as err:
            checkpoint.save_checkpoint(accelerator, disk, 3, {"best": {}}, keep=2)
        assert err.value.field == "output_dir" and "disk filled up" in err.value.problem
        assert "about 3.0 MiB" in err.value.problem and "--resume" in err.value.fix
        assert _leftovers(disk) == [] and not (disk / "checkpoints" / "step-3").exists()


def test_a_real_full_disk_while_saving_the_student_is_one_line(tmp_path, minilm_path):
    from accelerate import Accelerator
    from transformers import AutoTokenizer

    model = tiny_bert(2, 256, 4, positions=128)  # ~10 MB of weights
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    with _small_disk(tmp_path / "disk", "3m") as disk:
        with pytest.raises(ConfigError) as err:
            save_model(Accelerator(cpu=True), model, tokenizer, disk / "student")
        assert err.value.field == "output_dir" and "the model needs about" in err.value.problem
        assert _leftovers(disk) == [] and not (disk / "student").exists()


def _writer_failing_mid_file(tmp_path: Path, exc: BaseException):
    def save_state(directory):
        (Path(directory) / "model.safetensors").write_bytes(b"partial" * 1000)  # half a file, as a full disk leaves
        raise exc

    return save_state


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        "safetensors",  # safetensors' own type, no errno: its text says os error 28
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),  # torch.save's
    ],
)
def test_each_writers_full_disk_error_is_recognised(tmp_path, monkeypatch, accelerator_and_model, exc):
    from safetensors import SafetensorError

    accelerator, _ = accelerator_and_model
    if exc == "safetensors":
        exc = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    if isinstance(exc, RuntimeError):  # torch.save says nothing of space: the disk must really be (nearly) full
        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=4096))
    monkeypatch.setattr(accelerator, "save_state", _writer_failing_mid_file(tmp_path, exc))
    with pytest.raises(ConfigError) as err:
        checkpoint.save_checkpoint(accelerator, tmp_path, 3, {"best": {}}, keep=2)
    assert err.value.field == "output_dir" and "disk filled up while writing checkpoint step-3" in err.value.problem
    assert err.value.__cause__ is exc
    assert _leftovers(tmp_path) == []


def test_a_writer_error_with_space_left_is_not_called_a_full_disk(tmp_path, monkeypatch, accelerator_and_model):
    accelerator, _ = accelerator_and_model
    broken = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    monkeypatch.setattr(accelerator, "save_state", _writer_failing_mid_file(tmp_path, broken))
    with pytest.raises(RuntimeError, match="unexpected pos"):  # plenty of space: the writer's own error, as it is
        checkpoint.save_checkpoint(accelerator, tmp_path, 3, {"best": {}}, keep=2)
    assert not checkpoint.disk_full(PermissionError(errno.EACCES, "denied"), tmp_path)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_models_and_checkpoints_follow_the_umask(tmp_path, minilm_path, accelerator_and_model, umask):
    from accelerate import Accelerator
    from transformers import AutoTokenizer

    old = os.umask(umask)
    try:
        save_model(
            Accelerator(cpu=True), tiny_bert(1, 32, 4), AutoTokenizer.from_pretrained(minilm_path), tmp_path / "s"
        )
        accelerator, _ = accelerator_and_model
        checkpoint.save_checkpoint(accelerator, tmp_path, 1, {"best": {}}, keep=2)
    finally:
        os.umask(old)
    files = [tmp_path / "s" / "model.safetensors", tmp_path / "s" / "config.json"]
    files += [p for p in (tmp_path / "checkpoints" / "step-1").iterdir()]
    assert any(p.name.endswith(".safetensors") for p in files[2:])
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o777 & ~umask


@pytest.mark.parametrize("fails", ["save_state", "os.replace"])
def test_disk_full_while_checkpointing(tmp_path, monkeypatch, accelerator_and_model, fails):
    accelerator, _ = accelerator_and_model
    checkpoint.save_checkpoint(accelerator, tmp_path, 2, {"best": {}}, keep=2)  # the last good checkpoint
    # weights (512*512 + 512) * 4 B, AdamW's two moments the same again each, and two 4-byte step counters
    assert checkpoint.state_bytes(accelerator) == 3 * (512 * 512 + 512) * 4 + 2 * 4 == 3151880

    def no_space(*args, **kwargs):
        if fails == "save_state":
            (tmp_path / "checkpoints" / ".tmp-step-3").mkdir(parents=True, exist_ok=True)
            (tmp_path / "checkpoints" / ".tmp-step-3" / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    if fails == "save_state":
        monkeypatch.setattr(accelerator, "save_state", no_space)
    else:
        monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(ConfigError) as err:
        checkpoint.save_checkpoint(accelerator, tmp_path, 3, {"best": {}}, keep=2)
    assert err.value.field == "output_dir" and err.value.fix and "--resume" in err.value.fix
    for words in ("disk filled up", "step-3", "about 3.0 MiB", "MiB are free"):
        assert words in err.value.problem
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2"]
