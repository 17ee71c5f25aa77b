"""Causal-LM scores (unikd.train.causal_eval) against hand computations."""

from __future__ import annotations

import math

import pytest

from unikd.train.causal_eval import metrics_from_sums, unigram_baseline


def test_unigram_baseline_is_the_add_one_frequency_model_of_the_training_responses():
    # vocabulary 4; training responses hold token 1 three times, token 2 once (-100: not scored)
    train = [[-100, 1, 1, 2], [-100, -100, 1]]
    dev = [[-100, 1, 2], [3, 1]]  # each row's first position has no logits before it: not scored
    out = unigram_baseline(train, dev, vocab_size=4)
    counts = [1, 4, 2, 1]  # add-one: 1 + occurrences
    p = [c / 8 for c in counts]
    nll = -(math.log(p[1]) + math.log(p[2]) + math.log(p[1]))
    assert out["tokens"] == 3
    assert out["loss"] == pytest.approx(nll / 3, rel=1e-12)
    assert out["perplexity"] == pytest.approx(math.exp(nll / 3), rel=1e-12)
    assert out["score"] == -out["perplexity"]


def test_scores_are_token_weighted_and_higher_is_better():
    out = metrics_from_sums(nll_sum=6.0, tokens=3)
    assert out["loss"] == 2.0 and out["perplexity"] == pytest.approx(math.exp(2.0)) and out["score"] < 0
    assert metrics_from_sums(6.0, 3, metric="loss")["score"] == -2.0
