"""Which of the teacher's weights a student keeps, and copying them into it: the kept blocks, and within them the
leading (``slice``) or most active (``importance``, Minitron-style) hidden channels, heads (grouped by KV head for
GQA) and FFN neurons, in their original order; ``copy_weights`` writes the teacher's kept rows and columns into the
student, per the family adapter's axes (``block_param_dims`` / ``outer_param_dims``). ``unikd.initialization``'s
initializers call these; the copy never changes the teacher.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from unikd.errors import ConfigError
from unikd.families import get_adapter
from unikd.student import INIT_FIELD, ResolvedShape


def shape_of(config_or_shape) -> ResolvedShape:
    """The widths and depth of a config, a model or a ``ResolvedShape`` (returned as it is)."""
    if isinstance(config_or_shape, ResolvedShape):
        return config_or_shape
    config = getattr(config_or_shape, "config", config_or_shape)
    adapter = get_adapter(config)
    spec = adapter.spec(config)
    return ResolvedShape(
        num_layers=spec.num_layers,
        hidden_size=spec.hidden_size,
        num_heads=spec.num_heads,
        num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        ffn_size=adapter.ffn_size(config),
    )


# ---------------------------------------------------------------------------------------------
# Which teacher rows/columns the student keeps
# ---------------------------------------------------------------------------------------------
@dataclass
class KeepIndices:
    """What the student keeps of the teacher; all indices point into the teacher and increase."""

    layers: list[int]  # teacher block of each student block
    hidden: torch.Tensor  # hidden channels [student hidden]
    heads: list[list[int]]  # per student block: teacher query heads
    kv_heads: list[list[int]]  # per student block: teacher key/value heads
    ffn: list[torch.Tensor]  # per student block: FFN neurons
    head_dims: torch.Tensor  # dims kept inside each head


def _top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k largest scores (ties: lower index first), in increasing order."""
    order = torch.sort(scores.float().cpu(), descending=True, stable=True).indices
    return sorted(order[:k].tolist())


def _leading(n: int) -> torch.Tensor:
    return -torch.arange(n, dtype=torch.float32)  # scores that make _top pick the leading indices


def _select_heads(t: ResolvedShape, s: ResolvedShape, scores: torch.Tensor) -> tuple[list[int], list[int]]:
    """Kept (query heads, kv heads). Under GQA, whole KV groups are kept and the student's query heads
    are taken inside them, so every kept query head keeps its own key/value head."""
    g_t, g_s = t.num_heads // t.num_kv_heads, s.num_heads // s.num_kv_heads
    kv_scores = scores.float().view(t.num_kv_heads, g_t).sum(1)
    kv = _top(kv_scores, s.num_kv_heads)
    if g_s <= g_t:
        q = [g * g_t + j for g in kv for j in _top(scores[g * g_t : (g + 1) * g_t], g_s)]
    else:  # the student groups more query heads per KV head than the teacher: rank them separately
        q = _top(scores, s.num_heads)
    return q, kv


def _head_dims(adapter, t: ResolvedShape, s: ResolvedShape) -> torch.Tensor:
    if s.head_dim == t.head_dim:
        return torch.arange(t.head_dim)
    if adapter.rotary_half_split:  # RoPE pairs dim j with j + d/2: keep matching halves
        half = torch.arange(s.head_dim // 2)
        return torch.cat([half, half + t.head_dim // 2])
    return torch.arange(s.head_dim)


def slice_indices(teacher_config, student, layers: list[int]) -> KeepIndices:
    """Leading channels, heads (whole, grouped under GQA) and neurons: the ``slice`` strategy."""
    adapter = get_adapter(teacher_config)
    t, s = shape_of(teacher_config), shape_of(student)
    heads, kv = _select_heads(t, s, _leading(t.num_heads))
    return KeepIndices(
        layers=list(layers),
        hidden=torch.arange(s.hidden_size),
        heads=[heads] * len(layers),
        kv_heads=[kv] * len(layers),
        ffn=[torch.arange(s.ffn_size)] * len(layers),
        head_dims=_head_dims(adapter, t, s),
    )


@dataclass
class ImportanceScores:
    """Activation magnitudes of the teacher on a calibration batch (mean over real tokens)."""

    hidden: torch.Tensor  # [hidden]: sum over the embedding output and every block output of mean |h|
    heads: list[torch.Tensor]  # per teacher block [heads]: mean L2 norm of each head's context
    ffn: list[torch.Tensor]  # per teacher block [ffn]: mean |intermediate activation|
    blocks: torch.Tensor | None = None  # [blocks]: block importance, 1 - mean cos(block input, block output)


_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
#: rows per forward pass of the calibration run: a decoder's [rows, tokens, V] logits are never built (the base
#: model runs, not its head), and 8 rows of 160 tokens of a 30 x 576 model hold ~0.1 GB of activations
CALIBRATION_ROWS_PER_PASS = 8


def _model_inputs(model: nn.Module, batch: dict, limit: int | None = None) -> dict:
    params = inspect.signature(model.forward).parameters
    device = next(model.parameters()).device
    inputs = {}
    for key in _INPUT_KEYS:
        value = batch.get(key) if hasattr(batch, "get") else None
        if value is None or key not in params:
            continue
        value = torch.as_tensor(value)
        inputs[key] = (value[:limit] if limit else value).to(device)
    if "input_ids" not in inputs:
        raise ConfigError(
            f"{INIT_FIELD}.strategy",
            "the calibration batch has no input_ids",
            "pass a tokenized batch (a dict with input_ids and attention_mask)",
        )
    return inputs


def random_calibration_batch(config, n: int, length: int = 64, seed: int = 0) -> dict:
    """Uniformly random token ids: a last-resort calibration batch when no text is given."""
    max_pos = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or length
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (n, min(length, max_pos)), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@torch.no_grad()
def importance_scores(teacher: nn.Module, batch: dict, limit: int | None = None) -> ImportanceScores:
    """Run the teacher on ``batch`` (``CALIBRATION_ROWS_PER_PASS`` rows at a time) and measure hidden-channel, head,
    FFN-neuron and block activity, each a mean over the batch's real tokens (``attention_mask``).

    Block importance is ShortGPT's Block Influence (Men et al. 2024), the depth criterion of Minitron (Muralidharan
    et al. 2024): ``1 - mean_tokens cos(x_in, x_out)`` for each block's input and output hidden states, so a block
    that barely turns its input scores near 0.
    """
    adapter = get_adapter(teacher)
    spec = adapter.spec(teacher.config)
    blocks = adapter.blocks(teacher)
    base = getattr(teacher, "base_model", teacher)  # the body alone: no LM or task head
    inputs = _model_inputs(base, batch, limit)
    rows = inputs["input_ids"].shape[0]
    n = len(blocks)
    sums: dict = {"heads": [0.0] * n, "ffn": [0.0] * n, "blocks": torch.zeros(n), "hidden": 0.0, "tokens": 0.0}
    mask = None  # the current pass's [B, L] mask, read by the hooks

    def masked_sum(x: torch.Tensor) -> torch.Tensor:  # [B, L, ...] -> [...]
        m = mask.view(*mask.shape, *([1] * (x.dim() - 2)))
        return (x.float() * m).sum((0, 1)).cpu()

    def attn_hook(module, args, i):
        x = args[0]
        sums["heads"][i] = sums["heads"][i] + masked_sum(
            x.reshape(*x.shape[:2], spec.num_heads, -1).float().norm(dim=-1)
        )

    def ffn_hook(module, args, i):
        sums["ffn"][i] = sums["ffn"][i] + masked_sum(args[0].abs())

    def block_hook(module, args, kwargs, output, i):
        x_in = args[0] if args else kwargs["hidden_states"]
        x_out = output[0] if isinstance(output, (tuple, list)) else output
        cos = torch.nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1)  # [B, L]
        sums["blocks"][i] += masked_sum(1.0 - cos).item()

    handles = []
    for i, block in enumerate(blocks):
        handles.append(adapter.attention_output_module(block).register_forward_pre_hook(partial(attn_hook, i=i)))
        handles.append(adapter.ffn_output_module(block).register_forward_pre_hook(partial(ffn_hook, i=i)))
        handles.append(block.register_forward_hook(partial(block_hook, i=i), with_kwargs=True))
    was_training = teacher.training
    teacher.eval()
    try:
        for start in range(0, rows, CALIBRATION_ROWS_PER_PASS):
            part = {k: v[start : start + CALIBRATION_ROWS_PER_PASS] for k, v in inputs.items()}
            ids = part["input_ids"]
            mask = part.get("attention_mask", torch.ones(ids.shape[:2], device=ids.device)).float()
            out = base(**part, output_hidden_states=True)
            sums["hidden"] = sums["hidden"] + sum(masked_sum(h.abs()) for h in out.hidden_states)
            sums["tokens"] += float(mask.sum())
    finally:
        for h in handles:
            h.remove()
        teacher.train(was_training)
    tokens = max(sums["tokens"], 1.0)
    return ImportanceScores(
        hidden=sums["hidden"] / tokens,
        heads=[h / tokens for h in sums["heads"]],
        ffn=[f / tokens for f in sums["ffn"]],
        blocks=sums["blocks"] / tokens,
    )


def block_importance_layers(scores: ImportanceScores, num_layers: int) -> list[int]:
    """The ``num_layers`` teacher blocks of largest block importance, in the teacher's order (ties: lower first)."""
    return _top(scores.blocks, num_layers)


def importance_indices(teacher_config, student, layers: list[int], scores: ImportanceScores) -> KeepIndices:
    """The most active channels / heads / neurons: the ``importance`` strategy."""
    adapter = get_adapter(teacher_config)
    t, s = shape_of(teacher_config), shape_of(student)
    picked = [_select_heads(t, s, scores.heads[tl]) for tl in layers]
    return KeepIndices(
        layers=list(layers),
        hidden=torch.tensor(_top(scores.hidden, s.hidden_size)),
        heads=[q for q, _ in picked],
        kv_heads=[kv for _, kv in picked],
        ffn=[torch.tensor(_top(scores.ffn[tl], s.ffn_size)) for tl in layers],
        head_dims=_head_dims(adapter, t, s),
    )


# ---------------------------------------------------------------------------------------------
# Copying weights
# ---------------------------------------------------------------------------------------------
def _suffix_match(table: dict, name: str):
    best = None
    for key in table:
        if (name == key or name.endswith("." + key)) and (best is None or len(key) > len(best)):
            best = key
    return best


class _Taker:
    """Selects the kept rows/columns of a teacher tensor, axis by axis, from the adapter's axis kinds."""

    def __init__(self, keep: KeepIndices, teacher: ResolvedShape):
        self.keep, self.t = keep, teacher

    def index(self, kind: str, layer: int | None) -> torch.Tensor:
        keep, t = self.keep, self.t
        if kind == "hidden":
            return keep.hidden
        if kind == "ffn" and layer is not None:
            return keep.ffn[layer]
        if kind in ("heads", "kv_heads", "qkv") and layer is not None:
            hs = keep.kv_heads[layer] if kind == "kv_heads" else keep.heads[layer]
            idx = torch.cat([h * t.head_dim + keep.head_dims for h in hs])
            if kind == "qkv":  # fused [q | k | v], each num_heads x head_dim wide
                width = t.num_heads * t.head_dim
                idx = torch.cat([idx, idx + width, idx + 2 * width])
            return idx
        raise ValueError(f"axis kind {kind!r} is not valid here")

    def take(self, tp: torch.Tensor, dims, layer: int | None) -> torch.Tensor:
        x = tp.detach()
        for axis, kind in enumerate(dims):
            if kind is None:
                continue
            idx = self.index(kind, layer)
            if idx.numel() == x.shape[axis] and torch.equal(idx, torch.arange(x.shape[axis])):
                continue
            x = x.index_select(axis, idx.to(x.device))
        return x


def _copy_blocks(student: nn.Module, teacher: nn.Module, keep: KeepIndices, taker: _Taker, adapter) -> None:
    """Every block parameter must be known to the adapter (or unchanged in shape)."""
    block_dims = adapter.block_param_dims(teacher.config)
    t_blocks, s_blocks = adapter.blocks(teacher), adapter.blocks(student)
    for si, ti in enumerate(keep.layers):
        t_params = dict(t_blocks[ti].named_parameters())
        for name, sp in s_blocks[si].named_parameters():
            tp = t_params[name]
            dims = block_dims.get(name)
            x = taker.take(tp, dims, si) if dims is not None else tp.detach()
            if x.shape != sp.shape:
                raise ConfigError(
                    f"{INIT_FIELD}.strategy",
                    f"cannot resize block parameter {name!r} "
                    f"{tuple(tp.shape)} -> {tuple(sp.shape)} ({type(adapter).__name__} has no "
                    "slicing rule for it)",
                    "use student.init.strategy=random or teacher-layers",
                )
            sp.copy_(x)


def _outer_dims(outer: dict, name: str, tp: torch.Tensor, sp: torch.Tensor, t_hidden: int, s_hidden: int):
    """The axis kinds of a parameter outside the blocks; None: the student keeps its own values."""
    key = _suffix_match(outer, name)
    if key is not None:
        return outer[key]
    # unknown head: an axis that shrank from the teacher's width to the student's is "hidden"
    return tuple("hidden" if a != b and a == t_hidden and b == s_hidden else None for a, b in zip(tp.shape, sp.shape))


def _copy_outer(student: nn.Module, teacher: nn.Module, taker: _Taker, adapter) -> None:
    """Everything else: embeddings, final norm, pooler, task heads."""
    block_ids = {id(p) for b in adapter.blocks(student) for p in b.parameters()}
    t_named = dict(teacher.named_parameters())
    outer = adapter.outer_param_dims(teacher.config)
    t_hidden, s_hidden = taker.t.hidden_size, adapter.spec(student.config).hidden_size
    for name, sp in student.named_parameters():
        if id(sp) in block_ids:
            continue
        tp = t_named.get(name)
        if tp is None:
            warnings.warn(
                f"student parameter {name!r} has no teacher counterpart; it keeps its initialization", stacklevel=3
            )
            continue
        dims = _outer_dims(outer, name, tp, sp, t_hidden, s_hidden)
        if dims is None:
            continue  # the student keeps its own values (e.g. width-dependent sinusoids)
        x = taker.take(tp, dims, None) if len(dims) == tp.dim() else tp.detach()
        if x.shape != sp.shape:
            warnings.warn(
                f"{name}: teacher shape {tuple(tp.shape)} does not fit the student's {tuple(sp.shape)}; "
                "it keeps its initialization",
                stacklevel=3,
            )
            continue
        sp.copy_(x)


@torch.no_grad()
def copy_weights(student: nn.Module, teacher: nn.Module, keep: KeepIndices) -> nn.Module:
    """Copy the kept rows/columns of every teacher weight into the student (same family and class)."""
    adapter = get_adapter(teacher)
    taker = _Taker(keep, shape_of(teacher.config))
    _copy_blocks(student, teacher, keep, taker, adapter)
    _copy_outer(student, teacher, taker, adapter)
    return student
