"""Feature capture: forward hooks that record only what a distillation plan needs.

``FeatureCapture(model, request)`` registers forward hooks on the modules the family adapter points
at (embedding output, block outputs, the final norm of decoders, the Q/K/V projections and, for
RoPE models, a pre-hook on the attention module that sees ``position_embeddings``). A call runs the
model once and returns a :class:`Features` holding just the requested tensors.

Attention maps come one of two ways (``attention=`` below), and nothing asks for ``output_attentions``:

- ``recompute``: the model keeps its attention implementation (SDPA, flash); scores and probabilities
  are recomputed on demand from the captured Q and K, only for the layers a loss asks for, with the
  same additive mask HF eager attention uses. Right where attention is fused (CUDA): the other layers
  keep the fused kernel, and the maps exist only while a loss uses them.
- ``inline``: the model's attention implementation is wrapped (``unikd_inline:<sdpa|eager>``, an
  ``AttentionInterface`` entry): the requested layers compute their attention once, unfused, and hand
  the very scores and probabilities the forward used to the capture; every other layer calls the
  wrapped implementation unchanged. Right where attention is not fused anyway (CPU training: attention
  dropout sends SDPA to its math path): it saves the second Q·Kᵀ product per matched layer and side.
- ``auto`` (default): inline on CPU, recompute elsewhere or where the implementation is neither SDPA nor eager.

The wrapper itself is ``unikd.inline_attention`` (the one room that touches transformers' attention
dispatch); this module holds the request, the hooks and the returned features.

Memory: hooks write into per-call buffers that are emptied when the call returns; the returned
``Features`` owns every tensor, so nothing accumulates over steps. Teacher forwards run under
``torch.inference_mode()`` and only the captured tensors are copied out to normal tensors.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from unikd.divergences import output_logits
from unikd.errors import ConfigError
from unikd.families import get_adapter

from unikd.inline_attention import (
    ALL_ATTENTION_FUNCTIONS,
    INLINE_BASES,
    INLINE_PREFIX,
    INLINE_SLOTS,
    inline_name,
    repeat_kv,
    to_additive,
)

__all__ = ["CaptureRequest", "Features", "FeatureCapture"]


# ---------------------------------------------------------------------------------------------------
# request
# ---------------------------------------------------------------------------------------------------
@dataclass
class CaptureRequest:
    """What to record. Block indices are 0..N-1; layers in ``attention`` imply their Q and K."""

    embeddings: bool = False
    hidden: set[int] = field(default_factory=set)
    qkv: set[int] = field(default_factory=set)
    attention: set[int] = field(default_factory=set)
    #: which maps of the ``attention`` layers a loss reads: "scores" (pre-softmax), "probs" or both.
    #: Inline capture keeps only these alive; recompute serves either on demand.
    attention_maps: set[str] = field(default_factory=lambda: {"scores", "probs"})

    def __post_init__(self):
        self.hidden = set(self.hidden)
        self.qkv = set(self.qkv)
        self.attention = set(self.attention)
        self.attention_maps = set(self.attention_maps)

    def merge(self, other: CaptureRequest) -> CaptureRequest:
        """The union of two requests (a new object; neither input is changed)."""
        return CaptureRequest(
            embeddings=self.embeddings or other.embeddings,
            hidden=self.hidden | other.hidden,
            qkv=self.qkv | other.qkv,
            attention=self.attention | other.attention,
            attention_maps=self.attention_maps | other.attention_maps,
        )

    def validate(self, num_layers: int) -> None:
        """Raise ``ConfigError`` naming ``capture.<field>`` for a layer index outside 0..N-1."""
        for name in ("hidden", "qkv", "attention"):
            bad = sorted(
                (
                    i
                    for i in getattr(self, name)
                    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers
                ),
                key=repr,
            )
            if bad:
                raise ConfigError(
                    f"capture.{name}",
                    f"layer index {bad} out of range for a model with {num_layers} blocks",
                    f"use block indices 0..{num_layers - 1} (the embedding output is `embeddings`)",
                )
        unknown = sorted(self.attention_maps - {"scores", "probs"})
        if unknown:
            raise ConfigError(
                "capture.attention_maps", f"unknown attention map {unknown}", "use 'scores' and/or 'probs'"
            )


# ---------------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Features:
    """The tensors one forward pass recorded (see ``docs/design.md``), built by keyword; what a pass did not record
    is left at its empty default.

    ``q``/``k``/``v`` are [B, H, L, d] (K/V with the KV head count; Q/K after RoPE), ``hidden[i]`` and
    ``embeddings`` [B, L, D], ``logits`` [B, C], [B, L, V] or QA's [2B, L], ``attention_mask`` [B, L] (1 = real).
    """

    attention_mask: Tensor
    causal: bool = False
    embeddings: Tensor | None = None
    hidden: dict[int, Tensor] = field(default_factory=dict)
    q: dict[int, Tensor] = field(default_factory=dict)
    k: dict[int, Tensor] = field(default_factory=dict)
    v: dict[int, Tensor] = field(default_factory=dict)
    logits: Tensor | None = None
    #: a token top-k cache's teacher (``unikd.token_cache``): (ids [N, k], log p [N, k], log tail [N]) over the
    #: batch's scored positions, in place of ``logits``
    topk: tuple[Tensor, Tensor, Tensor] | None = None
    scalings: dict[int, float] = field(default_factory=dict)
    output: Any = None
    #: layer -> causal sliding window (Mistral / windowed Qwen2 layers); absent = full attention
    sliding_windows: dict[int, int] = field(default_factory=dict)
    #: inline capture: layer -> the unmasked scaled Q·Kᵀ [B, H, L, L] and the softmax the forward computed
    #: (pre-dropout), exactly the tensors in the model's graph
    inline_scores: dict[int, Tensor] = field(default_factory=dict)
    inline_probs: dict[int, Tensor] = field(default_factory=dict)
    # layer -> weak reference: a map is reused while anyone (the caller, autograd) holds it and freed as
    # soon as nobody does, instead of living [B, H, L, L] per layer until the Features is dropped
    _scores: dict[int, weakref.ref] = field(default_factory=dict, repr=False)
    _probs: dict[int, weakref.ref] = field(default_factory=dict, repr=False)
    _masks: dict[tuple, Tensor] = field(default_factory=dict, repr=False)

    @property
    def scaling(self) -> float:
        """The attention scale when it is the same for every captured layer (else use ``scalings``)."""
        values = set(self.scalings.values())
        if len(values) != 1:
            raise ValueError(
                f"attention scaling differs per layer or is unknown: {self.scalings}; use `scalings[layer]`"
            )
        return values.pop()

    def _additive_mask(self, dtype: torch.dtype, device: torch.device, window: int | None) -> Tensor:
        """[B, 1, L, L]: 0 where a query may attend, ``finfo(dtype).min`` elsewhere (as HF eager)."""
        key = (dtype, device, window)
        mask = self._masks.get(key)
        if mask is None:
            keep = self.attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]  # [B, 1, 1, Lk]
            if self.causal:
                length = keep.shape[-1]
                pos = torch.arange(length, device=device)
                allowed = pos[None, :] <= pos[:, None]  # [Lq, Lk]: key at or before the query
                if window is not None:
                    allowed = allowed & (pos[None, :] > pos[:, None] - window)
                keep = keep & allowed
            mask = to_additive(keep, dtype, None)
            self._masks[key] = mask
        return mask

    def _raw_scores(self, layer: int) -> Tensor:
        if layer in self.inline_scores:
            return self.inline_scores[layer]
        if layer not in self.q or layer not in self.k:
            raise KeyError(
                f"attention scores for layer {layer} were not captured; add the layer to CaptureRequest.attention "
                f"and 'scores' to its attention_maps (captured: Q/K {sorted(self.q)}, inline scores "
                f"{sorted(self.inline_scores)}, inline probabilities {sorted(self.inline_probs)})"
            )
        q, k = self.q[layer], self.k[layer]
        if k.dtype != q.dtype:
            k = k.to(q.dtype)
        k = repeat_kv(k, q.shape[1] // k.shape[1])
        # Scale Q ([B, H, L, d]) rather than the scores ([B, H, L, L]): the same product (HF eager scales
        # the scores; the results agree to rounding), one fewer full pass over the L x L map forward and
        # in backward.
        return torch.matmul(q * self.scalings[layer], k.transpose(-1, -2))

    def _compute_scores(self, layer: int) -> Tensor:
        scores = self._raw_scores(layer)
        return scores + self._additive_mask(scores.dtype, scores.device, self.sliding_windows.get(layer))

    def release_attention(self, layer: int) -> None:
        """Drop every attention map of ``layer`` this object holds (autograd keeps what backward needs)."""
        for store in (self.inline_scores, self.inline_probs, self._scores, self._probs):
            store.pop(layer, None)

    @staticmethod
    def _cached(cache: dict[int, weakref.ref], layer: int) -> Tensor | None:
        ref = cache.get(layer)
        return ref() if ref is not None else None

    def attention_scores(self, layer: int, masked: bool = True) -> Tensor:
        """[B, H, L, L] pre-softmax scores (scaled, with the additive padding/causal mask).

        ``masked=False`` skips the additive mask - one pass over the L x L map less - for callers that
        select the valid pairs themselves (the attention losses do); those results are not cached.

        Cached while referenced: a second call returns the same tensor as long as the first result is
        still alive; once every user has dropped it, its memory is freed and a later call recomputes it.
        """
        if not masked:
            return self._raw_scores(layer)
        scores = self._cached(self._scores, layer)
        if scores is None:
            scores = self._compute_scores(layer)
            self._scores[layer] = weakref.ref(scores)
        return scores

    def attention_probs(self, layer: int) -> Tensor:
        """[B, H, L, L] softmax of ``attention_scores(layer)`` (computed in fp32, returned in Q's dtype).

        Cached while referenced, like ``attention_scores``.
        """
        if layer in self.inline_probs:
            return self.inline_probs[layer]
        probs = self._cached(self._probs, layer)
        if probs is None:
            scores = self._cached(self._scores, layer)
            if scores is None:  # do not keep the scores alive when only the probabilities are asked for
                scores = self._compute_scores(layer)
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
            self._probs[layer] = weakref.ref(probs)
        return probs


# ---------------------------------------------------------------------------------------------------
# capture
# ---------------------------------------------------------------------------------------------------
def _unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


class FeatureCapture:
    """Hooks on one model that record a :class:`CaptureRequest` on every call.

    ``model`` is what gets called (it may be wrapped by DDP or ``torch.compile``); the hooks are placed
    on the Hugging Face model inside. Hooks are registered once per module, lazily, the first time a
    request names its layer; ``set_request`` switches what is recorded without touching them.
    ``forward_fn`` (default: ``model``) is the callable a capture call runs; set it to the wrapped model
    when the hooks were placed before ``accelerator.prepare`` so that gradients synchronize.

    ``attention`` says how attention maps are obtained: "inline", "recompute" or "auto" (see the module
    docstring). Auto decides at the first call that records attention, from the device the model is on
    then. Inline switches the model to the wrapping implementation for as long as the capture lives;
    ``remove()`` switches it back.
    """

    def __init__(self, model: nn.Module, request: CaptureRequest | None = None, *, attention: str = "auto"):
        if attention not in ("auto", "inline", "recompute"):
            raise ConfigError(
                "train.attention_capture", f"unknown attention capture {attention!r}", "use auto, inline or recompute"
            )
        self.model = model
        self.forward_fn = model
        self.core = core = _unwrap(model)
        self.adapter = adapter = get_adapter(core)
        self.config = core.config
        self.spec = adapter.spec(core.config)
        self.num_layers = self.spec.num_layers
        self.head_dim = self.spec.head_dim
        self.causal = bool(adapter.is_decoder)
        self._blocks = adapter.blocks(core)
        self._final_norm = adapter.final_norm(core)
        self._scalings = [float(adapter.attention_scaling(core.config, i)) for i in range(self.num_layers)]
        self._windows = [adapter.sliding_window(core.config, i) for i in range(self.num_layers)]

        params = inspect.signature(core.forward).parameters
        self._accepted = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        self._no_cache = "use_cache" in self._accepted  # decoders would otherwise build a KV cache per step

        self.attention_mode = attention  # "inline" / "recompute" once decided
        impl = getattr(core.config, "_attn_implementation", None)
        # a model another capture has wrapped already: the implementation underneath
        self._base_attention = impl.removeprefix(INLINE_PREFIX) if isinstance(impl, str) else impl
        self._inline_set = False

        self._handles: list = []
        self._hooked: set = set()
        # what is recorded (swapped by set_request) and whether a capture call is running
        self._recording = False
        self._want_embeddings = False
        self._want_hidden: frozenset[int] = frozenset()
        self._want_qk: frozenset[int] = frozenset()
        self._want_v: frozenset[int] = frozenset()
        self._want_att: frozenset[int] = frozenset()
        self._keep_scores = self._keep_probs = False
        self.request = CaptureRequest()
        # per-call buffers, emptied when each call returns
        self._emb: list = []
        self._hidden: dict[int, Tensor] = {}
        self._q: dict[int, Tensor] = {}
        self._k: dict[int, Tensor] = {}
        self._v: dict[int, Tensor] = {}
        self._fused: dict[int, Tensor] = {}
        self._rotary: dict[int, dict] = {}
        self._att_scores: dict[int, Tensor] = {}
        self._att_probs: dict[int, Tensor] = {}
        self._additive: tuple[Tensor, torch.dtype, Tensor] | None = None  # this call's mask, as added (inline)
        #: inline capture only: called with (layer, scores, probs) as each recorded layer runs; returning True
        #: means the maps were used up there and are not kept in the Features
        self.on_inline: Callable[[int, Tensor, Tensor], bool] | None = None
        self.set_request(request)

    # ---- request / hooks ---------------------------------------------------------------------
    def set_request(self, request: CaptureRequest | None) -> None:
        """Change what is recorded; hooks for layers never requested before are added, none re-added."""
        request = request if request is not None else CaptureRequest()
        request.validate(self.num_layers)
        self.request = request
        # "auto" places nothing for attention layers yet: the first call decides, once the model sits on
        # the device it trains on (the trainer builds captures before accelerate moves the models)
        inline = self.attention_mode == "inline"
        qk = frozenset(request.qkv | (request.attention if self.attention_mode == "recompute" else set()))
        self._ensure_hooks(request, qk)
        if inline and request.attention:
            self._ensure_inline(request.attention)
        self._want_embeddings = bool(request.embeddings)
        self._want_hidden = frozenset(request.hidden)
        self._want_qk = qk
        self._want_v = frozenset(request.qkv)
        self._want_att = frozenset(request.attention) if inline else frozenset()
        self._keep_scores = "scores" in request.attention_maps
        self._keep_probs = "probs" in request.attention_maps

    # ---- inline attention --------------------------------------------------------------------
    def _auto_mode(self) -> str:
        param = next(self.core.parameters(), None)
        on_cpu = param is None or param.device.type == "cpu"
        return "inline" if on_cpu and self._inline_supported() is None else "recompute"

    def _inline_supported(self) -> str | None:
        """None when inline capture works for this model, else why not."""
        if ALL_ATTENTION_FUNCTIONS is None:
            return "this transformers version has no AttentionInterface"
        base = self._base_attention
        if base not in INLINE_BASES:
            return f"the model runs attention implementation {base!r}; inline capture wraps only {list(INLINE_BASES)}"
        if not getattr(self.core, "_can_set_attn_implementation", lambda: False)():
            return f"{type(self.core).__name__} cannot switch its attention implementation"
        return None

    def _ensure_inline(self, layers) -> None:
        if not self._inline_set:
            why = self._inline_supported()
            if why is not None:
                raise ConfigError(
                    "train.attention_capture",
                    f"inline attention capture is not possible: {why}",
                    "use attention_capture: recompute (or auto)",
                )
            name = inline_name(self._base_attention)
            if self.core.config._attn_implementation != name:
                self.core.set_attn_implementation(name)
            self._inline_set = True
        for i in layers:
            module = self.adapter.attention_module(self._blocks[i])
            INLINE_SLOTS[module] = (weakref.ref(self), i)

    def _records_inline(self, layer: int) -> bool:
        return self._recording and layer in self._want_att

    def _record_inline(self, layer: int, raw: Tensor, probs: Tensor) -> None:
        if self.on_inline is not None and self.on_inline(layer, raw, probs):
            return  # consumed where it was made (DistillationPlan.inline_consumer): nothing is held
        if self._keep_scores:
            self._att_scores[layer] = raw
        if self._keep_probs:
            self._att_probs[layer] = probs

    def _ensure_hooks(self, request: CaptureRequest, qk: frozenset[int]) -> None:
        if request.embeddings and "emb" not in self._hooked:
            self._add(self.adapter.embedding_module(self.core).register_forward_hook(self._embedding_hook))
            self._hooked.add("emb")
        for i in sorted(request.hidden):
            if ("hidden", i) not in self._hooked:
                module = self._blocks[i]
                if i == self.num_layers - 1 and self._final_norm is not None:
                    module = self._final_norm  # decoders: the last hidden state is after the final norm
                self._add(module.register_forward_hook(self._hidden_hook(i)))
                self._hooked.add(("hidden", i))
        for i in sorted(qk):
            if ("qkv", i) not in self._hooked:
                block = self._blocks[i]
                modules = self.adapter.qkv_modules(block)
                if "qkv" in modules:
                    self._add(modules["qkv"].register_forward_hook(self._fused_hook(i)))
                else:
                    self._add(modules["q"].register_forward_hook(self._proj_hook(i, self._q, False)))
                    self._add(modules["k"].register_forward_hook(self._proj_hook(i, self._k, False)))
                    self._add(modules["v"].register_forward_hook(self._proj_hook(i, self._v, True)))
                rotary = self.adapter.rotary_module(block)
                if rotary is not None:
                    self._add(rotary.register_forward_pre_hook(self._rotary_hook(i), with_kwargs=True))
                self._hooked.add(("qkv", i))

    def _add(self, handle) -> None:
        self._handles.append(handle)

    # The hooks: a flag check and a set lookup, nothing else on the forward path.
    def _embedding_hook(self, module, args, output):
        if self._recording and self._want_embeddings:
            self._emb.append(_first(output))

    def _hidden_hook(self, i: int):
        def hook(module, args, output):
            if self._recording and i in self._want_hidden:
                self._hidden[i] = _first(output)

        return hook

    def _proj_hook(self, i: int, store: dict, is_v: bool):
        def hook(module, args, output):
            if self._recording and i in (self._want_v if is_v else self._want_qk):
                store[i] = output

        return hook

    def _fused_hook(self, i: int):
        def hook(module, args, output):
            if self._recording and (i in self._want_qk or i in self._want_v):
                self._fused[i] = output

        return hook

    def _rotary_hook(self, i: int):
        def hook(module, args, kwargs):
            if self._recording and i in self._want_qk:
                self._rotary[i] = kwargs

        return hook

    # ---- the call ----------------------------------------------------------------------------
    def _clear(self) -> None:
        self._emb.clear()
        self._hidden.clear()
        self._q.clear()
        self._k.clear()
        self._v.clear()
        self._fused.clear()
        self._rotary.clear()
        self._att_scores.clear()
        self._att_probs.clear()
        self._additive = None

    def _heads(self, x: Tensor) -> Tensor:
        """[B, L, H*d] -> [B, H, L, d] (a view)."""
        return x.view(*x.shape[:-1], -1, self.head_dim).transpose(1, 2)

    def __call__(self, batch: dict, *, teacher=False, autocast_dtype: torch.dtype | None = None, copy_out=True):
        """Run the model on ``batch`` (a dict of model inputs) and return the requested features.

        Keys the model's ``forward`` does not name are dropped. ``teacher=True`` runs under ``torch.inference_mode()``
        and returns normal tensors without grad (``copy_out=False``: inference tensors, for a pass that only stores
        them, no [B, L, V] copy); otherwise tensors keep their graph. ``autocast_dtype``: under ``torch.autocast``.
        """
        if self.attention_mode == "auto" and self.request.attention:
            self.attention_mode = self._auto_mode()
            self.set_request(self.request)
        inputs = {k: v for k, v in batch.items() if k in self._accepted}
        if self._no_cache and "use_cache" not in inputs:
            inputs["use_cache"] = False
        attention_mask = self.mask_of(batch)

        with contextlib.ExitStack() as stack:
            if teacher:
                stack.enter_context(torch.inference_mode())
            if autocast_dtype is not None:
                device_type = next(self.core.parameters()).device.type
                stack.enter_context(torch.autocast(device_type=device_type, dtype=autocast_dtype))
            self._clear()
            self._recording = True
            try:
                output = self.forward_fn(**inputs)
            except BaseException:
                self._clear()
                raise
            finally:
                self._recording = False

        # Outside inference mode: reshape, split, rotate, and (teacher) copy out the kept tensors.
        try:
            with torch.no_grad() if teacher else contextlib.nullcontext():
                features = self._collect(output, attention_mask, teacher and copy_out, batch.get("context_mask"))
        finally:
            self._clear()
        return features

    @staticmethod
    def mask_of(batch: dict) -> Tensor:
        """The batch's [B, L] attention mask (1 = real token), all ones when it has none."""
        attention_mask = batch.get("attention_mask")
        if attention_mask is None:
            ref = batch.get("input_ids")
            shape = ref.shape if ref is not None else batch["inputs_embeds"].shape[:2]
            device = (ref if ref is not None else batch["inputs_embeds"]).device
            attention_mask = torch.ones(shape, dtype=torch.long, device=device)
        return attention_mask

    @property
    def sliding_windows(self) -> dict[int, int]:
        """Block index -> causal sliding window, for the windowed layers only."""
        return {i: w for i, w in enumerate(self._windows) if w is not None}

    def _collect(self, output, attention_mask: Tensor, teacher: bool, context_mask: Tensor | None = None) -> Features:
        own = (lambda t: t.clone() if t is not None and t.is_inference() else t) if teacher else (lambda t: t)

        q, k, v = {}, {}, {}
        for i, fused in self._fused.items():
            parts = self.adapter.split_fused_qkv(self._blocks[i], fused)
            if i in self._want_qk:
                q[i], k[i] = self._heads(parts[0]), self._heads(parts[1])
            if i in self._want_v:
                v[i] = self._heads(parts[2])
        for i, t in self._q.items():
            q[i] = self._heads(t)
        for i, t in self._k.items():
            k[i] = self._heads(t)
        for i, t in self._v.items():
            v[i] = self._heads(t)
        for i, kwargs in self._rotary.items():
            if i in q and i in k:
                # a functional op on inference tensors outside inference mode returns a normal tensor
                q[i], k[i] = self.adapter.apply_rotary(q[i], k[i], kwargs)

        logits = output_logits(output, context_mask)  # a QA head's: its span rows (unikd.divergences)
        if teacher and logits is not None and logits.is_inference():
            logits = logits.clone()
            with contextlib.suppress(Exception):
                output.logits = logits  # keep one copy, not an inference twin alongside it

        layers = q.keys() | v.keys() | self._att_scores.keys() | self._att_probs.keys()
        return Features(
            embeddings=own(self._emb[-1]) if self._emb else None,
            hidden={i: own(t) for i, t in sorted(self._hidden.items())},
            q={i: own(t) for i, t in sorted(q.items())},
            k={i: own(t) for i, t in sorted(k.items())},
            v={i: own(t) for i, t in sorted(v.items())},
            logits=logits,
            attention_mask=attention_mask,
            causal=self.causal,
            scalings={i: self._scalings[i] for i in sorted(layers)},
            output=output,
            sliding_windows={i: self._windows[i] for i in sorted(layers) if self._windows[i] is not None},
            inline_scores=dict(sorted(self._att_scores.items())),
            inline_probs=dict(sorted(self._att_probs.items())),
        )

    # ---- lifetime ----------------------------------------------------------------------------
    def remove(self) -> None:
        """Remove every hook and drop any buffered tensor."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._hooked.clear()
        self._clear()
        if self._inline_set:
            shared = False
            for module, (ref, _) in list(INLINE_SLOTS.items()):
                owner = ref()
                if owner is self:
                    del INLINE_SLOTS[module]
                elif owner is not None and owner.core is self.core:
                    shared = True
            if not shared:  # the last inline capture on this model puts its implementation back
                self.core.set_attn_implementation(self._base_attention)
            self._inline_set = False

    def __enter__(self) -> FeatureCapture:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
