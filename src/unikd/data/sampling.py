"""Batch order of the training rows: shuffled, or length-grouped (``train.group_by_length``).

Length grouping is transformers' algorithm (``get_length_grouped_indices``: shuffle, cut into mega-batches of
50 batches, sort each by length, longest batch first), reseeded every epoch from ``seed + epoch`` so that a resumed
run sees the same order and every process of a multi-process run the same one (Accelerate shards the batches).
Measured on CoNLL-2003 train (14,041 sentences, 20 MiniLM tokens on average, batch 32): the tokens a step computes,
padding included, are 2.64x the real tokens in shuffled batches and 1.05x in length-grouped ones.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices


class LengthGroupedSampler(Sampler[int]):
    """Rows in batches of similar length, a new seeded order per epoch (``set_epoch``, as Accelerate calls it)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def row_lengths(ds) -> list[int]:
    """Tokens per row of a tokenized dataset (its ``input_ids``)."""
    return [len(ids) for ids in ds["input_ids"]]
