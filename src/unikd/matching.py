"""Layer matching: which teacher block feeds which student block.

Blocks are numbered 0..N-1. Every strategy returns ``[(teacher_layer, student_layer), ...]`` sorted
by student layer. ``T`` = teacher layers, ``S`` = student layers.

==========  ======================================================================================
first       ``(i, i)`` for i < S                                         (needs S ≤ T)
firstK      ``(i, i)`` for i < k (k defaults to S)                       (k ≤ min(S, T))
last        the teacher's top S layers in order: ``(T-S+i, i)``          (needs S ≤ T)
lastK       ``(T-k+j, S-k+j)`` for j < k, in order (k defaults to S)     (k ≤ min(S, T))
uniform     ``(⌊(i+1)·T/S⌋-1, i)`` — alias ``skip``                     (needs S ≤ T)
pair        one pair ``(teacher_layer, student_layer)``; negative indices count from the top
random      RAIL-KD: a sorted random subset of S teacher layers paired with students 0..S-1,
            drawn with the given ``torch.Generator`` (the caller re-draws it every step)
[[t, s]..]  explicit pairs; negative indices allowed; student layers must be distinct
==========  ======================================================================================
"""

from __future__ import annotations

from typing import Callable

import torch

from unikd.errors import ConfigError

__all__ = ["MATCHINGS", "is_dynamic", "resolve_matching"]

Pairs = list[tuple[int, int]]


# ---- validation helpers ----------------------------------------------------------------------
def _need_s_le_t(name: str, T: int, S: int, field: str) -> None:
    if S > T:
        raise ConfigError(
            field,
            f"strategy {name!r} needs student layers <= teacher layers, got {S} student > {T} teacher",
            "use explicit pairs, 'firstK'/'lastK' with k <= teacher layers, or a shallower student",
        )


def _check_k(k: int | None, T: int, S: int, field: str, name: str) -> int:
    k = S if k is None else k
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(S, T):
        raise ConfigError(
            f"{field}.k",
            f"k={k!r} out of range for {name!r} with {T} teacher and {S} student layers",
            f"use an integer 1 <= k <= {min(S, T)}",
        )
    return k


def _normalize(idx: int, n: int, side: str, field: str) -> int:
    if isinstance(idx, bool) or not isinstance(idx, int):
        raise ConfigError(field, f"{side} layer {idx!r} is not an integer", "use integer block indices")
    if not -n <= idx < n:
        raise ConfigError(
            field,
            f"{side} layer {idx} out of range for a {n}-layer {side}",
            f"use an index in 0..{n - 1} (or -{n}..-1 counting from the top)",
        )
    return idx % n


# ---- strategies ------------------------------------------------------------------------------
def first(T: int, S: int, *, field: str = "matching", **_) -> Pairs:
    """``(i, i)`` for i < S."""
    _need_s_le_t("first", T, S, field)
    return [(i, i) for i in range(S)]


def first_k(T: int, S: int, *, k: int | None = None, field: str = "matching", **_) -> Pairs:
    """``(i, i)`` for i < k."""
    k = _check_k(k, T, S, field, "firstK")
    return [(i, i) for i in range(k)]


def last(T: int, S: int, *, field: str = "matching", **_) -> Pairs:
    """``(T-S+i, i)``: the teacher's top S layers, in order."""
    _need_s_le_t("last", T, S, field)
    return [(T - S + i, i) for i in range(S)]


def last_k(T: int, S: int, *, k: int | None = None, field: str = "matching", **_) -> Pairs:
    """``(T-k+j, S-k+j)`` for j < k: the top k layers of each, in order."""
    k = _check_k(k, T, S, field, "lastK")
    return [(T - k + j, S - k + j) for j in range(k)]


def uniform(T: int, S: int, *, field: str = "matching", **_) -> Pairs:
    """``(⌊(i+1)·T/S⌋-1, i)``: every (T/S)-th teacher layer, ending at the top one."""
    _need_s_le_t("uniform", T, S, field)
    return [((i + 1) * T // S - 1, i) for i in range(S)]


def pair(
    T: int,
    S: int,
    *,
    teacher_layer: int | None = None,
    student_layer: int | None = None,
    field: str = "matching",
    **_,
) -> Pairs:
    """One pair ``(teacher_layer, student_layer)``; negative indices count from the top."""
    if teacher_layer is None or student_layer is None:
        raise ConfigError(
            field,
            "strategy 'pair' needs both teacher_layer and student_layer",
            "set e.g. teacher_layer: -1, student_layer: -1",
        )
    return [
        (
            _normalize(teacher_layer, T, "teacher", f"{field}.teacher_layer"),
            _normalize(student_layer, S, "student", f"{field}.student_layer"),
        )
    ]


def random(T: int, S: int, *, generator: torch.Generator | None = None, field: str = "matching", **_) -> Pairs:
    """RAIL-KD: a sorted random subset of S teacher layers paired with student layers 0..S-1."""
    _need_s_le_t("random", T, S, field)
    chosen = sorted(torch.randperm(T, generator=generator)[:S].tolist())
    return [(t, i) for i, t in enumerate(chosen)]


def explicit(pairs, T: int, S: int, *, field: str = "matching") -> Pairs:
    """Validate and normalize a list of ``[teacher, student]`` pairs; sorted by student layer."""
    if len(pairs) == 0:
        raise ConfigError(field, "the list of layer pairs is empty", "give at least one [teacher, student] pair")
    out: Pairs = []
    for n, p in enumerate(pairs):
        f = f"{field}[{n}]"
        if isinstance(p, (str, bytes)) or not hasattr(p, "__len__") or len(p) != 2:
            raise ConfigError(f, f"{p!r} is not a [teacher_layer, student_layer] pair", "write e.g. [11, 3]")
        out.append((_normalize(p[0], T, "teacher", f), _normalize(p[1], S, "student", f)))
    seen: dict[int, int] = {}
    for n, (_, s) in enumerate(out):
        if s in seen:
            raise ConfigError(
                field,
                f"student layer {s} appears twice (pairs {seen[s]} and {n})",
                "map every student layer at most once; use separate terms for several teacher layers",
            )
        seen[s] = n
    return sorted(out, key=lambda ts: ts[1])


MATCHINGS: dict[str, Callable[..., Pairs]] = {
    "first": first,
    "firstK": first_k,
    "last": last,
    "lastK": last_k,
    "uniform": uniform,
    "skip": uniform,
    "pair": pair,
    "random": random,
}

_BY_LOWER = {name.lower(): name for name in MATCHINGS}


def _strategy_name(strategy: str, field: str) -> str:
    name = _BY_LOWER.get(strategy.lower()) if isinstance(strategy, str) else None
    if name is None:
        raise ConfigError(
            field,
            f"unknown matching strategy {strategy!r}",
            f"use one of {', '.join(MATCHINGS)} or a list of [teacher_layer, student_layer] pairs",
        )
    return name


def resolve_matching(
    strategy: str | list,
    teacher_layers: int,
    student_layers: int,
    *,
    k: int | None = None,
    teacher_layer: int | None = None,
    student_layer: int | None = None,
    generator: torch.Generator | None = None,
    field: str = "matching",
) -> Pairs:
    """The ``(teacher_layer, student_layer)`` pairs of ``strategy``, sorted by student layer.

    ``strategy`` is a name from :data:`MATCHINGS` (case-insensitive) or a list of ``[t, s]`` pairs.
    Errors are :class:`ConfigError` naming ``field``.
    """
    for n, side in ((teacher_layers, "teacher"), (student_layers, "student")):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(field, f"{side} has {n!r} layers", "layer counts must be positive integers")
    if isinstance(strategy, (list, tuple)):
        return explicit(strategy, teacher_layers, student_layers, field=field)
    fn = MATCHINGS[_strategy_name(strategy, field)]
    return fn(
        teacher_layers,
        student_layers,
        k=k,
        teacher_layer=teacher_layer,
        student_layer=student_layer,
        generator=generator,
        field=field,
    )


def is_dynamic(strategy: str | list) -> bool:
    """True when the pairs change between steps (``random``) and must be re-resolved each step."""
    return isinstance(strategy, str) and strategy.lower() == "random"
