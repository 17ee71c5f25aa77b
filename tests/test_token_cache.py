"""The top-k teacher cache for token-level KD: the bucket divergence against the full-vocabulary one, what a store
keeps, a run from the cache against the same run without it, reuse by content, and refusals before training."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from train.causal_fixtures import causal_files

from unikd import losses as L
from unikd.capture import Features
from unikd.config import load_config
from unikd.errors import ConfigError
from unikd.token_cache import TokenTopkCache, scored_counts, topk_divergence
from unikd.train import run


def _topk(t: torch.Tensor, k: int, temperature: float = 1.0):
    log_p = F.log_softmax(t / temperature, dim=-1)
    top, ids = log_p.topk(k, dim=-1)
    tail = torch.log(-torch.expm1(torch.logsumexp(top, -1).clamp(max=-1e-7))).clamp(min=-69.0)
    return ids, top, tail


@pytest.mark.parametrize(("name", "parameter"), [("kl", None), ("reverse_kl", None), ("jsd", 0.5), ("tvd", None)])
def test_with_k_equal_to_the_vocabulary_the_bucket_divergence_is_the_full_one(name, parameter):
    g = torch.Generator().manual_seed(0)
    s, t = 2 * torch.randn(11, 30, generator=g), 2 * torch.randn(11, 30, generator=g)
    spec = L.REGISTRY["logits"][name]
    extra = {spec.parameter: parameter} if spec.parameter else {}
    full = spec.fn(s, t, temperature=2.0, **extra)
    got = topk_divergence(s, _topk(t, 30, 2.0), name, temperature=2.0, parameter=parameter)
    assert got.item() == pytest.approx(full.item(), rel=1e-5, abs=1e-6)


def test_the_bucket_kl_is_the_kl_of_the_coarsened_distributions():
    """k < V: KL between (p_1..p_k, p_tail) and (q_at the same ids, q_tail), written out here."""
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 20, generator=g), 3 * torch.randn(5, 20, generator=g)
    p, q = t.softmax(-1), s.softmax(-1)
    ids = p.topk(4, dim=-1).indices
    p_b = torch.cat([p.gather(-1, ids), 1 - p.gather(-1, ids).sum(-1, keepdim=True)], -1)
    q_b = torch.cat([q.gather(-1, ids), 1 - q.gather(-1, ids).sum(-1, keepdim=True)], -1)
    want = (p_b * (p_b.log() - q_b.log())).sum(-1).mean()
    got = topk_divergence(s, _topk(t, 4), "kl", temperature=1.0)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert got.item() <= L.kl_div(s, t).item()  # coarsening never adds divergence (data processing inequality)


def test_a_store_keeps_each_scored_positions_top_k_in_row_order(tmp_path):
    labels = [[-100, -100, 5, 6, 7], [-100, 3, 4, -100, -100]]  # scored: positions 1, 2, 3 and 0, 1
    assert scored_counts(labels).tolist() == [3, 2]
    cache = TokenTopkCache(tmp_path / "c", labels, k=3, temperature=1.0, key={"t": "x"})
    logits = torch.randn(2, 5, 10)
    batch = {"labels": torch.tensor(labels), "input_ids": torch.zeros(2, 5, dtype=torch.long)}
    batch["attention_mask"] = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    cache.store(torch.tensor([0, 1]), Features(logits=logits, attention_mask=batch["attention_mask"]), batch)
    assert cache.missing([0, 1]) == [] and cache.bytes_per_token == 3 * 4 + 4
    # read back in the other row order: the positions follow the batch's rows
    swapped = {k: v[[1, 0]] for k, v in batch.items()}
    ids, logp, tail = cache.lookup(torch.tensor([1, 0]), swapped).topk
    rows = [logits[1, 0], logits[1, 1], logits[0, 1], logits[0, 2], logits[0, 3]]
    want_ids, want_top, want_tail = _topk(torch.stack(rows), 3)
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(logp, want_top, rtol=2e-3, atol=2e-3)  # stored in fp16
    torch.testing.assert_close(tail, want_tail)
    reopened = TokenTopkCache(tmp_path / "c", labels, k=3, temperature=1.0, key={"t": "x"})
    assert reopened.is_open and reopened.missing([0, 1]) == []
    assert not TokenTopkCache(tmp_path / "c", labels, k=3, temperature=2.0, key={"t": "x"}).is_open


def _kd(root, out, *extra):
    return [
        "stage=task",
        f"teacher.path={root / 'teacher' / 'student'}",
        "student.shape.num_layers=1",
        "student.init.strategy=teacher-layers",
        "plan.terms=[{knowledge: logits, loss: kl}]",
        "plan.hard_label_weight=0",
        "train.max_steps=10",
        "train.eval_every=5",
        "optim.lr=3e-3",
        *causal_files(root),
        f"output_dir={out}",
        *extra,
    ]


def test_a_run_from_the_full_top_k_cache_trains_the_run_without_it(teacher_run, tmp_path):
    """k = the vocabulary (40): the cached run is the uncached run up to the fp16 storage of log p; k = 8 keeps
    almost all of the toy teacher's mass and still trains; a second run on the same rows reuses the cache."""
    root, _ = teacher_run
    plain = run(load_config(None, _kd(root, tmp_path / "plain")))
    store = tmp_path / "store"
    full = run(load_config(None, _kd(root, tmp_path / "full", "train.teacher_cache=true", "train.teacher_cache_topk=40",
                                     f"train.teacher_cache_dir={store}")))  # fmt: skip
    assert full["teacher_pass"]["rows"] == 300 and full["teacher_pass"]["bytes_per_token"] == 40 * 4 + 4
    ppl = [h["perplexity"] for h in plain["history"]]
    assert [h["perplexity"] for h in full["history"]] == pytest.approx(ppl, rel=2e-3)
    small = run(load_config(None, _kd(root, tmp_path / "k8", "train.teacher_cache=true", "train.teacher_cache_topk=8")))
    assert small["teacher_pass"]["bytes_per_token"] == 8 * 4 + 4
    assert small["final"]["perplexity"] < 1.5 * plain["final"]["perplexity"]
    again = run(load_config(None, _kd(root, tmp_path / "again", "train.teacher_cache=true", "train.teacher_cache_topk=40",
                                      f"train.teacher_cache_dir={store}", "seed=7")))  # fmt: skip
    assert again["teacher_pass"]["rows"] == 0  # every row found in the store, by content
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["teacher_pass"]["rows"] == 0


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (["plan.terms=[{knowledge: logits, loss: mse}]"], "plan.terms[0].loss"),
        (["plan.terms=[{knowledge: logits, loss: kl, temperature_end: 2.0}]"], "plan.terms[0].temperature_end"),
        (["plan.policy=on_policy"], "train.teacher_cache"),
    ],
)
def test_what_a_token_cache_cannot_hold_is_refused_before_training(teacher_run, tmp_path, extra, field):
    root, _ = teacher_run
    with pytest.raises(ConfigError) as exc:
        run(load_config(None, _kd(root, tmp_path / "x", "train.teacher_cache=true", *extra)))
    assert exc.value.field == field
    assert not (tmp_path / "x" / "student").exists()
