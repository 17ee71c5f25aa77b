"""What the plan and term tests share: tiny BERT / Llama / GPT-2 models and batches, the features a plan captures, and the reference formulas every logged term is checked against (written from the papers, independent of unikd.losses)."""

from __future__ import annotations
import math
import torch
import torch.nn.functional as F
from unikd.capture import FeatureCapture
from unikd.families import ModelSpec, model_spec
from unikd.plan import DistillationPlan, PlanConfig


VOCAB = 61


LENGTHS = [7, 5, 3]  # right padding to 7


TOL = dict(rtol=2e-5, atol=1e-8)


#: 10x the HF default init scale, so logits and attention maps are far from uniform and every term is O(0.1-1)
INIT = 0.2


# ---------------------------------------------------------------------------------------------------
# models, batches, capture
# ---------------------------------------------------------------------------------------------------
#: what every model here shares besides its size: no dropout, the larger init, 32 positions
BERT = dict(
    positions=32, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=INIT
)


LLAMA = dict(positions=32, tie_word_embeddings=False, initializer_range=INIT)


GPT2 = dict(positions=32, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=INIT)


def _batch(decoder: bool = False, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1] * n + [0] * (max(LENGTHS) - n) for n in LENGTHS])
    ids = torch.randint(1, VOCAB, mask.shape, generator=g) * mask
    batch = {"input_ids": ids, "attention_mask": mask}
    if decoder:
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :2] = -100  # e.g. prompt tokens: the label mask is not the attention mask
        batch["labels"] = labels
    else:
        batch["labels"] = torch.tensor([0, 2, 1])
    return batch


def _capture(plan: DistillationPlan, teacher, student, batch, step: int = 0):
    t_req, s_req = plan.requests(step)
    with FeatureCapture(teacher, t_req) as cap:
        tf = cap(batch, teacher=True)
    with FeatureCapture(student, s_req) as cap:
        sf = cap(batch)
    return tf, sf


# ---------------------------------------------------------------------------------------------------
# hand-written references (per example, valid tokens only)
# ---------------------------------------------------------------------------------------------------
def _lengths(mask):
    return [int(n) for n in mask.sum(1)]


def ref_hidden_mse(s, t, mask):
    rows = mask.bool()
    return ((s[rows].float() - t[rows].float()) ** 2).mean()


def ref_cosine(s, t, mask):
    rows = mask.bool()
    return (1 - F.cosine_similarity(s[rows].float(), t[rows].float(), dim=-1)).mean()


def ref_gram(s, t, mask):
    diffs = []
    for b, n in enumerate(_lengths(mask)):
        hs, ht = s[b, :n].float(), t[b, :n].float()
        diffs.append((hs @ hs.T / hs.shape[-1] - ht @ ht.T / ht.shape[-1]).flatten())
    return (torch.cat(diffs) ** 2).mean()


def ref_logits_kl(s, t, temperature, rows=None):
    if rows is not None:  # token level: keep the selected [B, L] rows
        s, t = s[rows.bool()], t[rows.bool()]
    log_q, log_p = F.log_softmax(s.float() / temperature, -1), F.log_softmax(t.float() / temperature, -1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * temperature**2


def _causal(n):
    return torch.ones(n, n, dtype=torch.bool).tril()


def ref_attention_kl(s_probs, t_probs, mask, causal=False, reduce="per_head"):
    rows = []
    for b, n in enumerate(_lengths(mask)):
        p, q = t_probs[b, :, :n, :n].float(), s_probs[b, :, :n, :n].float()
        if reduce == "mean":
            p, q = p.mean(0, keepdim=True), q.mean(0, keepdim=True)
        keep = _causal(n) if causal else torch.ones(n, n, dtype=torch.bool)
        kl = torch.where(keep & (p > 0), p * (p.log() - q.log()), 0.0).sum(-1)  # [H, n]
        rows.append(kl.flatten())
    return torch.cat(rows).mean()


def ref_attention_mse(s_maps, t_maps, mask, causal=False, reduce="per_head", window=None):
    diffs = []
    for b, n in enumerate(_lengths(mask)):
        s, t = s_maps[b, :, :n, :n].float(), t_maps[b, :, :n, :n].float()
        keep = _causal(n) if causal else torch.ones(n, n, dtype=torch.bool)
        if window is not None:  # key j visible from query i when i - window < j
            keep = keep & (torch.arange(n)[None, :] > torch.arange(n)[:, None] - window)
        if reduce == "mean":  # average the visible entries only (masked ones hold finfo.min)
            s = torch.where(keep, s, 0.0).mean(0, keepdim=True)
            t = torch.where(keep, t, 0.0).mean(0, keepdim=True)
        keep = keep.expand_as(s)
        diffs.append((s - t)[keep])
    return (torch.cat(diffs) ** 2).mean()


def ref_relation_kl(s_x, t_x, heads, mask, causal=False):
    """MiniLMv2 relation KL from [B, H, L, d] Q/K/V: concatenate heads, re-split into ``heads``."""

    def rel_log_probs(x, n):  # x: [B, H, L, d] -> [A, n, n] log-probs for one example's n tokens
        flat = x.permute(1, 0, 2).reshape(x.shape[1], -1)[:n].float()  # [n, H*d]
        xr = flat.view(n, heads, -1).transpose(0, 1)  # [A, n, d_r]
        scores = xr @ xr.transpose(1, 2) / math.sqrt(xr.shape[-1])
        if causal:
            scores = scores.masked_fill(~_causal(n), float("-inf"))
        return scores.log_softmax(-1)

    rows = []
    for b, n in enumerate(_lengths(mask)):
        log_q, log_p = rel_log_probs(s_x[b], n), rel_log_probs(t_x[b], n)
        p = log_p.exp()
        rows.append(torch.where(p > 0, p * (log_p - log_q), 0.0).sum(-1).flatten())
    return torch.cat(rows).mean()


def _close(actual, expected):
    torch.testing.assert_close(actual.float(), torch.as_tensor(expected).float(), **TOL)


# ---------------------------------------------------------------------------------------------------
# validation: before any forward pass, ConfigError naming the exact field
# ---------------------------------------------------------------------------------------------------
def _spec(layers=6, hidden=32, heads=4, kv_heads=None, vocab=100, decoder=False, model_type="bert"):
    kv = kv_heads or heads
    return ModelSpec(model_type, layers, hidden, heads, kv, hidden // heads, vocab, decoder)


OK_TERM = {"knowledge": "embeddings", "loss": "gram"}  # valid for every spec pair below


# ---------------------------------------------------------------------------------------------------
# projections
# ---------------------------------------------------------------------------------------------------
T4, S2_NARROW, S2_SAME = _spec(4, 32, 4), _spec(2, 16, 2), _spec(2, 32, 4)


def _projection_keys(terms, teacher=T4, student=S2_NARROW):
    return set(DistillationPlan(PlanConfig(terms=terms), teacher, student).projections.keys())


# ---------------------------------------------------------------------------------------------------
# random matching: re-drawn per step, deterministic in (seed, step)
# ---------------------------------------------------------------------------------------------------
T6 = _spec(6)


def _random_plan(seed: int, teacher=T6, student=S2_NARROW):
    return DistillationPlan(
        PlanConfig(
            seed=seed,
            terms=[
                {"knowledge": "logits"},
                {"knowledge": "hidden", "matching": "random"},
                {"knowledge": "relation", "matching": "random"},
                {"knowledge": "hidden", "loss": "gram", "matching": "uniform"},
            ],
        ),
        teacher,
        student,
    )


# ---------------------------------------------------------------------------------------------------
# decoders: causality
# ---------------------------------------------------------------------------------------------------


def _future(length):
    return torch.ones(length, length, dtype=torch.bool).triu(1)


def _last_row_kl(s_x, t_x, heads, n):
    """Σ over relation heads of KL for query row n-1 of example 0 (its keys 0..n-1: all of them)."""

    def log_probs(x):
        flat = x[0].permute(1, 0, 2).reshape(x.shape[2], -1)[:n].float()  # [n, H*d]
        xr = flat.view(n, heads, -1).transpose(0, 1)  # [A, n, d_r]
        return (xr[:, -1:] @ xr.transpose(1, 2) / math.sqrt(xr.shape[-1])).log_softmax(-1)  # [A, 1, n]

    log_q, log_p = log_probs(s_x), log_probs(t_x)
    return (log_p.exp() * (log_p - log_q)).sum()


def _two_attention_terms(teacher, student) -> DistillationPlan:
    """Score MSE and probability KL on the same (uniformly matched) layers, plus logits."""
    cfg = PlanConfig(
        terms=[
            {"knowledge": "attention", "attention_on": "scores", "loss": "mse", "head_reduction": "mean"},
            {"knowledge": "attention", "attention_on": "probs", "loss": "kl", "head_reduction": "mean"},
            {"knowledge": "logits"},
        ]
    )
    return DistillationPlan(cfg, model_spec(teacher), model_spec(student))


def _assert_same_logs_and_grads(results):
    (logs_a, grads_a), (logs_b, grads_b) = results
    assert logs_a.keys() == logs_b.keys()
    for key in logs_a:
        torch.testing.assert_close(logs_a[key], logs_b[key])
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)
