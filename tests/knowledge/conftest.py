"""The plan and term tests' fixtures: tiny BERT teacher and students, and a decoder pair (Llama, GPT-2)."""

from __future__ import annotations

import pytest
from helpers import tiny_bert, tiny_gpt2, tiny_llama
from plan_builders import BERT, GPT2, LLAMA, VOCAB


@pytest.fixture(scope="module")
def bert_teacher():
    return tiny_bert(4, 32, 4, vocab=VOCAB, seed=0, **BERT).eval()


@pytest.fixture(scope="module")
def bert_student_same():
    """Same width and head count as the teacher (per-head attention, no projections)."""
    return tiny_bert(2, 32, 4, vocab=VOCAB, seed=1, **BERT).eval()


@pytest.fixture(scope="module")
def bert_student_narrow():
    """Half the teacher's width and heads (projections, mean attention, relation re-splitting)."""
    return tiny_bert(2, 16, 2, vocab=VOCAB, seed=2, **BERT).eval()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def decoder_pair(request):
    if request.param == "llama":  # GQA on both sides: 4 heads / 2 KV heads and 2 heads / 1 KV head
        return (
            tiny_llama(4, 32, 4, 2, vocab=VOCAB, seed=0, **LLAMA).eval(),
            tiny_llama(2, 16, 2, 1, vocab=VOCAB, seed=1, **LLAMA).eval(),
        )
    return (
        tiny_gpt2(4, 32, 4, vocab=VOCAB, seed=0, **GPT2).eval(),
        tiny_gpt2(2, 16, 2, vocab=VOCAB, seed=1, **GPT2).eval(),
    )
