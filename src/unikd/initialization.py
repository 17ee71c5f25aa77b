"""Student initializers: a registry of ``fn(student, teacher, cfg, calibration_batch=None) -> student``.

- ``random``: the family's own initialization (the model as constructed).
- ``teacher-layers``: copy the embeddings, the selected teacher blocks, final norm, pooler and task
  heads (DistilBERT / PKD style). Widths must equal the teacher's.
- ``slice``: a narrower student keeps the leading hidden channels, whole leading heads (grouped by
  KV head for GQA) and leading FFN neurons of the selected teacher blocks.
- ``importance``: like ``slice`` but keeps the channels, heads and neurons with the largest activations
  on a calibration batch (Minitron-style width pruning); kept indices stay in their original order.
- ``pretrained``: load ``cfg.pretrained`` (hub id or local directory) with the teacher's task head.

Which axis of which weight is "hidden", "heads", "kv_heads", "ffn" is family knowledge and lives in
the adapters (``block_param_dims`` / ``outer_param_dims`` in ``unikd/families/``). Every check that
can fail (layer selection, widths, paths) runs in ``check_init`` before any weight is touched.

Layer selection (``cfg.layers``, teacher T blocks -> student S blocks, indices 0-based):

- ``uniform``: student block i <- teacher block floor((i + 1) * T / S) - 1 (12 -> 4: 2, 5, 8, 11), so
  the last teacher block is always kept; ``first``: 0 .. S-1; ``last``: T-S .. T-1 (each the teacher side of
  the layer-matching strategy of the same name, ``unikd.matching``);
- ``every-other``: DistilBERT's choice generalized. With stride k = T // S (2 when halving), the lower
  ceil(S/2) student blocks take teacher blocks 0, k, 2k, ... and the upper floor(S/2) take
  ..., T-1-k, T-1, so the first and the last teacher blocks are kept (12 -> 6: 0, 2, 4, 7, 9, 11);
- a list of S teacher block indices (repeats allowed).
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from unikd import matching
from unikd.errors import ConfigError
from unikd.families import get_adapter
from unikd.models import NO_REMOTE_CODE, auto_class_for, model_config, resolve_model_path
from unikd.student import SHAPE_FIELD, ResolvedShape, StudentShape, resolve_shape, student_config

INIT_FIELD = "student.init"

Strategy = Literal["random", "teacher-layers", "slice", "importance", "pretrained"]
LayerRule = Literal["uniform", "first", "last", "every-other"]


class InitConfig(BaseModel):
    """How the student's weights are initialized."""

    model_config = ConfigDict(extra="forbid")

    strategy: Strategy = Field(
        "teacher-layers",
        description="random: the family's own init; teacher-layers: copy embeddings and "
        "selected teacher blocks (equal widths); slice: a narrower student keeps the teacher's leading "
        "channels/heads/neurons; importance: keeps the most active ones on a calibration batch (Minitron); "
        "pretrained: load the checkpoint in 'pretrained'.",
    )
    layers: LayerRule | list[int] = Field(
        "uniform",
        description="Which teacher block initializes each student block: uniform (12->4: "
        "2,5,8,11), first, last, every-other (DistilBERT, 12->6: 0,2,4,7,9,11), or a list of teacher "
        "block indices, one per student block.",
    )
    pretrained: str | None = Field(
        None,
        description="strategy pretrained: hub id or local directory of the student checkpoint, loaded "
        "with the teacher's task head (AutoModelFor<task>).",
    )
    source: str | None = Field(
        None,
        description="teacher-layers/slice/importance: take the weights from this checkpoint (same family "
        "as the teacher, e.g. the pre-trained model a fine-tuned teacher started from) instead of the teacher.",
    )
    calibration_texts: int = Field(
        64,
        ge=1,
        description="strategy importance: number of calibration texts (rows of the calibration "
        "batch) whose activations rank channels, heads and neurons.",
    )


Initializer = Callable[..., nn.Module]
INITIALIZERS: dict[str, Initializer] = {}


def register_initializer(name: str):
    def deco(fn: Initializer) -> Initializer:
        INITIALIZERS[name] = fn
        return fn

    return deco


# ---------------------------------------------------------------------------------------------
# Validation (configs only, before any weight is touched)
# ---------------------------------------------------------------------------------------------
def select_layers(
    teacher_layers: int, student_layers: int, rule: str | list[int] = "uniform", field: str = f"{INIT_FIELD}.layers"
) -> list[int]:
    """The teacher block each student block is initialized from (see the module docstring)."""
    T, S = teacher_layers, student_layers
    if S > T:
        raise ConfigError(
            f"{SHAPE_FIELD}.num_layers",
            f"the student has {S} layers but the teacher only {T}, and "
            "each student layer is initialized from its own teacher layer",
            f"use num_layers <= {T}, or student.init.strategy=random",
        )
    if S < 1:
        raise ConfigError(f"{SHAPE_FIELD}.num_layers", f"must be positive, got {S}", "use num_layers >= 1")
    if isinstance(rule, (list, tuple)):
        layers = [int(i) for i in rule]
        if len(layers) != S:
            raise ConfigError(
                field,
                f"lists {len(layers)} teacher layers for {S} student layers",
                f"give exactly {S} teacher layer indices in 0..{T - 1}",
            )
        bad = [i for i in layers if not 0 <= i < T]
        if bad:
            raise ConfigError(
                field,
                f"teacher layer(s) {bad} out of range (the teacher has layers 0..{T - 1})",
                f"use indices in 0..{T - 1}",
            )
        return layers
    if rule in ("uniform", "first", "last"):  # the layer-matching strategies of the same name
        return [t for t, _ in matching.MATCHINGS[rule](T, S)]
    if rule == "every-other":
        k, lower = T // S, (S + 1) // 2
        upper = S - lower
        return [i * k for i in range(lower)] + [T - 1 - (upper - 1 - j) * k for j in range(upper)]
    raise ConfigError(
        field,
        f"unknown layer selection {rule!r}",
        "use uniform, first, last, every-other, or a list of teacher layer indices",
    )


def _shape_of(config_or_shape) -> ResolvedShape:
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


_WIDTHS = (
    ("hidden_size", "hidden_size", "width"),
    ("num_heads", "num_heads", "attention heads"),
    ("num_kv_heads", "num_kv_heads", "key/value heads"),
    ("head_dim", "num_heads", "head size"),
    ("ffn_size", "ffn_size", "FFN neurons"),
)


def check_init(teacher_config, student, cfg: InitConfig, strategy: str | None = None) -> list[int] | None:
    """Validate ``cfg`` for a teacher config and a student (config, model or ``ResolvedShape``).

    Returns the teacher layer for each student layer (None for random/pretrained). Raises
    ``ConfigError`` naming the offending field.
    """
    strategy = strategy or cfg.strategy
    if strategy not in INITIALIZERS:
        raise ConfigError(
            f"{INIT_FIELD}.strategy", f"unknown strategy {strategy!r}", f"use one of {sorted(INITIALIZERS)}"
        )
    if strategy in ("random", "pretrained"):
        return None
    t, s = _shape_of(teacher_config), _shape_of(student)
    layers = select_layers(t.num_layers, s.num_layers, cfg.layers)
    for attr, field, what in _WIDTHS:
        tv, sv = getattr(t, attr), getattr(s, attr)
        if strategy == "teacher-layers" and sv != tv:
            raise ConfigError(
                f"{SHAPE_FIELD}.{field}",
                f"teacher-layers copies whole teacher blocks, so the "
                f"student's {what} ({sv}) must equal the teacher's ({tv})",
                "use student.init.strategy=slice or importance for a narrower student, or random",
            )
        if strategy in ("slice", "importance") and sv > tv:
            raise ConfigError(
                f"{SHAPE_FIELD}.{field}",
                f"{strategy} keeps a subset of the teacher's {what}, so "
                f"the student's {what} ({sv}) cannot exceed the teacher's ({tv})",
                f"use at most {tv}, or student.init.strategy=random",
            )
    return layers


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
    t, s = _shape_of(teacher_config), _shape_of(student)
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


_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


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
    """Run the teacher once on ``batch`` and measure hidden-channel, head and FFN-neuron activity."""
    adapter = get_adapter(teacher)
    spec = adapter.spec(teacher.config)
    blocks = adapter.blocks(teacher)
    inputs = _model_inputs(teacher, batch, limit)
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask", torch.ones(ids.shape[:2], device=ids.device)).float()
    tokens = mask.sum().clamp(min=1)

    def masked_mean(x: torch.Tensor) -> torch.Tensor:  # [B, L, ...] -> [...]
        m = mask.view(*mask.shape, *([1] * (x.dim() - 2)))
        return (x.float() * m).sum((0, 1)) / tokens

    heads: list[torch.Tensor | None] = [None] * len(blocks)
    ffn: list[torch.Tensor | None] = [None] * len(blocks)
    handles = []
    for i, block in enumerate(blocks):

        def attn_hook(module, args, i=i):
            x = args[0]
            heads[i] = masked_mean(x.reshape(*x.shape[:2], spec.num_heads, -1).float().norm(dim=-1)).cpu()

        def ffn_hook(module, args, i=i):
            ffn[i] = masked_mean(args[0].abs()).cpu()

        handles.append(adapter.attention_output_module(block).register_forward_pre_hook(attn_hook))
        handles.append(adapter.ffn_output_module(block).register_forward_pre_hook(ffn_hook))
    was_training = teacher.training
    teacher.eval()
    try:
        out = teacher(**inputs, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
        teacher.train(was_training)
    hidden = sum(masked_mean(h.abs()) for h in out.hidden_states).cpu()
    return ImportanceScores(hidden=hidden, heads=heads, ffn=ffn)


def importance_indices(teacher_config, student, layers: list[int], scores: ImportanceScores) -> KeepIndices:
    """The most active channels / heads / neurons: the ``importance`` strategy."""
    adapter = get_adapter(teacher_config)
    t, s = _shape_of(teacher_config), _shape_of(student)
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
    taker = _Taker(keep, _shape_of(teacher.config))
    _copy_blocks(student, teacher, keep, taker, adapter)
    _copy_outer(student, teacher, taker, adapter)
    return student


# ---------------------------------------------------------------------------------------------
# The initializers
# ---------------------------------------------------------------------------------------------
@register_initializer("random")
def init_random(student, teacher, cfg: InitConfig, calibration_batch=None):
    """The family's own initialization: the student as constructed."""
    return student


@register_initializer("teacher-layers")
def init_teacher_layers(student, teacher, cfg: InitConfig, calibration_batch=None):
    """Copy embeddings, the selected teacher blocks, final norm, pooler and task heads."""
    layers = check_init(teacher.config, student.config, cfg, strategy="teacher-layers")
    return copy_weights(student, teacher, slice_indices(teacher.config, student.config, layers))


@register_initializer("slice")
def init_slice(student, teacher, cfg: InitConfig, calibration_batch=None):
    """Leading hidden channels, heads and FFN neurons of the selected teacher blocks."""
    layers = check_init(teacher.config, student.config, cfg, strategy="slice")
    return copy_weights(student, teacher, slice_indices(teacher.config, student.config, layers))


@register_initializer("importance")
def init_importance(student, teacher, cfg: InitConfig, calibration_batch=None):
    """The most active hidden channels, heads and FFN neurons on ``calibration_batch`` (Minitron)."""
    layers = check_init(teacher.config, student.config, cfg, strategy="importance")
    if calibration_batch is None:
        warnings.warn(
            "importance initialization without a calibration batch: ranking on random tokens; "
            "pass calibration_batch (tokenized training texts) for a meaningful ranking",
            stacklevel=2,
        )
        calibration_batch = random_calibration_batch(teacher.config, cfg.calibration_texts)
    scores = importance_scores(teacher, calibration_batch, limit=cfg.calibration_texts)
    return copy_weights(student, teacher, importance_indices(teacher.config, student.config, layers, scores))


@register_initializer("pretrained")
def init_pretrained(student, teacher, cfg: InitConfig, calibration_batch=None):
    """Load ``cfg.pretrained`` with the teacher's task (``AutoModelFor<task>``); ``student`` is ignored."""
    field = f"{INIT_FIELD}.pretrained"
    path = resolve_checkpoint(cfg.pretrained, field)
    auto = auto_class_for(teacher)
    kwargs = {"dtype": teacher.dtype, **_label_kwargs(teacher, auto)}
    try:
        return auto.from_pretrained(path, **NO_REMOTE_CODE, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(
            field,
            f"could not load {cfg.pretrained!r} ({type(exc).__name__}: {exc})",
            "give a hub id or a directory written by save_pretrained",
        ) from exc


# ---------------------------------------------------------------------------------------------
# Checkpoints (pretrained students, weight sources)
# ---------------------------------------------------------------------------------------------
def resolve_checkpoint(path: str | None, field: str) -> str:
    """A hub id, an existing local model directory, or ``pkg:<package>`` (as in ``teacher.path``)."""
    if not path:
        raise ConfigError(
            field, "no checkpoint given", f"set {field} to a hub id or a directory written by save_pretrained"
        )
    return resolve_model_path(path, field)


def pretrained_config(cfg: InitConfig):
    """The config of ``cfg.pretrained`` (validates the path without loading weights)."""
    from transformers import AutoConfig

    field = f"{INIT_FIELD}.pretrained"
    path = resolve_checkpoint(cfg.pretrained, field)
    try:
        return AutoConfig.from_pretrained(path, **NO_REMOTE_CODE)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            field,
            f"could not read the config of {cfg.pretrained!r} ({type(exc).__name__}: {exc})",
            "give a hub id or a directory written by save_pretrained",
        ) from exc


def load_donor(teacher: nn.Module, cfg: InitConfig) -> nn.Module:
    """``cfg.source`` loaded with the teacher's class: the weights teacher-layers/slice/importance copy."""
    from transformers import AutoConfig

    field = f"{INIT_FIELD}.source"
    path = resolve_checkpoint(cfg.source, field)
    try:
        config = AutoConfig.from_pretrained(path, **NO_REMOTE_CODE)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            field,
            f"could not read {cfg.source!r} ({type(exc).__name__}: {exc})",
            "give a hub id or a directory written by save_pretrained",
        ) from exc
    if get_adapter(config, field) is not get_adapter(teacher) or config.model_type != teacher.config.model_type:
        raise ConfigError(
            field,
            f"{cfg.source!r} is a {config.model_type} model but the teacher is {teacher.config.model_type}",
            "use a checkpoint of the teacher's family",
        )
    kwargs = {"dtype": teacher.dtype, **_label_kwargs(teacher, None)}
    try:
        return type(teacher).from_pretrained(path, **NO_REMOTE_CODE, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(
            field,
            f"could not load {cfg.source!r} ({type(exc).__name__}: {exc})",
            "give a hub id or a directory written by save_pretrained",
        ) from exc


def _label_kwargs(teacher: nn.Module, auto) -> dict:
    """num_labels / label names / problem type of a classification teacher, so the student's head matches."""
    name = type(teacher).__name__
    if not (name.endswith("ForSequenceClassification") or name.endswith("ForTokenClassification")):
        return {}
    config = teacher.config
    kwargs = {
        "num_labels": config.num_labels,
        "id2label": dict(config.id2label),
        "label2id": dict(config.label2id),
        "ignore_mismatched_sizes": True,
    }
    if getattr(config, "problem_type", None):
        kwargs["problem_type"] = config.problem_type
    return kwargs


# ---------------------------------------------------------------------------------------------
# Building the student
# ---------------------------------------------------------------------------------------------
def build_student(
    teacher_model: nn.Module,
    shape: StudentShape | None = None,
    init: InitConfig | None = None,
    calibration_batch: dict | None = None,
) -> nn.Module:
    """The student: the teacher's class with the student config, then ``init``'s initializer.

    Everything (shape, layer selection, widths against the strategy, paths) is validated before the
    student's weights are created. ``init.source`` (optional) names a checkpoint that donates the
    weights instead of the teacher (same family and class). ``strategy: pretrained`` loads
    ``init.pretrained`` instead and ignores the teacher's weights; shape fields set alongside it must
    match that checkpoint. The student is built on the CPU in the teacher's dtype.
    """
    shape = shape or StudentShape()
    init = init or InitConfig()
    get_adapter(teacher_model, field="teacher.path")  # an unsupported family fails here, before any weights
    if init.strategy not in INITIALIZERS:
        raise ConfigError(
            f"{INIT_FIELD}.strategy", f"unknown strategy {init.strategy!r}", f"use one of {sorted(INITIALIZERS)}"
        )
    if init.strategy == "pretrained":
        config = pretrained_config(init)
        _check_shape_matches(config, shape)
        return INITIALIZERS["pretrained"](None, teacher_model, init, calibration_batch)

    resolved = resolve_shape(teacher_model.config, shape)
    donor = load_donor(teacher_model, init) if init.source else teacher_model
    layers = check_init(donor.config, resolved, init)
    s_config = student_config(teacher_model.config, shape, layers=layers)
    student = type(teacher_model)._from_config(s_config, dtype=teacher_model.dtype)
    return INITIALIZERS[init.strategy](student, donor, init, calibration_batch)


def check_student_init(teacher_config, shape: StudentShape | None = None, init: InitConfig | None = None) -> None:
    """``build_student``'s checks from configs alone (no weights): the pretrained checkpoint exists and fits
    the shape; the weight source is of the teacher's family; layers and widths fit the strategy. ``unikd
    validate`` calls it, so a bad ``student.init`` is reported before any training."""
    shape, init = shape or StudentShape(), init or InitConfig()
    if init.strategy == "pretrained":
        _check_shape_matches(pretrained_config(init), shape)
        return
    donor_config = teacher_config
    if init.source:
        field = f"{INIT_FIELD}.source"
        donor_config = model_config(resolve_checkpoint(init.source, field), field)
        if donor_config.model_type != teacher_config.model_type:
            raise ConfigError(
                field,
                f"{init.source!r} is a {donor_config.model_type} model but the teacher is {teacher_config.model_type}",
                "use a checkpoint of the teacher's family",
            )
    check_init(donor_config, resolve_shape(teacher_config, shape), init)


def _check_shape_matches(config, shape: StudentShape, field: str = SHAPE_FIELD) -> None:
    adapter = get_adapter(config, field="student.init.pretrained")
    spec = adapter.spec(config)
    actual = {
        "num_layers": spec.num_layers,
        "hidden_size": spec.hidden_size,
        "num_heads": spec.num_heads,
        "num_kv_heads": spec.num_kv_heads,
        "ffn_size": adapter.ffn_size(config),
    }
    for name, value in actual.items():
        wanted = getattr(shape, name)
        if wanted is not None and wanted != value:
            raise ConfigError(
                f"{field}.{name}",
                f"{wanted} does not match the pretrained student's {value}",
                f"leave {field}.{name} unset with strategy 'pretrained' (the checkpoint fixes it)",
            )


__all__ = [
    "INITIALIZERS",
    "ImportanceScores",
    "InitConfig",
    "KeepIndices",
    "build_student",
    "check_init",
    "check_student_init",
    "copy_weights",
    "importance_indices",
    "importance_scores",
    "load_donor",
    "pretrained_config",
    "random_calibration_batch",
    "register_initializer",
    "resolve_checkpoint",
    "select_layers",
    "slice_indices",
]
