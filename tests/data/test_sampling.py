"""train.group_by_length: the length-grouped batch order (unikd.data.sampling)."""

import random

import pytest
import torch
from torch.utils.data import DataLoader

from unikd.config import load_config
from unikd.data.sampling import LengthGroupedSampler
from unikd.errors import ConfigError


def _padded_over_real(lengths, order, batch_size):
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(max(lengths[j] for j in b) * len(b) for b in batches) / sum(lengths)


def test_every_row_once_similar_lengths_and_a_seeded_order_per_epoch():
    rng = random.Random(0)
    lengths = [rng.randint(5, 120) for _ in range(2000)]
    sampler = LengthGroupedSampler(lengths, batch_size=32, seed=7)
    first = list(sampler)
    assert sorted(first) == list(range(2000))
    assert list(sampler) == first  # the same epoch, the same order (a resumed run)
    shuffled = list(range(2000))
    rng.shuffle(shuffled)
    # uniform lengths 5..120: a shuffled batch pads to about its max (~117), a grouped one to about its mean
    assert _padded_over_real(lengths, first, 32) < 1.1 < 1.5 < _padded_over_real(lengths, shuffled, 32)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(2000)) and second != first
    again = LengthGroupedSampler(lengths, batch_size=32, seed=7)
    again.set_epoch(1)
    assert list(again) == second
    assert list(LengthGroupedSampler(lengths, batch_size=32, seed=8)) != first


def test_a_loader_with_the_sampler_batches_rows_of_similar_length():
    lengths = [3, 50, 4, 49, 5, 51, 6, 48] * 50
    loader = DataLoader(list(range(len(lengths))), batch_size=4, sampler=LengthGroupedSampler(lengths, 4, seed=0))
    batches = [b.tolist() for b in loader]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    mixed = [b for b in batches if max(lengths[i] for i in b) - min(lengths[i] for i in b) > 3]
    # short rows go with short ones and long with long: 400 rows make 4 mega-batches of 25 batches, each sorted, so
    # at most the batch that straddles a mega-batch's long/short boundary is mixed (and the one transformers gives
    # the longest row, first, so an out-of-memory error shows at once); shuffled batches of 4 are mixed 7 times in 8
    assert len(mixed) <= 5, mixed
    assert isinstance(next(iter(loader)), torch.Tensor)


def test_group_by_length_refused_for_the_packed_general_stage():
    with pytest.raises(ConfigError, match="train.group_by_length"):
        load_config(
            base={"stage": "general", "teacher": {"path": "t"}, "data": {"text": ["a.txt"]}},
            overrides=["train.group_by_length=true"],
        )
