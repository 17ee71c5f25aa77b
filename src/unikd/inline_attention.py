"""Inline attention maps: the model's attention implementation wrapped as an ``AttentionInterface`` entry
(``unikd_inline:sdpa`` / ``unikd_inline:eager``, registered with the wrapped one's mask function), so the layers a
``FeatureCapture`` is recording compute attention unfused once and hand it the very scaled Q·Kᵀ and pre-dropout
softmax of the forward; every other layer, and every call outside a capture, runs the wrapped implementation.

Its own room beside ``unikd.capture``: this is what touches transformers' attention dispatch, and nothing else does.
A capture registers its attention modules in ``INLINE_SLOTS``; the functions here find their capture through it and
call its ``_records_inline`` / ``_record_inline`` (they never import the capture module).
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from typing import Any

import torch
from torch import Tensor, nn

try:  # transformers >= 4.48: attention is dispatched through these registries
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
except ImportError:  # pragma: no cover - older transformers: recompute only
    ALL_ATTENTION_FUNCTIONS = ALL_MASK_ATTENTION_FUNCTIONS = None


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """[B, Hkv, L, d] -> [B, Hkv * n_rep, L, d], each KV head repeated for its query group (as HF)."""
    if n_rep == 1:
        return x
    b, h, length, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, length, d).reshape(b, h * n_rep, length, d)


INLINE_PREFIX = "unikd_inline:"
INLINE_BASES = ("sdpa", "eager")
# attention module -> (weak ref to its FeatureCapture, block index). Weak keys: a dropped model takes its
# entries with it. One capture per model: a second FeatureCapture on the same model takes its layers over.
INLINE_SLOTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def inline_attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, *, _base: str, **kwargs
):
    """An ``AttentionInterface`` function: ``_base`` for every layer but those a capture is recording.

    Those run the eager computation (same math and mask as HF eager attention; the softmax in fp32 as
    the recompute path does) and give the capture the scaled, unmasked Q·Kᵀ and the pre-dropout softmax.
    q: [B, H, Lq, d], k/v: [B, Hkv, Lk, d]; attention_mask in the ``_base`` implementation's format
    (bool keep-mask for SDPA, additive for eager, or None).
    """
    slot = INLINE_SLOTS.get(module)
    capture = slot[0]() if slot is not None else None
    if capture is None or not capture._records_inline(slot[1]):
        if _base == "eager":  # the model family's own eager function, as HF would have called it
            fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", eager_attention)
        else:
            fn = ALL_ATTENTION_FUNCTIONS[_base]
        return fn(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    return eager_attention(
        module,
        query,
        key,
        value,
        attention_mask,
        dropout=dropout,
        scaling=scaling,
        _record=(capture, slot[1]),
        **kwargs,
    )


def eager_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling=None,
    *,
    _record=None,
    is_causal=None,
    **kwargs,
):
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    # A teacher runs under inference_mode: build the maps outside it (still without grad) so that they are
    # normal tensors a loss can use, instead of inference tensors the capture would have to copy.
    grad_free = torch.is_inference_mode_enabled() and _record is not None
    with (
        torch.inference_mode(False) if grad_free else contextlib.nullcontext(),
        torch.no_grad() if grad_free else contextlib.nullcontext(),
    ):
        # Scale Q ([B, H, L, d]) rather than the scores ([B, H, L, L]): one full pass over the map less.
        raw = torch.matmul(query * scaling, key.transpose(-1, -2))
        scores = raw
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                scores = raw + to_additive(attention_mask, raw.dtype, _record[0] if _record else None)
            else:
                scores = raw + attention_mask[..., : key.shape[-2]]
        elif (is_causal if is_causal is not None else getattr(module, "is_causal", False)) and raw.shape[-2] > 1:
            # SDPA got no mask and relies on its is_causal flag (a causal batch without padding)
            lq, lk = raw.shape[-2:]
            allowed = torch.ones(lq, lk, dtype=torch.bool, device=raw.device).tril(lk - lq)
            scores = raw + to_additive(allowed, raw.dtype, None)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if _record is not None:
        _record[0]._record_inline(_record[1], raw, probs)
    weights = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, None


def to_additive(keep: Tensor, dtype: torch.dtype, capture: Any) -> Tensor:
    """``keep`` (bool, True = may attend) as HF eager's additive mask: 0, or ``finfo(dtype).min``.

    Adding it is what HF eager attention does. It is also the fast way on a CPU: ``masked_fill`` with a
    broadcast boolean mask has no vectorised CPU kernel and took ~5x an add over a [B, H, L, L] map.
    Inline: every layer of one forward gets the same mask tensor from the model, so ``capture`` keeps the
    last conversion for the rest of its call (emptied with its other per-call buffers). Recompute
    (``Features``) caches its own, per dtype and window, and passes None.
    """
    hit = capture._additive if capture is not None else None
    if hit is not None and hit[0] is keep and hit[1] == dtype:
        return hit[2]
    additive = torch.where(keep, torch.zeros((), dtype=dtype, device=keep.device), torch.finfo(dtype).min)
    if capture is not None:
        capture._additive = (keep, dtype, additive)
    return additive


def inline_name(base: str) -> str:
    """Register (once) and return the wrapper of attention implementation ``base`` ("sdpa" or "eager")."""
    name = INLINE_PREFIX + base
    if name not in ALL_ATTENTION_FUNCTIONS:

        def fn(*args, **kwargs):
            return inline_attention(*args, _base=base, **kwargs)

        ALL_ATTENTION_FUNCTIONS.register(name, fn)
        # the same masks the wrapped implementation gets (class-wide: masking_utils reads the global mapping)
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name
