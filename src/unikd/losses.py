"""Distillation losses: a registry of short functions, one per loss.

Conventions (every function):

* student tensor first, teacher second;
* masks are ``[B, L]`` with 1 = real token (attention losses take a boolean ``valid`` map of
  ``[B, 1 or H, L, L]`` from :func:`valid_pairs` instead);
* the result is a float32 scalar: the mean over the valid positions;
* inputs are cast to float32 (``.float()``), so bf16/fp16 features are safe;
* padded positions contribute nothing: they are replaced by a neutral value with ``torch.where``
  *before* any arithmetic, so changing them (even to ``inf``/``nan``/``finfo.min``) changes neither
  the loss nor the gradients. On a CPU the large maps (attention ``[B, H, L, L]``, vocabulary-sized
  soft targets) go without ``torch.where`` first, which has no vectorised CPU kernel for such masks
  (5-15x a multiply): masked by multiplying or by adding ``finfo.min``, checked by a sum over every
  term, masked ones included; where that sum is not finite the exact ``torch.where`` path runs instead
  (see :func:`_cpu_fast_path`). Attention KL/CE keep ``torch.where``: their logarithms cost more;
* teacher tensors are detached: gradients only ever reach the student.

Registry: ``REGISTRY[group][name] -> LossSpec`` (the function and what it needs: width-free, block
input, distribution, temperature) with groups ``logits``, ``hidden``, ``attention``, ``relation``;
:func:`register_loss` adds one, :func:`loss_spec` / :func:`get_loss` look names up and raise
:class:`~unikd.errors.ConfigError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from unikd import divergences as D
from unikd.errors import ConfigError

__all__ = [
    "LOSSES",
    "REGISTRY",
    "LossSpec",
    "WIDTH_FREE_HIDDEN_LOSSES",
    "attention_ce",
    "attention_kl",
    "attention_mse",
    "cosine",
    "fsp",
    "get_loss",
    "gram",
    "hidden_mse",
    "kl_div",
    "logits_mse",
    "loss_spec",
    "masked_softmax",
    "mmd",
    "nst",
    "pkd",
    "reduce_heads",
    "register_loss",
    "relation_kl",
    "soft_cross_entropy",
    "valid_pairs",
]

#: floor for probabilities inside ``log`` (attention KL / CE)
EPS = 1e-12


# ---- helpers ---------------------------------------------------------------------------------
def _row_mask(x: Tensor, mask: Tensor | None) -> Tensor:
    """Bool mask over all dims of ``x`` but the last (``[B]``, ``[B, L]``); all True if None."""
    rows = x.shape[:-1]
    if mask is None:
        return torch.ones(rows, dtype=torch.bool, device=x.device)
    if tuple(mask.shape) != tuple(rows):
        raise ConfigError(
            "mask",
            f"shape {tuple(mask.shape)} does not match the leading dims {tuple(rows)} of the input",
            "pass a [B, L] mask (1 = real token) for [B, L, D] inputs, or no mask",
        )
    return mask.to(device=x.device).bool()


def _same_shape(s: Tensor, t: Tensor, what: str) -> None:
    if s.shape != t.shape:
        raise ConfigError(
            what,
            f"student shape {tuple(s.shape)} != teacher shape {tuple(t.shape)}",
            "project the student to the teacher width (plan projections) or use a width-free loss",
        )


def _zero_invalid(x: Tensor, m: Tensor, fill: float = 0.0) -> Tensor:
    """float32 copy of ``x`` with rows where ``m`` (x.shape[:-1]) is False set to ``fill``."""
    return torch.where(m.unsqueeze(-1), x.float(), fill)


def _masked_mean(values: Tensor, m: Tensor) -> Tensor:
    """Mean of ``values`` over positions where ``m`` is True (0 if there are none)."""
    m = m.expand_as(values)
    return torch.where(m, values, 0.0).sum() / m.sum().clamp_min(1)


def _key_bias(valid: Tensor) -> Tensor:
    """float32 0 where ``valid``, ``finfo.min`` elsewhere: added to scores before a softmax over keys.

    Not -inf, and not a torch.where over the [B, H, L, L] scores (a broadcast-mask where has no vectorised
    CPU kernel: ~5x an add): invalid keys then get probability exactly 0 and a finite log-probability, and a
    row without any valid key stays finite (uniform) instead of NaN.
    """
    return torch.where(valid, 0.0, torch.finfo(torch.float32).min)


def _cpu_fast_path(fast: Callable[[], tuple[Any, Tensor]], exact: Callable[[], Any], device) -> Any:
    """``fast()``'s result on a CPU when it holds, else ``exact()``.

    ``fast`` returns (result, witness): the witness sums every term the result is made of, masked ones
    included, so a nan or inf anywhere (padding holding -inf or nan: 0·inf = nan) makes it non-finite
    and the exact path runs; a finite witness means every term, and so every gradient, equals the exact
    path's. Other devices go straight to ``exact``: their ``torch.where`` is fast, and the check would
    synchronise with the host.
    """
    if device.type == "cpu":
        loss, witness = fast()
        if torch.isfinite(witness):
            return loss
    return exact()


class _RowKL(torch.autograd.Function):
    """Σ over rows of w·KL(p ‖ softmax(z)) (or, ``cross_entropy``, of w·(−Σ p·log softmax(z))), with
    d/dz = w·(softmax(z)·Σp − p) either way.

    z: [..., K] student scores; log_p: teacher log-probabilities (same shape); w: row weights broadcasting
    to z.shape[:-1]. Autograd through log_softmax keeps log q and p for backward (two maps the size of z:
    per relation head, or per token times the vocabulary) and writes three there; this keeps the one
    gradient map, built in log q's memory, and scales it. Finite inputs only: -inf logits make the sum
    NaN, which is why the logit losses call it through _cpu_fast_path.
    """

    @staticmethod
    def forward(ctx, z: Tensor, log_p: Tensor, w: Tensor, cross_entropy: bool = False) -> Tensor:
        log_q = torch.log_softmax(z, dim=-1)
        p = log_p.exp()
        rows = -(p * log_q).sum(-1) if cross_entropy else (p * (log_p - log_q)).sum(-1)
        grad_z = log_q.exp_().mul_(p.sum(-1, keepdim=True)).sub_(p).mul_(w.unsqueeze(-1))
        ctx.save_for_backward(grad_z)
        return (rows * w).sum()

    @staticmethod
    def backward(ctx, grad: Tensor):
        (grad_z,) = ctx.saved_tensors
        return grad_z * grad, None, None, None


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ConfigError("temperature", f"must be > 0, got {temperature}", "use e.g. 1.0 to 8.0")


# ---- logits ----------------------------------------------------------------------------------
def _logit_kd(s: Tensor, t: Tensor, temperature: float, mask: Tensor | None, cross_entropy: bool) -> Tensor:
    """Mean over valid rows of KL(softmax(t/T) ‖ softmax(s/T)), or of the soft cross-entropy."""
    _check_temperature(temperature)
    _same_shape(s, t, "logits")
    m = _row_mask(s, mask)
    z = _zero_invalid(s, m) / temperature
    log_p = F.log_softmax(_zero_invalid(t.detach(), m) / temperature, dim=-1)

    def fast():  # one kept map instead of two (vocabulary-sized for LMs); NaN on -inf logits -> exact
        rows = m.float()
        loss = _RowKL.apply(z, log_p, rows / rows.sum().clamp_min(1), cross_entropy)
        return loss, loss

    def exact():
        log_q = F.log_softmax(z, dim=-1)
        p = log_p.exp()
        terms = torch.where(p > 0, -p * log_q if cross_entropy else p * (log_p - log_q), 0.0)
        return _masked_mean(terms.sum(-1), m)

    return _cpu_fast_path(fast, exact, s.device)


def soft_cross_entropy(
    s: Tensor, t: Tensor, temperature: float = 1.0, mask: Tensor | None = None, t2_scaling: bool = True
) -> Tensor:
    """Soft cross-entropy −Σ softmax(t/T)·log_softmax(s/T), mean over valid rows, ×T² if t2_scaling.

    s, t: ``[B, C]`` (sequence level) or ``[B, L, V]`` (token level); mask: ``[B, L]`` (0 = ignore,
    e.g. ``labels == -100``) or None. Returns a scalar.
    """
    loss = _logit_kd(s, t, temperature, mask, cross_entropy=True)
    return loss * temperature**2 if t2_scaling else loss


def kl_div(
    s: Tensor, t: Tensor, temperature: float = 1.0, mask: Tensor | None = None, t2_scaling: bool = True
) -> Tensor:
    """KL(teacher ‖ student) = Σ p_t (log p_t − log p_s) at temperature T, mean over valid rows, ×T².

    s, t: ``[B, C]`` or ``[B, L, V]``; mask: ``[B, L]`` or None. Returns a scalar.
    Equals soft_cross_entropy minus the teacher's entropy.
    """
    loss = _logit_kd(s, t, temperature, mask, cross_entropy=False)
    return loss * temperature**2 if t2_scaling else loss


def bernoulli_kd(
    s: Tensor, t: Tensor, temperature: float = 1.0, t2_scaling: bool = True, cross_entropy: bool = False
) -> Tensor:
    """Multi-label soft targets: each label its own Bernoulli, p = sigmoid(logit / T), not one softmax over labels.

    KL = Σ_labels [p_t (log p_t − log p_s) + (1 − p_t)(log(1 − p_t) − log(1 − p_s))] (cross_entropy: the soft binary
    cross-entropy −Σ [p_t log p_s + (1 − p_t) log(1 − p_s)]), mean over rows, ×T² if t2_scaling.
    s, t: ``[B, C]`` logits of C independent labels. Returns a scalar.
    """
    _check_temperature(temperature)
    _same_shape(s, t, "logits")
    zs, zt = s / temperature, t.detach() / temperature
    p = torch.sigmoid(zt)
    ce = -(p * F.logsigmoid(zs) + (1 - p) * F.logsigmoid(-zs))
    if not cross_entropy:  # minus the teacher's own entropy: 0 where the student matches it
        ce = ce + p * F.logsigmoid(zt) + (1 - p) * F.logsigmoid(-zt)
    loss = ce.sum(-1).mean()
    return loss * temperature**2 if t2_scaling else loss


def logits_mse(s: Tensor, t: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error of raw logits, mean over valid rows and classes.

    s, t: ``[B, C]`` or ``[B, L, V]``; mask: ``[B, L]`` or None. Returns a scalar.
    """
    return _mse(s, t, mask, "logits")


def _mse(s: Tensor, t: Tensor, mask: Tensor | None, what: str) -> Tensor:
    _same_shape(s, t, what)
    m = _row_mask(s, mask)
    return _MaskedSumOfSquares.apply(s, t.detach(), m.unsqueeze(-1)) / (m.sum().clamp_min(1) * s.shape[-1])


# ---- hidden states / embeddings --------------------------------------------------------------
def hidden_mse(s: Tensor, t: Tensor, mask: Tensor | None = None) -> Tensor:
    """MSE over valid tokens and features (TinyBERT hidden/embedding loss).

    s, t: ``[B, L, D]`` (student already projected to the teacher width); mask: ``[B, L]``.
    """
    return _mse(s, t, mask, "hidden")


def cosine(s: Tensor, t: Tensor, mask: Tensor | None = None) -> Tensor:
    """1 − cos(s_i, t_i) per valid token, mean (DistilBERT's cosine embedding loss).

    s, t: ``[B, L, D]``; mask: ``[B, L]``.
    """
    _same_shape(s, t, "hidden")
    m = _row_mask(s, mask)
    cos = F.cosine_similarity(_zero_invalid(s, m), _zero_invalid(t.detach(), m), dim=-1, eps=1e-8)
    return _masked_mean(1.0 - cos, m)


def pkd(s: Tensor, t: Tensor, mask: Tensor | None = None) -> Tensor:
    """BERT-PKD: ‖s₀/‖s₀‖ − t₀/‖t₀‖‖² summed over features, mean over the batch.

    s, t: ``[B, L, D]``; the vector used is the first token ([CLS]) or, with a mask ``[B, L]``,
    each example's first valid token (left padding). Examples without valid tokens are skipped.
    """
    _same_shape(s, t, "hidden")
    m = _row_mask(s, mask)
    first = m.int().argmax(dim=1)  # index of the first True per example
    has = m.any(dim=1)
    rows = torch.arange(s.shape[0], device=s.device)
    s0 = torch.where(has[:, None], s[rows, first].float(), 0.0)
    t0 = torch.where(has[:, None], t.detach()[rows, first].float(), 0.0)
    d = F.normalize(s0, dim=-1) - F.normalize(t0, dim=-1)
    return _masked_mean((d**2).sum(-1), has)


def gram(s: Tensor, t: Tensor, mask: Tensor | None = None) -> Tensor:
    """MSE between token Gram matrices H·Hᵀ/D (each side its own D), mean over valid token pairs.

    s: ``[B, L, Ds]``, t: ``[B, L, Dt]`` (widths may differ); mask: ``[B, L]``.
    """
    m = _row_mask(s, mask)
    hs, ht = _zero_invalid(s, m), _zero_invalid(t.detach(), m)
    gs = hs @ hs.transpose(1, 2) / hs.shape[-1]
    gt = ht @ ht.transpose(1, 2) / ht.shape[-1]
    pairs = m[:, :, None] & m[:, None, :]
    return _masked_mean((gs - gt) ** 2, pairs)


def fsp(s_in: Tensor, s_out: Tensor, t_in: Tensor, t_out: Tensor, mask: Tensor | None = None) -> Tensor:
    """FSP (flow of solution procedure): MSE between G = F_inᵀ·F_out / n_valid_tokens.

    s_in, t_in: ``[B, L, D_in]``; s_out, t_out: ``[B, L, D_out]`` — teacher and student widths must
    be equal; mask: ``[B, L]``. G is ``[B, D_in, D_out]``; mean over examples with valid tokens and
    matrix entries.
    """
    _same_shape(s_in, t_in, "hidden.fsp")
    _same_shape(s_out, t_out, "hidden.fsp")
    m = _row_mask(s_in, mask)
    n = m.sum(1).clamp_min(1).float()[:, None, None]

    def flow(a, b):
        return torch.einsum("bld,ble->bde", _zero_invalid(a, m), _zero_invalid(b, m)) / n

    g = (flow(s_in, s_out) - flow(t_in.detach(), t_out.detach())) ** 2
    return _masked_mean(g.mean(dim=(1, 2)), m.any(1))


def nst(s: Tensor, t: Tensor, mask: Tensor | None = None) -> Tensor:
    """Neuron Selectivity Transfer: MMD² with the polynomial kernel k(x, y) = (xᵀy)².

    s: ``[B, L, Ds]``, t: ``[B, L, Dt]`` (widths may differ); mask: ``[B, L]``. Per example, every
    channel is a vector over the valid tokens, L2-normalized; MMD² = mean k(t,t') + mean k(s,s')
    − 2 mean k(s,t) over channel pairs; mean over examples with valid tokens.
    """
    m = _row_mask(s, mask)
    xs = F.normalize(_zero_invalid(s, m), dim=1)  # [B, L, Ds], unit channels over tokens
    xt = F.normalize(_zero_invalid(t.detach(), m), dim=1)
    # Σ_ij (x_iᵀ y_j)² = ‖XᵀY‖²_F = Σ (XXᵀ)∘(YYᵀ): token-by-token products, cheap for any width
    ks, kt = xs @ xs.transpose(1, 2), xt @ xt.transpose(1, 2)
    ds, dt = xs.shape[-1], xt.shape[-1]
    mmd2 = (kt * kt).sum((1, 2)) / dt**2 + (ks * ks).sum((1, 2)) / ds**2 - 2 * (ks * kt).sum((1, 2)) / (ds * dt)
    return _masked_mean(mmd2, m.any(1))


mmd = nst


# ---- attention maps --------------------------------------------------------------------------
def valid_pairs(attention_mask: Tensor, causal: bool) -> Tensor:
    """Bool ``[B, 1, L, L]``: query valid AND key valid AND (if causal) key ≤ query.

    attention_mask: ``[B, L]`` (1 = real token).
    """
    m = attention_mask.bool()
    v = m[:, None, :, None] & m[:, None, None, :]
    if causal:
        L = m.shape[1]
        v = v & torch.ones(L, L, dtype=torch.bool, device=m.device).tril()
    return v


def reduce_heads(maps: Tensor, mode: str, field: str = "heads") -> Tensor:
    """Combine heads: ``per_head`` keeps ``[B, H, L, L]``; ``sum``/``mean`` give ``[B, 1, L, L]``."""
    maps = maps.float()
    if mode == "per_head":
        return maps
    if mode == "sum":
        return maps.sum(1, keepdim=True)
    if mode == "mean":
        return maps.mean(1, keepdim=True)
    raise ConfigError(field, f"unknown head reduction {mode!r}", "use one of per_head, sum, mean")


def masked_softmax(scores: Tensor, valid: Tensor) -> Tensor:
    """float32 softmax over the last dim of ``scores`` ``[B, H, L, L]`` restricted to ``valid``.

    Invalid keys get probability 0; a row without any valid key is all zeros (no NaN, no NaN grad).
    """

    def fast():
        probs = torch.softmax(scores.float() + _key_bias(valid), dim=-1) * valid
        return probs, probs.sum()

    def exact():
        x = torch.where(valid, scores.float(), float("-inf"))
        x = torch.where(valid.any(-1, keepdim=True), x, 0.0)
        return torch.where(valid, torch.softmax(x, dim=-1), 0.0)

    return _cpu_fast_path(fast, exact, scores.device)


def _all_valid(x: Tensor, valid: Tensor | None) -> Tensor:
    if valid is None:
        return torch.ones_like(x, dtype=torch.bool)
    return valid.to(device=x.device).bool().expand_as(x)


def attention_mse(s: Tensor, t: Tensor, valid: Tensor | None = None) -> Tensor:
    """MSE of attention maps (scores or probabilities), mean over valid pairs and heads.

    s, t: ``[B, H, L, L]`` (same H); valid: ``[B, 1, L, L]`` or ``[B, H, L, L]`` bool. Invalid
    entries are ignored even when they hold −inf / finfo.min.
    """
    _same_shape(s, t, "attention")
    if valid is None:
        return (s.float() - t.detach().float()).pow(2).mean()
    valid = valid.to(device=s.device).bool()
    # the count on the unexpanded mask: this runs per layer per step
    count = valid.sum() * (s.shape[1] // valid.shape[1])
    return _MaskedSumOfSquares.apply(s, t.detach(), valid) / count.clamp_min(1)


class _MaskedSumOfSquares(torch.autograd.Function):
    """Σ over valid entries of (s − t)², with d/ds = 2·(s − t)·valid; ``valid`` broadcasts to s.

    The per-layer hot spot of TinyBERT-style KD: autograd's ``where(valid, s - t, 0).pow(2).sum()`` writes
    three [B, H, L, L] maps forward and three more backward; this writes the masked difference once
    (invalid entries, which may hold −inf − −inf = nan, become 0 in place), reduces it with a dot product,
    keeps it for backward and scales it there: one map forward, one backward. The hidden-state and logit
    MSEs use it too (``valid`` = the row mask [B, L, 1]): one temporary instead of four.
    """

    @staticmethod
    def forward(ctx, s: Tensor, t: Tensor, valid: Tensor) -> Tensor:
        def masked_difference(exact: bool) -> tuple[Tensor, Tensor]:
            d = s.float() - t.float()
            if exact:
                d.masked_fill_(~valid, 0.0)
            else:  # on a CPU ~15x faster on a [B, H, L, L] map; NaN where an invalid entry is ±inf or nan
                d.mul_(valid.to(d.dtype))
            flat = d.reshape(-1)
            return d, torch.dot(flat, flat)

        def fast():
            d, total = masked_difference(exact=False)
            return (d, total), total  # the sum of squares is its own witness

        d, total = _cpu_fast_path(fast, lambda: masked_difference(exact=True), s.device)
        ctx.save_for_backward(d)
        ctx.s_dtype = s.dtype
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):
        (d,) = ctx.saved_tensors
        return (d * (2 * grad)).to(ctx.s_dtype), None, None


def _attention_terms(s_probs, t_probs, valid):
    _same_shape(s_probs, t_probs, "attention")
    v = _all_valid(s_probs, valid)
    p = torch.where(v, t_probs.detach().float(), 0.0)
    log_q = torch.log(torch.where(v, s_probs.float(), 1.0).clamp_min(EPS))
    return p, log_q, v


def attention_kl(s_probs: Tensor, t_probs: Tensor, valid: Tensor | None = None) -> Tensor:
    """Σ_keys t·(log t − log s) over valid keys (0·log0 = 0), mean over valid query rows and heads.

    s_probs, t_probs: ``[B, H, L, L]`` probabilities; valid: ``[B, 1 or H, L, L]`` bool.
    """
    p, log_q, v = _attention_terms(s_probs, t_probs, valid)
    log_p = torch.log(torch.where(p > 0, p, 1.0))
    rows = (p * (log_p - log_q)).sum(-1)
    return _masked_mean(rows, v.any(-1))


def attention_ce(s_probs: Tensor, t_probs: Tensor, valid: Tensor | None = None) -> Tensor:
    """−Σ_keys t·log s over valid keys, mean over valid query rows and heads.

    s_probs, t_probs: ``[B, H, L, L]`` probabilities; valid: ``[B, 1 or H, L, L]`` bool.
    """
    p, log_q, v = _attention_terms(s_probs, t_probs, valid)
    return _masked_mean(-(p * log_q).sum(-1), v.any(-1))


# ---- relations (MiniLM / MiniLMv2) -----------------------------------------------------------
def _relation_scores(x: Tensor, heads: int, bias: Tensor, side: str) -> Tensor:
    """[B, A, L, L] scaled x_h·x_hᵀ of ``x`` [B, L, W] re-split into ``heads`` heads, plus ``bias``."""
    B, L, W = x.shape
    if heads < 1 or W % heads:
        raise ConfigError(
            "num_relation_heads",
            f"{heads} does not divide the {side} width {W}",
            "choose a relation head count that divides both the teacher and student Q/K/V widths",
        )
    d = W // heads
    xh = x.view(B, L, heads, d).transpose(1, 2)  # [B, A, L, d]
    return (xh / math.sqrt(d)) @ xh.transpose(-1, -2) + bias  # scale [B, A, L, d], not the L x L map


def relation_kl(
    s_x: Tensor,
    t_x: Tensor,
    num_relation_heads: int,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
) -> Tensor:
    """MiniLM / MiniLMv2 self-attention relation KL(R_teacher ‖ R_student).

    s_x: ``[B, L, Ws]``, t_x: ``[B, L, Wt]`` — one layer's Q (or K or V), all attention heads
    concatenated; mask: ``[B, L]``; causal: restrict keys to ≤ query (decoders). Each side is
    re-split into ``num_relation_heads`` heads of size W/A_r; R = softmax(x_h·x_hᵀ/√(W/A_r)) over
    valid keys; KL summed over keys, mean over valid query rows, relation heads and batch.
    MiniLM's value relation is this on V with A_r = the number of attention heads.
    """
    if s_x.shape[:2] != t_x.shape[:2]:
        raise ConfigError(
            "relation",
            f"student {tuple(s_x.shape)} and teacher {tuple(t_x.shape)} differ in [B, L]",
            "feed the same batch to teacher and student",
        )
    m = _row_mask(s_x, mask)
    v = valid_pairs(m, causal)  # [B, 1, L, L]
    # the teacher's probability is exactly 0 at invalid keys, so their KL terms and gradients are 0; a query
    # row without any valid key is uniform on both sides and left out of the mean
    bias = _key_bias(v)
    z = _relation_scores(_zero_invalid(s_x, m), num_relation_heads, bias, "student")
    log_p = torch.log_softmax(_relation_scores(_zero_invalid(t_x.detach(), m), num_relation_heads, bias, "teacher"), -1)
    rows = v.any(-1).float()  # [B, 1, L]: query rows with a valid key
    # mean over valid rows and relation heads, as _masked_mean
    return _RowKL.apply(z, log_p, rows / (rows.sum() * z.shape[1]).clamp_min(1))


# ---- registry --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossSpec:
    """A registered loss and what it needs from the term that calls it (the terms read these flags; no
    code compares loss names).

    ==================  ===========================================================================
    width_free          compares teacher and student of different widths without a projection
    needs_block_input   also takes each block's input: ``fn(s_in, s_out, t_in, t_out, mask)`` (FSP)
    distribution        compares probability distributions (KL / cross-entropy): attention scores
                        go through a masked softmax first, maps summed over heads are refused, and a
                        one-output regression head is matched by MSE instead
    temperature         takes ``temperature=`` and ``t2_scaling=`` (soft targets on logits)
    parameter           the name of its one shape parameter, passed by keyword (``beta``: JSD,
                        ``alpha``: skew KL); None: it has none
    ==================  ===========================================================================
    """

    fn: Callable[..., Tensor]
    width_free: bool = False
    needs_block_input: bool = False
    distribution: bool = False
    temperature: bool = False
    parameter: str | None = None


#: group -> loss name -> spec. Groups: ``logits``, ``hidden`` (embeddings and hidden states), ``attention``,
#: ``relation`` (MiniLM value relation and MiniLMv2 Q/K/V relations). Add a loss with :func:`register_loss`.
REGISTRY: dict[str, dict[str, LossSpec]] = {"logits": {}, "hidden": {}, "attention": {}, "relation": {}}


def register_loss(group: str, name: str, fn: Callable[..., Tensor], **needs: Any) -> LossSpec:
    """Register ``fn`` as loss ``name`` of ``group``; ``needs`` are the :class:`LossSpec` flags."""
    spec = LossSpec(fn, **needs)
    REGISTRY.setdefault(group, {})[name] = spec
    return spec


register_loss("logits", "soft_ce", soft_cross_entropy, distribution=True, temperature=True)
register_loss("logits", "kl", kl_div, distribution=True, temperature=True)
register_loss("logits", "mse", logits_mse)
# the token-level divergences of generative KD (unikd.divergences: direction and endpoints in its table)
register_loss("logits", "reverse_kl", D.reverse_kl, distribution=True, temperature=True)
register_loss("logits", "jsd", D.jsd, distribution=True, temperature=True, parameter="beta")
register_loss("logits", "tvd", D.tvd, distribution=True, temperature=True)
register_loss("logits", "skew_kl", D.skew_kl, distribution=True, temperature=True, parameter="alpha")
register_loss("logits", "skew_reverse_kl", D.skew_reverse_kl, distribution=True, temperature=True, parameter="alpha")
register_loss("hidden", "mse", hidden_mse)
register_loss("hidden", "cosine", cosine)
register_loss("hidden", "pkd", pkd)
register_loss("hidden", "gram", gram, width_free=True)
register_loss("hidden", "fsp", fsp, needs_block_input=True)
register_loss("hidden", "nst", nst, width_free=True)
register_loss("hidden", "mmd", mmd, width_free=True)
register_loss("attention", "mse", attention_mse)
register_loss("attention", "kl", attention_kl, distribution=True)
register_loss("attention", "ce", attention_ce, distribution=True)
register_loss("relation", "kl", relation_kl, distribution=True)


def _view(pick: Callable[[LossSpec], Any]) -> dict:
    return {group: {name: pick(spec) for name, spec in specs.items()} for group, specs in REGISTRY.items()}


#: ``LOSSES[group][name] -> fn``: the registry's functions (a view of :data:`REGISTRY`)
LOSSES: dict[str, dict[str, Callable[..., Tensor]]] = _view(lambda spec: spec.fn)
#: hidden-state losses that compare teacher and student of different widths without a projection
WIDTH_FREE_HIDDEN_LOSSES = {name for name, spec in REGISTRY["hidden"].items() if spec.width_free}


def loss_spec(group: str, name: str, field: str = "loss") -> LossSpec:
    """``REGISTRY[group][name]``, or a ConfigError naming ``field`` and listing the valid names."""
    if group not in REGISTRY:
        raise ConfigError(field, f"unknown knowledge group {group!r}", f"use one of {', '.join(sorted(REGISTRY))}")
    specs = REGISTRY[group]
    if name not in specs:
        raise ConfigError(
            field,
            f"unknown {group} loss {name!r}",
            f"use one of {', '.join(sorted(specs))}",
        )
    return specs[name]


def get_loss(group: str, name: str, field: str = "loss") -> Callable[..., Tensor]:
    """The function of ``loss_spec(group, name, field)``."""
    return loss_spec(group, name, field).fn
