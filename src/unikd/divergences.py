"""Token-level divergences between a teacher's and a student's next-token distributions (generative KD).

Each is a ``logits`` loss of ``unikd.losses.REGISTRY`` (registered there), for ``[B, L, V]`` token-level logits
(and ``[B, C]`` sequence-level ones alike). p is the teacher's distribution softmax(t / T), q the student's
softmax(s / T); every value is the mean over the scored rows of a sum over the vocabulary, times T² when
``t2_scaling``:

=====================  =====================================================  ====================================
loss name              per scored token                                       direction, as the papers name it
=====================  =====================================================  ====================================
``kl`` (losses.py)     KL(p ‖ q) = Σ p (log p − log q)                        forward KL (mode covering)
``reverse_kl``         KL(q ‖ p) = Σ q (log q − log p)                        reverse KL (mode seeking; MiniLLM)
``jsd`` (β)            β KL(p ‖ m) + (1 − β) KL(q ‖ m), m = β p + (1 − β) q   generalized JSD as TRL's GKD defines
                       β = 0: KL(p ‖ q) exactly; β = 1: KL(q ‖ p) exactly     it: β = 0 is forward KL, β = 1
                                                                              reverse KL (the endpoints are
                                                                              special-cased: the mixture form
                                                                              tends to 0 there, not to them)
``tvd``                ½ Σ |p − q|                                            total variation (DistillKit)
``skew_kl`` (α)        KL(p ‖ α p + (1 − α) q)                                skew KL (DistiLLM; α = 0: forward
                                                                              KL, α = 1: 0)
``skew_reverse_kl``    KL(q ‖ α q + (1 − α) p)                                skew reverse KL (DistiLLM; α = 0:
(α)                                                                           reverse KL)
=====================  =====================================================  ====================================

Only the scored rows are computed: ``mask`` [B, L] (1 = a scored token, e.g. a response token) selects them first,
so a prompt-heavy batch pays for its response tokens only, and masked rows (whatever they hold, even inf/nan)
reach neither the value nor the gradient. Teacher tensors are detached. A teacher logit of −inf (a vocabulary
entry the teacher never produces) gives p = 0, whose terms are 0 (0 · log 0 = 0); the reverse KL is then
infinite, as it is mathematically (the student puts mass where p = 0): the mixtures (jsd, skew) stay finite.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from unikd.errors import ConfigError

__all__ = ["jsd", "reverse_kl", "skew_kl", "skew_reverse_kl", "tvd"]


def _scored_log_probs(s: Tensor, t: Tensor, temperature: float, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """log q, log p over the scored rows only: ``[N, V]`` each (N = scored rows), float32."""
    if not temperature > 0:
        raise ConfigError("temperature", f"must be > 0, got {temperature}", "use e.g. 1.0 to 8.0")
    if s.shape != t.shape:
        raise ConfigError(
            "logits",
            f"student {tuple(s.shape)} and teacher {tuple(t.shape)} logits differ in shape",
            "give teacher and student the same vocabulary (or number of labels)",
        )
    rows = s.shape[:-1]
    if mask is not None and tuple(mask.shape) != tuple(rows):
        raise ConfigError(
            "mask",
            f"shape {tuple(mask.shape)} does not match the leading dims {tuple(rows)} of the logits",
            "pass a [B, L] mask (1 = scored token) for [B, L, V] logits, or no mask",
        )
    keep = torch.ones(rows, dtype=torch.bool, device=s.device) if mask is None else mask.to(s.device).bool()
    s_rows, t_rows = s[keep].float(), t.detach()[keep].float()
    return F.log_softmax(s_rows / temperature, dim=-1), F.log_softmax(t_rows / temperature, dim=-1)


def _kl_rows(log_a: Tensor, log_b: Tensor) -> Tensor:
    """[N] KL(a ‖ b) per row from log-probabilities; a = 0 entries count 0 (also where log b is −inf)."""
    a = log_a.exp()
    return torch.where(a > 0, a * (log_a - log_b), 0.0).sum(-1)


def _mean(rows: Tensor, s: Tensor, temperature: float, t2_scaling: bool) -> Tensor:
    """Mean over scored rows (0, still attached to the student, when none is scored), ×T² if t2_scaling."""
    value = rows.mean() if rows.numel() else s.sum() * 0.0
    return value * temperature**2 if t2_scaling else value


def _log_mix(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(w·a + (1 − w)·b) from log a, log b, for 0 < w < 1 (a logsumexp: no underflow)."""
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def _check_unit(value: float, name: str, closed: bool = True) -> None:
    ok = 0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0
    if not ok:
        interval = "[0, 1]" if closed else "[0, 1)"
        raise ConfigError(name, f"must lie in {interval}, got {value}", f"use a {name} in {interval}, e.g. 0.5")


# ---- per-row forms: [N, V] log q (student), log p (teacher) -> [N]; the losses below and unikd.chunked use them --
def kl_rows(log_q: Tensor, log_p: Tensor, _: float | None = None) -> Tensor:
    """Forward KL(p ‖ q) per row (``losses.kl_div``'s per-token value)."""
    return _kl_rows(log_p, log_q)


def soft_ce_rows(log_q: Tensor, log_p: Tensor, _: float | None = None) -> Tensor:
    """Soft cross-entropy −Σ p log q per row (``losses.soft_cross_entropy``'s per-token value)."""
    return -(log_p.exp() * log_q).sum(-1)


def reverse_kl_rows(log_q: Tensor, log_p: Tensor, _: float | None = None) -> Tensor:
    """Reverse KL(q ‖ p) per row."""
    return _kl_rows(log_q, log_p)


def jsd_rows(log_q: Tensor, log_p: Tensor, beta: float = 0.5) -> Tensor:
    """Generalized JSD per row, the endpoints exact (β = 0: KL(p ‖ q), β = 1: KL(q ‖ p))."""
    if beta == 0.0:
        return _kl_rows(log_p, log_q)
    if beta == 1.0:
        return _kl_rows(log_q, log_p)
    log_m = _log_mix(log_p, log_q, beta)
    return beta * _kl_rows(log_p, log_m) + (1.0 - beta) * _kl_rows(log_q, log_m)


def tvd_rows(log_q: Tensor, log_p: Tensor, _: float | None = None) -> Tensor:
    """½ Σ |p − q| per row."""
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


def skew_kl_rows(log_q: Tensor, log_p: Tensor, alpha: float = 0.1) -> Tensor:
    """KL(p ‖ α p + (1 − α) q) per row."""
    return _kl_rows(log_p, log_q if alpha == 0.0 else _log_mix(log_p, log_q, alpha))


def skew_reverse_kl_rows(log_q: Tensor, log_p: Tensor, alpha: float = 0.1) -> Tensor:
    """KL(q ‖ α q + (1 − α) p) per row."""
    return _kl_rows(log_q, log_p if alpha == 0.0 else _log_mix(log_q, log_p, alpha))


#: logits loss name -> its per-row form (each takes the loss's shape parameter, beta / alpha, or ignores it)
ROWS = {
    "kl": kl_rows,
    "soft_ce": soft_ce_rows,
    "reverse_kl": reverse_kl_rows,
    "jsd": jsd_rows,
    "tvd": tvd_rows,
    "skew_kl": skew_kl_rows,
    "skew_reverse_kl": skew_reverse_kl_rows,
}


def reverse_kl(
    s: Tensor, t: Tensor, temperature: float = 1.0, mask: Tensor | None = None, t2_scaling: bool = True
) -> Tensor:
    """Reverse KL(q ‖ p) = Σ q (log q − log p), q the student's distribution. s, t: [B, L, V] or [B, C];
    mask: [B, L] (1 = scored) or None. Returns a scalar."""
    log_q, log_p = _scored_log_probs(s, t, temperature, mask)
    return _mean(reverse_kl_rows(log_q, log_p), s, temperature, t2_scaling)


def jsd(
    s: Tensor,
    t: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    t2_scaling: bool = True,
    beta: float = 0.5,
) -> Tensor:
    """Generalized Jensen-Shannon divergence (GKD, TRL's ``generalized_jsd_loss``): β KL(p ‖ m) + (1 − β) KL(q ‖ m)
    with m = β p + (1 − β) q; β = 0 is forward KL(p ‖ q), β = 1 reverse KL(q ‖ p). s, t: [B, L, V];
    mask: [B, L]. Returns a scalar."""
    _check_unit(beta, "beta")
    log_q, log_p = _scored_log_probs(s, t, temperature, mask)
    return _mean(jsd_rows(log_q, log_p, beta), s, temperature, t2_scaling)


def tvd(s: Tensor, t: Tensor, temperature: float = 1.0, mask: Tensor | None = None, t2_scaling: bool = True) -> Tensor:
    """Total variation distance ½ Σ |p − q|. s, t: [B, L, V]; mask: [B, L]. Returns a scalar in [0, 1] (×T²)."""
    log_q, log_p = _scored_log_probs(s, t, temperature, mask)
    return _mean(tvd_rows(log_q, log_p), s, temperature, t2_scaling)


def _skewed(s: Tensor, t: Tensor, temperature, mask, t2_scaling, alpha: float, reverse: bool) -> Tensor:
    """KL(a ‖ α a + (1 − α) b) with (a, b) = (p, q), or (q, p) when ``reverse``."""
    _check_unit(alpha, "alpha", closed=False)
    log_q, log_p = _scored_log_probs(s, t, temperature, mask)
    rows = skew_reverse_kl_rows(log_q, log_p, alpha) if reverse else skew_kl_rows(log_q, log_p, alpha)
    return _mean(rows, s, temperature, t2_scaling)


def skew_kl(
    s: Tensor, t: Tensor, temperature: float = 1.0, mask: Tensor | None = None, t2_scaling: bool = True, alpha=0.1
) -> Tensor:
    """Skew KL (DistiLLM): KL(p ‖ α p + (1 − α) q); α = 0 is forward KL. s, t: [B, L, V]; mask: [B, L]."""
    return _skewed(s, t, temperature, mask, t2_scaling, alpha, reverse=False)


def skew_reverse_kl(
    s: Tensor, t: Tensor, temperature: float = 1.0, mask: Tensor | None = None, t2_scaling: bool = True, alpha=0.1
) -> Tensor:
    """Skew reverse KL (DistiLLM): KL(q ‖ α q + (1 − α) p); α = 0 is reverse KL. s, t: [B, L, V]; mask: [B, L]."""
    return _skewed(s, t, temperature, mask, t2_scaling, alpha, reverse=True)


#: the logit a position outside an extractive-QA window's context gets on both sides (softmax ~0, finite in fp16)
MASKED_SPAN_LOGIT = -1.0e4


def span_logits(start: Tensor, end: Tensor, context_mask: Tensor | None) -> Tensor:
    """An extractive-QA head's start and end logits [B, L] as 2B rows of a distribution over positions (the B start
    rows, then the B end rows), positions off the context (``context_mask`` 0: the question, padding) set to
    ``MASKED_SPAN_LOGIT``: the logits KD compares where an answer can be, as a sequence-level distribution."""
    rows = torch.cat([start, end], dim=0)
    if rows.is_inference():
        rows = rows.clone()
    if context_mask is not None:
        keep = torch.cat([context_mask, context_mask], dim=0).to(rows.device).bool()
        rows = rows.masked_fill(~keep, MASKED_SPAN_LOGIT)
    return rows


def output_logits(output, context_mask: Tensor | None = None) -> Tensor | None:
    """A model output's logits; an extractive-QA head's start and end logits as ``span_logits``' rows."""
    if getattr(output, "logits", None) is None and getattr(output, "start_logits", None) is not None:
        return span_logits(output.start_logits, output.end_logits, context_mask)
    return getattr(output, "logits", None)


def scored_positions(labels: Tensor | None, attention_mask: Tensor, *, causal: bool) -> Tensor:
    """[B, L] 1 where a token-level distribution is scored. Labels [B, L] (-100 = no label): an encoder's position i
    counts where ``labels[i]`` has one (MLM, NER); a decoder's where ``labels[i + 1]`` has one (position i predicts
    the next token; the last position predicts nothing labelled). Without labels: the real tokens."""
    if labels is None or labels.dim() != 2:
        return attention_mask
    has_label = (labels != -100).long()
    if not causal:
        return has_label
    return torch.cat([has_label[:, 1:], torch.zeros_like(has_label[:, :1])], dim=1)


#: a bucket's log mass is clamped here (a tail of 1e-30 or less is no tail; exact 0 would give 0 * -inf)
LOG_FLOOR = -69.0


def topk_divergence(
    s: torch.Tensor,
    topk: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    name: str,
    *,
    temperature: float,
    t2_scaling: bool = True,
    parameter: float | None = None,
) -> torch.Tensor:
    """The divergence ``name`` between the student's logits ``s`` [N, V] at the scored positions and the cached
    teacher (ids [N, k], log p [N, k], log tail [N]) over the k + 1 buckets (see the module docstring). A scalar."""
    if name not in ROWS:
        raise ConfigError("plan.terms", f"the {name} loss cannot read a top-k cache", f"use one of {', '.join(ROWS)}")
    ids, log_p_top, log_p_tail = topk
    if s.shape[0] == 0:
        return s.sum() * 0.0
    log_q = F.log_softmax(s.float() / temperature, dim=-1)
    log_q_top = log_q.gather(-1, ids)
    log_q_tail = torch.log(-torch.expm1(torch.logsumexp(log_q_top, dim=-1).clamp(max=-1e-7))).clamp(min=LOG_FLOOR)
    log_q_b = torch.cat([log_q_top, log_q_tail[:, None]], dim=-1)
    log_p_b = torch.cat([log_p_top, log_p_tail[:, None]], dim=-1)
    value = ROWS[name](log_q_b, log_p_b, parameter).mean()
    return value * temperature**2 if t2_scaling else value
