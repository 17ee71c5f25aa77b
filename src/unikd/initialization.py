"""Student initializers: a registry of ``fn(student, teacher, cfg, calibration_batch=None) -> student``.

- ``random``: the family's own initialization (the model as constructed).
- ``teacher-layers``: copy the embeddings, the selected teacher blocks, final norm, pooler and task
  heads (DistilBERT / PKD style). Widths must equal the teacher's.
- ``slice``: a narrower student keeps the leading hidden channels, whole leading heads (grouped by
  KV head for GQA) and leading FFN neurons of the selected teacher blocks.
- ``importance``: like ``slice`` but keeps the channels, heads and neurons with the largest activations
  on a calibration batch (Minitron-style width pruning); kept indices stay in their original order.
- ``prune``: Minitron's pruning of the teacher into the student's shape, depth and width from one calibration
  pass: the blocks of largest block importance (``layers: block-importance``, prune's default: 1 - cos between
  a block's input and output, ShortGPT's Block Influence), and in them the most active heads (whole KV groups
  under GQA), FFN neurons and embedding channels, as ``importance``. It needs real calibration rows (``calibration_texts`` of
  the training data; none is an error, not random tokens).
- ``pretrained``: load ``cfg.pretrained`` (hub id or local directory) with the teacher's task head.

Which axis of which weight is "hidden", "heads", "kv_heads", "ffn" is family knowledge and lives in
the adapters (``block_param_dims`` / ``outer_param_dims`` in ``unikd/families/``). Every check that
can fail (layer selection, widths, paths) runs in ``check_init`` before any weight is touched.
Which rows and columns a ``slice`` / ``importance`` student keeps, and the copy itself, are
``unikd.weight_copy``; this module picks the blocks, checks a request and builds the student.

Layer selection (``cfg.layers``, teacher T blocks -> student S blocks, indices 0-based):

- ``uniform``: student block i <- teacher block floor((i + 1) * T / S) - 1 (12 -> 4: 2, 5, 8, 11), so
  the last teacher block is always kept; ``first``: 0 .. S-1; ``last``: T-S .. T-1 (each the teacher side of
  the layer-matching strategy of the same name, ``unikd.matching``);
- ``every-other``: DistilBERT's choice generalized. With stride k = T // S (2 when halving), the lower
  ceil(S/2) student blocks take teacher blocks 0, k, 2k, ... and the upper floor(S/2) take
  ..., T-1-k, T-1, so the first and the last teacher blocks are kept (12 -> 6: 0, 2, 4, 7, 9, 11);
- ``block-importance`` (strategies ``importance`` and ``prune``; prune's default): the S blocks whose output
  differs most from their input on the calibration rows (``unikd.weight_copy.importance_scores``);
- a list of S teacher block indices (repeats allowed).
"""

from __future__ import annotations

import warnings
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from unikd import matching
from unikd.errors import ConfigError
from unikd.families import get_adapter
from unikd.models import NO_REMOTE_CODE, auto_class_for, model_config, resolve_model_path
from unikd.student import INIT_FIELD, SHAPE_FIELD, StudentShape, resolve_shape, student_config
from unikd.weight_copy import (
    KeepIndices,
    block_importance_layers,
    copy_weights,
    importance_indices,
    importance_scores,
    random_calibration_batch,
    shape_of,
    slice_indices,
)


Strategy = Literal["random", "teacher-layers", "slice", "importance", "prune", "pretrained"]
LayerRule = Literal["uniform", "first", "last", "every-other", "block-importance"]


class InitConfig(BaseModel):
    """How the student's weights are initialized."""

    model_config = ConfigDict(extra="forbid")

    strategy: Strategy = Field(
        "teacher-layers",
        description="random: the family's own init; teacher-layers: copy embeddings and "
        "selected teacher blocks (equal widths); slice: a narrower student keeps the teacher's leading "
        "channels/heads/neurons; importance: keeps the most active ones on a calibration batch (Minitron); "
        "prune: importance with layers=block-importance by default (1 - cos(block input, output); Minitron's "
        "depth pruning); pretrained: load the checkpoint in 'pretrained'.",
    )
    layers: LayerRule | list[int] = Field(
        "uniform",
        description="Which teacher block initializes each student block: uniform (12->4: "
        "2,5,8,11), first, last, every-other (DistilBERT, 12->6: 0,2,4,7,9,11), or a list of teacher "
        "block indices, one per student block; block-importance (strategies importance and prune, prune's "
        "default): the blocks that change their input most on the calibration rows.",
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
        description="strategies importance and prune: number of training rows (the calibration batch) whose "
        "activations rank channels, heads, neurons and (block-importance) blocks.",
    )

    @model_validator(mode="after")
    def _prune_ranks_blocks(self) -> "InitConfig":
        # prune's layers default to block importance; written out, so a saved config reloads to the same choice
        if self.strategy == "prune" and "layers" not in self.model_fields_set:
            self.layers = "block-importance"
        return self


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
    if rule == "block-importance":  # ranked on calibration rows by the initializer; the depth check is all here
        return [t for t, _ in matching.MATCHINGS["uniform"](T, S)]
    if rule in ("uniform", "first", "last"):  # the layer-matching strategies of the same name
        return [t for t, _ in matching.MATCHINGS[rule](T, S)]
    if rule == "every-other":
        k, lower = T // S, (S + 1) // 2
        upper = S - lower
        return [i * k for i in range(lower)] + [T - 1 - (upper - 1 - j) * k for j in range(upper)]
    raise ConfigError(
        field,
        f"unknown layer selection {rule!r}",
        "use uniform, first, last, every-other, block-importance, or a list of teacher layer indices",
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
    if cfg.layers == "block-importance" and strategy not in ("importance", "prune"):
        raise ConfigError(
            f"{INIT_FIELD}.layers",
            f"block-importance ranks blocks on calibration rows, which strategy {strategy!r} does not read",
            "use student.init.strategy=prune (or importance), or a fixed rule such as uniform",
        )
    t, s = shape_of(teacher_config), shape_of(student)
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
        if strategy in ("slice", "importance", "prune") and sv > tv:
            raise ConfigError(
                f"{SHAPE_FIELD}.{field}",
                f"{strategy} keeps a subset of the teacher's {what}, so "
                f"the student's {what} ({sv}) cannot exceed the teacher's ({tv})",
                f"use at most {tv}, or student.init.strategy=random",
            )
    return layers


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
    if cfg.layers == "block-importance":  # blocks ranked too: prune's pass, which needs real rows
        return copy_weights(student, teacher, prune_indices(teacher, student.config, cfg, calibration_batch))
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


def prune_indices(teacher: nn.Module, student, cfg: InitConfig, calibration_batch) -> KeepIndices:
    """What ``prune`` (or ``importance`` with ``layers: block-importance``) keeps of ``teacher`` for ``student`` (a
    config, model or ``ResolvedShape``): one calibration pass ranks the blocks (unless ``cfg.layers`` is a fixed
    rule), and in the kept blocks the heads, neurons and channels."""
    if calibration_batch is None:
        raise ConfigError(
            f"{INIT_FIELD}.strategy",
            f"{cfg.strategy} with layers {cfg.layers!r} ranks the teacher's blocks, heads and neurons on "
            "calibration rows, and none were given",
            "pass calibration_batch (tokenized training rows; unikd distill passes student.init.calibration_texts "
            "rows of the training data), or use student.init.strategy=slice",
        )
    layers = check_init(teacher.config, student, cfg)
    scores = importance_scores(teacher, calibration_batch, limit=cfg.calibration_texts)
    if cfg.layers == "block-importance":
        layers = block_importance_layers(scores, shape_of(student).num_layers)
    return importance_indices(teacher.config, student, layers, scores)


@register_initializer("prune")
def init_prune(student, teacher, cfg: InitConfig, calibration_batch=None):
    """The teacher pruned to the student's shape (``prune_indices``), its kept weights copied."""
    return copy_weights(student, teacher, prune_indices(teacher, student.config, cfg, calibration_batch))


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
    if init.layers == "block-importance":  # the kept blocks come from the calibration pass; the config follows them
        keep = prune_indices(donor, resolved, init, calibration_batch)
        s_config = student_config(teacher_model.config, shape, layers=keep.layers)
        student = type(teacher_model)._from_config(s_config, dtype=teacher_model.dtype)
        return copy_weights(student, donor, keep)
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
    "InitConfig",
    "build_student",
    "check_init",
    "check_student_init",
    "load_donor",
    "pretrained_config",
    "prune_indices",
    "register_initializer",
    "resolve_checkpoint",
    "select_layers",
]
