"""A student's shape, from its teacher: the config (shape overrides), exact parameter counts, and a
parameter-budget helper for width-versus-depth studies (the model itself: ``initialization.build_student``).

The student is always the teacher's own class (``BertForSequenceClassification`` stays
``BertForSequenceClassification``) with the same vocabulary, tokenizer and task head; only depth,
width, attention heads and FFN width change. Everything is validated on configs, before any weight
is created or copied. Weights are then set by an initializer from ``unikd.initialization``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from unikd.errors import ConfigError
from unikd.families import get_adapter
from unikd.matching import uniform

SHAPE_FIELD = "student.shape"
INIT_FIELD = "student.init"


class StudentShape(BaseModel):
    """The student's size. Every field left unset follows the teacher (see each description)."""

    model_config = ConfigDict(extra="forbid")

    num_layers: int | None = Field(None, description="Number of transformer blocks. Default: the teacher's depth.")
    hidden_size: int | None = Field(
        None, description="Model width (hidden size, DistilBERT 'dim', GPT-2 'n_embd'). Default: the teacher's."
    )
    num_heads: int | None = Field(
        None,
        description="Attention heads; must divide hidden_size. Default: the teacher's count at the "
        "teacher's width, else hidden_size / teacher head size when that divides, else the teacher's count.",
    )
    num_kv_heads: int | None = Field(
        None,
        description="Key/value heads for grouped-query attention (Llama, Qwen2, Mistral); must divide "
        "num_heads. Default: the teacher's if it divides num_heads, else the teacher's heads-per-KV-head "
        "ratio, else num_heads. Encoders and GPT-2 have no GQA: leave unset.",
    )
    ffn_size: int | None = Field(
        None, description="FFN (intermediate) width. Default: the teacher's FFN/hidden ratio x hidden_size."
    )


class ParamCount(NamedTuple):
    """Exact parameter counts. ``embedding``: token (+ position, + token-type, + embedding norm) tables,
    a tied LM head counted once there; ``non_embedding``: blocks, final norm, pooler, task heads."""

    embedding: int
    non_embedding: int
    total: int


@dataclass(frozen=True)
class ResolvedShape:
    """A student's shape with every default filled in (what ``student_config`` writes)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int


# ---------------------------------------------------------------------------------------------
# Student config
# ---------------------------------------------------------------------------------------------
def _heads(shape: StudentShape, spec, hidden: int, field: str) -> int:
    """The student's head count: given, else the teacher's head size or count where it divides the width."""
    if shape.num_heads is not None:
        heads = shape.num_heads
    elif hidden == spec.hidden_size:
        heads = spec.num_heads
    elif hidden % spec.head_dim == 0:
        heads = hidden // spec.head_dim
    elif hidden % spec.num_heads == 0:
        heads = spec.num_heads
    else:
        raise ConfigError(
            f"{field}.hidden_size",
            f"hidden_size {hidden} is a multiple of neither the teacher's head size "
            f"({spec.head_dim}) nor its head count ({spec.num_heads}), so no head count can be derived",
            f"set {field}.num_heads to a divisor of {hidden} (e.g. {_divisors_hint(hidden)})",
        )
    if hidden % heads:
        raise ConfigError(
            f"{field}.num_heads",
            f"{heads} attention heads do not divide hidden_size {hidden}",
            f"choose num_heads among the divisors of {hidden} (e.g. {_divisors_hint(hidden)}) or change hidden_size",
        )
    return heads


def _kv_heads(shape: StudentShape, spec, adapter, heads: int, model_type: str, field: str) -> int:
    """The student's key/value head count (grouped-query attention), by the rule of ``StudentShape.num_kv_heads``."""
    if adapter.kv_heads_key is None:
        if shape.num_kv_heads is not None and shape.num_kv_heads != heads:
            raise ConfigError(
                f"{field}.num_kv_heads",
                f"the {model_type} family has no grouped-query attention",
                f"leave {field}.num_kv_heads unset",
            )
        kv = heads
    elif shape.num_kv_heads is not None:
        kv = shape.num_kv_heads
    elif heads % spec.num_kv_heads == 0:
        kv = spec.num_kv_heads
    elif heads % (spec.num_heads // spec.num_kv_heads) == 0:
        kv = heads // (spec.num_heads // spec.num_kv_heads)
    else:
        kv = heads
    if heads % kv:
        raise ConfigError(
            f"{field}.num_kv_heads",
            f"{kv} key/value heads do not divide {heads} attention heads",
            f"choose num_kv_heads among the divisors of {heads} (e.g. {_divisors_hint(heads)})",
        )
    return kv


def resolve_shape(teacher_config, shape: StudentShape | None = None, field: str = SHAPE_FIELD) -> ResolvedShape:
    """Fill the unset fields of ``shape`` from the teacher and validate the result.

    Raises ``ConfigError`` naming ``<field>.<name>`` for non-positive sizes, heads that do not divide
    the width, KV heads that do not divide the heads, GQA on a family without it, or an odd RoPE head.
    """
    shape = shape or StudentShape()
    adapter = get_adapter(teacher_config, field="teacher.path")
    spec = adapter.spec(teacher_config)
    t_ffn = adapter.ffn_size(teacher_config)
    for name in StudentShape.model_fields:
        value = getattr(shape, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(
                f"{field}.{name}",
                f"must be a positive integer, got {value!r}",
                f"set {field}.{name} to a positive integer, or leave it unset to follow the teacher",
            )

    hidden = shape.hidden_size or spec.hidden_size
    heads = _heads(shape, spec, hidden, field)

    # Head size: hidden / heads, except a teacher whose head_dim is decoupled from its width keeps it
    # when the student keeps both the width and the head count.
    standard = spec.head_dim * spec.num_heads == spec.hidden_size
    if not standard and hidden == spec.hidden_size and heads == spec.num_heads:
        head_dim = spec.head_dim
    else:
        head_dim = hidden // heads
    if adapter.rotary_half_split and head_dim % 2:
        raise ConfigError(
            f"{field}.num_heads",
            f"head size {hidden} / {heads} = {head_dim} is odd, but rotary position embeddings need an even head size",
            "choose num_heads so hidden_size / num_heads is even",
        )

    kv = _kv_heads(shape, spec, adapter, heads, teacher_config.model_type, field)
    ffn = shape.ffn_size or max(1, round(t_ffn * hidden / spec.hidden_size))
    return ResolvedShape(
        num_layers=shape.num_layers or spec.num_layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        ffn_size=ffn,
    )


def student_config(
    teacher_config, shape: StudentShape | None = None, field: str = SHAPE_FIELD, layers: list[int] | None = None
):
    """A copy of the teacher's config (same family, vocabulary, special tokens, task head and labels)
    with the student's shape written under the family's own keys (``adapter.config_keys``).

    ``layers`` (the teacher block each student block comes from) only matters for configs with
    per-layer settings (Qwen2 ``layer_types``); the default is the uniform selection.
    """
    adapter = get_adapter(teacher_config, field="teacher.path")
    resolved = resolve_shape(teacher_config, shape, field)
    shape = shape or StudentShape()
    t_spec = adapter.spec(teacher_config)
    keys = adapter.config_keys
    config = copy.deepcopy(teacher_config)
    setattr(config, keys["num_layers"], resolved.num_layers)
    setattr(config, keys["hidden_size"], resolved.hidden_size)
    setattr(config, keys["num_heads"], resolved.num_heads)
    # GPT-2's n_inner=None (4 x n_embd) stays None unless another FFN width is asked for: the default
    # rule (teacher ratio x width) gives 4 x n_embd again.
    if not (getattr(teacher_config, keys["ffn_size"]) is None and shape.ffn_size is None):
        setattr(config, keys["ffn_size"], resolved.ffn_size)
    if adapter.kv_heads_key is not None:
        setattr(config, adapter.kv_heads_key, resolved.num_kv_heads)
    if getattr(teacher_config, "head_dim", None) is not None:
        config.head_dim = resolved.head_dim
    if teacher_config.model_type == "electra" and getattr(teacher_config, "embedding_size", None) == t_spec.hidden_size:
        config.embedding_size = resolved.hidden_size  # ELECTRA embeddings at model width stay at model width
    layer_types = getattr(teacher_config, "layer_types", None)
    if isinstance(layer_types, (list, tuple)) and len(layer_types) == t_spec.num_layers:
        if layers is None:
            n_s, n_t = resolved.num_layers, t_spec.num_layers
            layers = [t for t, _ in uniform(n_t, n_s)] if n_s <= n_t else [i % n_t for i in range(n_s)]
        config.layer_types = [layer_types[i] for i in layers]
    return config


def _divisors_hint(n: int) -> str:
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return ", ".join(str(d) for d in divs[:8]) + (", ..." if len(divs) > 8 else "")


# ---------------------------------------------------------------------------------------------
# Parameter counts
# ---------------------------------------------------------------------------------------------
def count_parameters(config_or_model, architecture: str | None = None) -> ParamCount:
    """Exact parameter counts from the family's closed-form formula (``adapter.parameter_count``).

    For a config, the architecture is ``architecture`` or ``config.architectures[0]`` (else the bare
    model); for a model, its class. Agrees with ``model.num_parameters()`` (tied weights once). A model
    whose head has no formula is counted directly from its parameters instead.
    """
    model = config_or_model if isinstance(config_or_model, nn.Module) else None
    config = model.config if model is not None else config_or_model
    if model is not None:
        architecture = type(model).__name__
        try:
            adapter = get_adapter(config)
        except ConfigError:  # a family unikd does not distil (an exported T5): its parameters, counted directly
            return _count_directly(model)
    else:
        adapter = get_adapter(config)
    try:
        embedding, non_embedding = adapter.parameter_count(config, architecture)
    except KeyError:
        if model is None:
            raise ConfigError(
                "model",
                f"no parameter-count formula for {architecture!r}",
                "count a built model instead (count_parameters(model)), or add the head to "
                f"{type(adapter).__name__}.parameter_count",
            ) from None
        return _count_directly(model)
    return ParamCount(embedding, non_embedding, embedding + non_embedding)


def _count_directly(model: nn.Module) -> ParamCount:
    emb_ids: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) or name.rsplit(".", 1)[-1] in ("embeddings", "embeddings_project"):
            emb_ids.update(id(p) for p in module.parameters())
    params = list(model.parameters())  # de-duplicates tied parameters
    embedding = sum(p.numel() for p in params if id(p) in emb_ids)
    total = sum(p.numel() for p in params)
    return ParamCount(embedding, total - embedding, total)


# ---------------------------------------------------------------------------------------------
# Parameter budgets
# ---------------------------------------------------------------------------------------------
_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


_BUDGET_FIX = "write an absolute count ('22M', '350k', 22000000) or a fraction of the teacher ('1/4', '0.25x', '25%')"


def read_budget(budget: int | float | str, field: str = "student.budget") -> tuple[float, bool]:
    """``(value, relative)`` of a budget as ``parse_budget`` reads it: ``(0.25, True)`` for ``"1/4"``,
    ``(22e6, False)`` for ``"22M"``; a budget that is unreadable or not positive is a ``ConfigError`` naming
    ``field``."""
    value: float
    if isinstance(budget, bool):
        raise ConfigError(field, f"invalid budget {budget!r}", _BUDGET_FIX)
    if isinstance(budget, (int, float)):
        value = float(budget)
        relative = value <= 1
    elif isinstance(budget, str):
        s = budget.strip().lower().replace("_", "").replace(",", "").replace(" ", "")
        try:
            if s.endswith("%"):
                value, relative = float(s[:-1]) / 100, True
            elif s.endswith("x"):
                value, relative = float(Fraction(s[:-1])), True
            elif "/" in s:
                value, relative = float(Fraction(s)), True
            elif s and s[-1] in _SUFFIXES:
                value, relative = float(s[:-1]) * _SUFFIXES[s[-1]], False
            else:
                value = float(s)
                relative = value <= 1
        except (ValueError, ZeroDivisionError):
            raise ConfigError(field, f"cannot read the budget {budget!r}", _BUDGET_FIX) from None
    else:
        raise ConfigError(field, f"invalid budget {budget!r}", _BUDGET_FIX)
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(field, f"the budget must be positive, got {budget!r}", _BUDGET_FIX)
    return value, relative


def parse_budget(budget: int | float | str, teacher_params: int, field: str = "student.budget") -> int:
    """A budget in parameters. Absolute: ``22_000_000``, ``"22M"``, ``"1.5B"``, ``"350k"``; relative to
    the teacher: ``"1/4"``, ``"0.25x"``, ``"25%"``, or a plain number <= 1 (``0.25``)."""
    value, relative = read_budget(budget, field)
    return int(round(value * teacher_params)) if relative else int(round(value))


@dataclass(frozen=True)
class BudgetRow:
    """One student configuration near the budget, with its exact parameter count."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int | None  # None: the family has no grouped-query attention
    head_dim: int
    ffn_size: int
    params: ParamCount
    budget: int
    count: str = "total"  # which ParamCount field the budget is in: "total" or "non_embedding"

    @property
    def deviation(self) -> float:
        """(params - budget) / budget, in the counted parameters."""
        return (getattr(self.params, self.count) - self.budget) / self.budget

    def shape(self) -> StudentShape:
        return StudentShape(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            ffn_size=self.ffn_size,
        )


def budget_configs(
    teacher_config,
    budget: int | float | str,
    tolerance: float = 0.05,
    *,
    architecture: str | None = None,
    depths: list[int] | None = None,
    widths: list[int] | None = None,
    head_sizes: list[int] | None = None,
    ffn_ratios: list[float] | None = None,
    width_multiple: int | None = None,
    count: Literal["total", "non_embedding"] = "total",
    field: str = "student.budget",
) -> list[BudgetRow]:
    """Student shapes (depth x width x heads x FFN) whose exact parameter count (by the family's
    formula, for the teacher's architecture) is within ``tolerance`` of ``budget``. ``count`` says which
    parameters the budget (and a relative budget's teacher count) is in: all of them, or the non-embedding
    ones (the blocks and heads, which set the compute; the embedding tables shrink only with the width).

    Defaults: depths 1..teacher depth; widths the multiples of ``width_multiple`` (64 for teachers at
    least 512 wide, else 32) up to the teacher's width; head sizes {32, 64, 128, teacher's} dividing
    the width; the teacher's FFN/hidden ratio; GQA families keep the default KV-head rule of
    ``resolve_shape``. Sorted by closeness to the budget, then depth, width and head count.
    """
    adapter = get_adapter(teacher_config, field="teacher.path")
    spec = adapter.spec(teacher_config)
    if not 0 <= tolerance < 1:
        raise ConfigError("tolerance", f"must be in [0, 1), got {tolerance}", "use e.g. 0.05 for +-5%")
    if count not in ("total", "non_embedding"):
        raise ConfigError("count", f"unknown parameter count {count!r}", "use 'total' or 'non_embedding'")
    target = parse_budget(budget, getattr(count_parameters(teacher_config, architecture), count), field)
    width_multiple = width_multiple or (64 if spec.hidden_size >= 512 else 32)
    depths = sorted(set(depths or range(1, spec.num_layers + 1)))
    widths = sorted(set(widths or range(width_multiple, spec.hidden_size + 1, width_multiple)))
    head_sizes = sorted(set(head_sizes or {32, 64, 128, spec.head_dim}))
    ratios: list[float | None] = list(ffn_ratios) if ffn_ratios else [None]
    for name, values in (("depths", depths), ("widths", widths), ("head_sizes", head_sizes)):
        if any(v < 1 for v in values):
            raise ConfigError(f"{field}.{name}", "values must be positive integers", f"fix {field}.{name}")

    rows: dict[tuple, BudgetRow] = {}
    for width in widths:
        for head_size in head_sizes:
            if width % head_size:
                continue
            for ratio in ratios:
                ffn = None if ratio is None else max(1, round(ratio * width))
                counts = {}
                try:
                    for depth in (1, 2):  # counts are affine in depth: two evaluations give all depths
                        shape = StudentShape(
                            num_layers=depth, hidden_size=width, num_heads=width // head_size, ffn_size=ffn
                        )
                        config = student_config(teacher_config, shape, field=field)
                        counts[depth] = adapter.parameter_count(config, architecture)
                except ConfigError:
                    continue
                resolved = resolve_shape(teacher_config, shape, field)
                (e1, n1), (_, n2) = counts[1], counts[2]
                for depth in depths:
                    non = n1 + (depth - 1) * (n2 - n1)
                    total = e1 + non
                    counted = total if count == "total" else non
                    if abs(counted - target) > tolerance * target:
                        continue
                    row = BudgetRow(
                        num_layers=depth,
                        hidden_size=width,
                        num_heads=resolved.num_heads,
                        num_kv_heads=resolved.num_kv_heads if adapter.kv_heads_key else None,
                        head_dim=resolved.head_dim,
                        ffn_size=resolved.ffn_size,
                        params=ParamCount(e1, non, total),
                        budget=target,
                        count=count,
                    )
                    rows[(depth, width, row.num_heads, row.num_kv_heads, row.ffn_size)] = row
    return sorted(rows.values(), key=lambda r: (abs(r.deviation), r.num_layers, r.hidden_size, r.num_heads))


def human_count(n: float) -> str:
    """A parameter (or FLOP) count for a table: 22.71M, 1.10B, 512."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def format_budget_table(rows: list[BudgetRow], limit: int | None = None) -> str:
    """A plain-text table of ``budget_configs`` rows (first ``limit`` rows if given)."""
    if not rows:
        return "no student configuration within the tolerance: widen the tolerance or the search ranges"
    header = ["layers", "hidden", "heads", "kv", "head", "ffn", "embedding", "non-emb", "total", "vs budget"]
    body = [
        [
            str(r.num_layers),
            str(r.hidden_size),
            str(r.num_heads),
            "-" if r.num_kv_heads is None else str(r.num_kv_heads),
            str(r.head_dim),
            str(r.ffn_size),
            human_count(r.params.embedding),
            human_count(r.params.non_embedding),
            f"{r.params.total:,}",
            f"{100 * r.deviation:+.1f}%",
        ]
        for r in rows[:limit]
    ]
    widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    lines = [
        f"budget: {rows[0].budget:,}{' non-embedding' if rows[0].count == 'non_embedding' else ''} parameters "
        f"({human_count(rows[0].budget)})",
        fmt.format(*header),
        "  ".join("-" * w for w in widths),
    ]
    lines += [fmt.format(*line) for line in body]
    if limit is not None and len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more")
    return "\n".join(lines)


__all__ = [
    "BudgetRow",
    "ParamCount",
    "ResolvedShape",
    "StudentShape",
    "budget_configs",
    "count_parameters",
    "format_budget_table",
    "parse_budget",
    "read_budget",
    "resolve_shape",
    "student_config",
]
