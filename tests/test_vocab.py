"""Vocabulary alignment: a pre-trained student whose embeddings are padded past the teacher's tokenizer is distilled
over the tokenizer's real vocabulary; a student with another tokenizer is refused before training."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_llama, word_tokenizer
from train.causal_fixtures import causal_files

from unikd import losses as L
from unikd.capture import Features
from unikd.config import load_config
from unikd.errors import ConfigError
from unikd.families import ModelSpec
from unikd.plan import DistillationPlan, PlanConfig
from unikd.train import run
from unikd.vocab import shared_vocabulary


def _padded_student(path, rows: int, tokenizer=None):
    """A 1-layer Llama of the toy teacher's width whose embeddings have ``rows`` rows, saved with ``tokenizer``."""
    tok = tokenizer or word_tokenizer()
    model = tiny_llama(layers=1, hidden=64, heads=4, vocab=rows, positions=32, bos_token_id=2, eos_token_id=3)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _kd(root, student, out) -> list[str]:
    """Logits KD from the toy teacher into the pre-trained ``student``."""
    return [
        "stage=task",
        f"teacher.path={root / 'teacher' / 'student'}",
        "student.init.strategy=pretrained",
        f"student.init.pretrained={student}",
        "plan.terms=[{knowledge: logits, loss: kl}]",
        f"output_dir={out}",
        *causal_files(root),
    ]


def test_the_logits_term_compares_the_shared_vocabulary_only():
    shape = dict(model_type="llama", num_layers=1, hidden_size=8, num_heads=2, num_kv_heads=2, head_dim=4)
    spec, t_spec = (
        ModelSpec(**shape, vocab_size=48, is_decoder=True),
        ModelSpec(**shape, vocab_size=40, is_decoder=True),
    )
    plan = DistillationPlan(
        PlanConfig(terms=[{"knowledge": "logits", "loss": "kl"}]),
        t_spec,
        spec,
        token_level_logits=True,
        shared_vocab=36,
    )
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 48, generator=g), torch.randn(2, 5, 40, generator=g)
    mask = torch.ones(2, 5, dtype=torch.long)
    student = Features(logits=s, attention_mask=mask, causal=True)
    teacher = Features(logits=t, attention_mask=mask, causal=True)
    total, _ = plan(teacher, student)
    assert total.item() == pytest.approx(L.kl_div(s[..., :36], t[..., :36]).item(), rel=1e-6)
    with pytest.raises(ConfigError):  # without the shared vocabulary, 48 and 40 rows are refused
        DistillationPlan(PlanConfig(terms=[{"knowledge": "logits"}]), t_spec, spec, token_level_logits=True)


def test_a_padded_pretrained_student_is_distilled_over_the_tokenizer(teacher_run, tmp_path, capsys):
    root, _ = teacher_run
    student = _padded_student(tmp_path / "padded", rows=48)  # the teacher: 40 rows = its 40-token tokenizer
    assert shared_vocabulary(str(root / "teacher" / "student"), 40, str(student), 48) == 40
    metrics = run(load_config(None, [*_kd(root, student, tmp_path / "kd"), "train.max_steps=6"]))
    assert metrics["steps"] == 6 and metrics["final"]["perplexity"] > 1
    assert "compared over its 40 tokens" in capsys.readouterr().err


def test_a_student_with_another_tokenizer_is_refused_naming_both(teacher_run, tmp_path):
    root, _ = teacher_run
    other = word_tokenizer()
    other.add_tokens(["extra", "words"])  # a different vocabulary (42 tokens)
    student = _padded_student(tmp_path / "other", rows=48, tokenizer=other)
    with pytest.raises(ConfigError) as exc:
        run(load_config(None, _kd(root, student, tmp_path / "kd")))
    assert exc.value.field == "student.init.pretrained"
    assert "teacher 40 tokens / 40 embedding rows, student 42 tokens / 48 rows" in exc.value.problem
    assert not (tmp_path / "kd" / "student").exists()
