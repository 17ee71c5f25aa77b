"""Token-level divergences over chunks of scored tokens: the memory wall of large vocabularies.

A decoder's token-level KD holds, for N scored tokens and a vocabulary V, the student's and the teacher's logits
[N, V] and, for the backward pass, every fp32 intermediate the divergence makes of them (both log-softmaxes, their
exponentials, a mixture for JSD): several [N, V] fp32 tensors, 2.49 GB each at N = 4,096 and V = 151,936. Here the
loss is computed ``chunk`` rows at a time and each chunk's gradient is taken at once, inside the forward pass
(Liger-Kernel's and torchtune's scheme), so only one chunk's intermediates exist at a time and the backward pass
multiplies the stored gradient by the incoming one:

=========================  ===================================================================================
function                   holds for the backward pass
=========================  ===================================================================================
``chunked_divergence``     the gradient w.r.t. the student logits, [N, V] in their dtype (the unchunked loss
                           holds that and its fp32 intermediates)
``fused_linear_divergence``  the gradients w.r.t. the student's last hidden states [N, d] and its output
                           projection [V, d] (+ bias): the student's [N, V] logits are never stored, and the
                           teacher's are made per chunk too when given as (hidden, weight, bias)
``fused_linear_cross_entropy``  the same, for the next-token cross-entropy to the labels (the hard-label loss
                           of a fused step, ``train.fused_output_projection``)
=========================  ===================================================================================

Values and gradients equal the unchunked losses of ``unikd.divergences`` / ``unikd.losses`` (the same per-row
functions, ``divergences.ROWS``; tests/test_chunked.py: 1e-5 relative), mean over the N rows, ×T² with
``t2_scaling``. The rows passed are the scored ones already (``knowledge.logits`` selects them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from unikd.divergences import ROWS
from unikd.errors import ConfigError

Teacher = Tensor | tuple[Tensor, Tensor, Tensor | None]


def _check(name: str, chunk: int, temperature: float) -> Callable:
    if name not in ROWS:
        raise ConfigError("loss", f"{name!r} has no chunked form", f"use one of {', '.join(ROWS)}")
    if chunk < 1:
        raise ConfigError("train.logits_chunk_tokens", f"must be >= 1, got {chunk}", "use e.g. 1024")
    if not temperature > 0:
        raise ConfigError("temperature", f"must be > 0, got {temperature}", "use e.g. 1.0 to 8.0")
    return ROWS[name]


def _teacher_log_probs(teacher: Teacher, rows: slice, temperature: float) -> Tensor:
    """The teacher's log-probabilities of one chunk, from its logits or (hidden, weight, bias), without a graph."""
    with torch.no_grad():
        if isinstance(teacher, tuple):
            hidden, weight, bias = teacher
            logits = F.linear(hidden[rows], weight, bias)
        else:
            logits = teacher[rows]
        return F.log_softmax(logits.float() / temperature, dim=-1)


class _ChunkedDivergence(torch.autograd.Function):
    """x: student logits [N, V] (``weight`` None) or last hidden states [N, d] with the output projection
    ``weight`` [V, d] and ``bias`` [V] | None; ``target(rows)``: what ``rows_fn`` compares a chunk's student
    log-probabilities with (the teacher's log-probabilities, or the labels' ids). Returns the mean of ``rows_fn``;
    the gradients come from the forward."""

    @staticmethod
    def forward(ctx, x, weight, bias, target, rows_fn, parameter, chunk, temperature, scale):
        n = x.shape[0]
        grad_x = torch.zeros_like(x)
        grad_w = torch.zeros_like(weight) if weight is not None else None
        grad_b = torch.zeros_like(bias) if bias is not None else None
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        for start in range(0, n, chunk):
            rows = slice(start, min(start + chunk, n))
            log_p = target(rows)
            with torch.enable_grad():
                x_c = x[rows].detach().requires_grad_(True)
                leaves = [x_c]
                if weight is not None:
                    w = weight.detach().requires_grad_(True)
                    b = bias.detach().requires_grad_(True) if bias is not None else None
                    leaves += [w] + ([b] if b is not None else [])
                    logits = F.linear(x_c, w, b)
                else:
                    logits = x_c
                log_q = F.log_softmax(logits.float() / temperature, dim=-1)
                value = rows_fn(log_q, log_p, parameter).sum()
                grads = torch.autograd.grad(value, leaves)
            total += value.detach()
            grad_x[rows] = grads[0]
            if weight is not None:
                grad_w += grads[1]
                if bias is not None:
                    grad_b += grads[2]
        factor = scale / max(n, 1)
        ctx.save_for_backward(
            grad_x * factor,
            grad_w * factor if grad_w is not None else None,
            grad_b * factor if grad_b is not None else None,
        )
        return total * factor

    @staticmethod
    def backward(ctx, grad_out):
        grad_x, grad_w, grad_b = ctx.saved_tensors
        scaled = [None if g is None else g * grad_out.to(g.dtype) for g in (grad_x, grad_w, grad_b)]
        return (*scaled, None, None, None, None, None, None)


def chunked_divergence(
    s: Tensor,
    t: Tensor,
    name: str = "kl",
    *,
    temperature: float = 1.0,
    chunk: int = 1024,
    t2_scaling: bool = True,
    parameter: float | None = None,
) -> Tensor:
    """The divergence ``name`` (a ``divergences.ROWS`` key) between student logits ``s`` [N, V] and teacher logits
    ``t`` [N, V] (detached), ``chunk`` rows at a time; ``parameter``: beta (jsd) / alpha (skew). A scalar."""
    rows_fn = _check(name, chunk, temperature)
    if s.shape != t.shape:
        raise ConfigError("logits", f"student {tuple(s.shape)} and teacher {tuple(t.shape)} differ", "same vocabulary")
    scale = temperature**2 if t2_scaling else 1.0
    t = t.detach()
    target = functools.partial(_teacher_log_probs, t, temperature=temperature)
    return _ChunkedDivergence.apply(s, None, None, target, rows_fn, parameter, chunk, temperature, scale)


def fused_linear_divergence(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    teacher: Teacher,
    name: str = "kl",
    *,
    temperature: float = 1.0,
    chunk: int = 1024,
    t2_scaling: bool = True,
    parameter: float | None = None,
) -> Tensor:
    """The divergence between the student's logits ``hidden @ weight.T + bias`` (hidden [N, d], weight [V, d]),
    computed per chunk and never stored whole, and the teacher's: logits [N, V], or (hidden [N, d_t], weight
    [V, d_t], bias) applied per chunk too. Gradients reach ``hidden``, ``weight`` and ``bias``. A scalar."""
    rows_fn = _check(name, chunk, temperature)
    vocab = weight.shape[0]
    t_vocab = teacher[1].shape[0] if isinstance(teacher, tuple) else teacher.shape[-1]
    if t_vocab != vocab:
        raise ConfigError("logits", f"student vocabulary {vocab} and teacher {t_vocab} differ", "same vocabulary")
    if isinstance(teacher, tuple):
        teacher = tuple(x.detach() if x is not None else None for x in teacher)
    else:
        teacher = teacher.detach()
    scale = temperature**2 if t2_scaling else 1.0
    target = functools.partial(_teacher_log_probs, teacher, temperature=temperature)
    return _ChunkedDivergence.apply(hidden, weight, bias, target, rows_fn, parameter, chunk, temperature, scale)


def _cross_entropy_rows(log_q: Tensor, targets: Tensor, parameter=None) -> Tensor:
    """Each row's cross-entropy to its target id: -log q(target)."""
    return -log_q.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def fused_linear_cross_entropy(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, *, chunk: int = 1024
) -> Tensor:
    """The mean cross-entropy of the logits ``hidden @ weight.T + bias`` (hidden [N, d], weight [V, d]) to
    ``targets`` [N] (token ids), ``chunk`` rows at a time: the [N, V] logits are never stored whole (Liger-Kernel's
    fused linear cross-entropy, in PyTorch). Equals ``F.cross_entropy(F.linear(hidden, weight, bias), targets)``
    in value and gradients. A scalar."""
    if chunk < 1:
        raise ConfigError("train.logits_chunk_tokens", f"must be >= 1, got {chunk}", "use e.g. 1024")
    targets = targets.long()
    return _ChunkedDivergence.apply(
        hidden, weight, bias, targets.__getitem__, _cross_entropy_rows, None, chunk, 1.0, 1.0
    )
