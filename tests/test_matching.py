"""Layer-matching strategies: the documented pairs, written out literally."""

from __future__ import annotations

import pytest
import torch

from unikd.errors import ConfigError
from unikd.matching import MATCHINGS, is_dynamic, resolve_matching

EXPECTED = {
    # (strategy, T, S): pairs
    ("first", 12, 4): [(0, 0), (1, 1), (2, 2), (3, 3)],
    ("first", 6, 3): [(0, 0), (1, 1), (2, 2)],
    ("first", 12, 6): [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5)],
    ("first", 24, 6): [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5)],
    ("last", 12, 4): [(8, 0), (9, 1), (10, 2), (11, 3)],
    ("last", 6, 3): [(3, 0), (4, 1), (5, 2)],
    ("last", 12, 6): [(6, 0), (7, 1), (8, 2), (9, 3), (10, 4), (11, 5)],
    ("last", 24, 6): [(18, 0), (19, 1), (20, 2), (21, 3), (22, 4), (23, 5)],
    ("uniform", 12, 4): [(2, 0), (5, 1), (8, 2), (11, 3)],
    ("uniform", 6, 3): [(1, 0), (3, 1), (5, 2)],
    ("uniform", 12, 6): [(1, 0), (3, 1), (5, 2), (7, 3), (9, 4), (11, 5)],
    ("uniform", 24, 6): [(3, 0), (7, 1), (11, 2), (15, 3), (19, 4), (23, 5)],
    ("skip", 12, 4): [(2, 0), (5, 1), (8, 2), (11, 3)],
    ("skip", 6, 3): [(1, 0), (3, 1), (5, 2)],
    ("skip", 12, 6): [(1, 0), (3, 1), (5, 2), (7, 3), (9, 4), (11, 5)],
    ("skip", 24, 6): [(3, 0), (7, 1), (11, 2), (15, 3), (19, 4), (23, 5)],
    # k defaults to S
    ("firstK", 12, 4): [(0, 0), (1, 1), (2, 2), (3, 3)],
    ("firstK", 6, 3): [(0, 0), (1, 1), (2, 2)],
    ("lastK", 12, 4): [(8, 0), (9, 1), (10, 2), (11, 3)],
    ("lastK", 24, 6): [(18, 0), (19, 1), (20, 2), (21, 3), (22, 4), (23, 5)],
}


@pytest.mark.parametrize("key", list(EXPECTED), ids=[f"{s}-{t}to{n}" for s, t, n in EXPECTED])
def test_documented_pairs(key):
    strategy, T, S = key
    assert resolve_matching(strategy, T, S) == EXPECTED[key]


EXPECTED_K = {
    ("firstK", 12, 4, 2): [(0, 0), (1, 1)],
    ("firstK", 6, 3, 1): [(0, 0)],
    ("firstK", 12, 6, 3): [(0, 0), (1, 1), (2, 2)],
    ("firstK", 24, 6, 4): [(0, 0), (1, 1), (2, 2), (3, 3)],
    ("lastK", 12, 4, 2): [(10, 2), (11, 3)],
    ("lastK", 6, 3, 2): [(4, 1), (5, 2)],
    ("lastK", 12, 6, 3): [(9, 3), (10, 4), (11, 5)],
    ("lastK", 24, 6, 4): [(20, 2), (21, 3), (22, 4), (23, 5)],
    ("lastK", 24, 6, 1): [(23, 5)],
}


@pytest.mark.parametrize("key", list(EXPECTED_K), ids=[f"{s}-{t}to{n}-k{k}" for s, t, n, k in EXPECTED_K])
def test_k_strategies(key):
    strategy, T, S, k = key
    assert resolve_matching(strategy, T, S, k=k) == EXPECTED_K[key]


@pytest.mark.parametrize(
    "T,S,tl,sl,expected",
    [
        (12, 4, -1, -1, [(11, 3)]),
        (6, 3, -3, -3, [(3, 0)]),
        (12, 6, -3, -3, [(9, 3)]),
        (24, 6, 0, 0, [(0, 0)]),
        (24, 6, 17, -2, [(17, 4)]),
    ],
)
def test_pair(T, S, tl, sl, expected):
    assert resolve_matching("pair", T, S, teacher_layer=tl, student_layer=sl) == expected


@pytest.mark.parametrize(
    "T,S,pairs,expected",
    [
        (12, 4, [[11, 3], [2, 0], [-7, -3]], [(2, 0), (5, 1), (11, 3)]),
        (6, 3, [(0, 2), (5, 0)], [(5, 0), (0, 2)]),
        (12, 6, [[-1, -1]], [(11, 5)]),
        (24, 6, [[23, 5], [3, 0], [3, 1]], [(3, 0), (3, 1), (23, 5)]),
    ],
)
def test_explicit_pairs(T, S, pairs, expected):
    assert resolve_matching(pairs, T, S) == expected


@pytest.mark.parametrize("T,S", [(12, 4), (6, 3), (12, 6), (24, 6)])
def test_random_sorted_size_reproducible_and_varying(T, S):
    draws = []
    g = torch.Generator().manual_seed(1234)
    for _ in range(20):
        pairs = resolve_matching("random", T, S, generator=g)
        assert [s for _, s in pairs] == list(range(S))
        teachers = [t for t, _ in pairs]
        assert teachers == sorted(teachers) and len(set(teachers)) == S
        assert all(0 <= t < T for t in teachers)
        draws.append(pairs)
    # same seed -> same sequence of draws
    g2 = torch.Generator().manual_seed(1234)
    assert [resolve_matching("random", T, S, generator=g2) for _ in range(20)] == draws
    # the draws vary between steps (S < T here)
    assert len({tuple(d) for d in draws}) > 1


def test_random_with_s_equal_t_is_identity():
    assert resolve_matching("random", 3, 3, generator=torch.Generator().manual_seed(0)) == [(0, 0), (1, 1), (2, 2)]


def test_registry_and_dynamic():
    assert set(MATCHINGS) == {"first", "firstK", "last", "lastK", "uniform", "skip", "pair", "random"}
    assert MATCHINGS["skip"] is MATCHINGS["uniform"]
    assert is_dynamic("random") is True
    for name in ("first", "firstK", "last", "lastK", "uniform", "skip", "pair"):
        assert is_dynamic(name) is False
    assert is_dynamic([[11, 3]]) is False
    # names are case-insensitive
    assert resolve_matching("LASTK", 12, 4, k=1) == [(11, 3)]


F = "plan.terms[1].matching"


@pytest.mark.parametrize(
    "call,field,words",
    [
        (lambda: resolve_matching("middle", 12, 4, field=F), F, ["middle", "uniform", "lastK", "random"]),
        (lambda: resolve_matching("firstK", 12, 4, k=5, field=F), F + ".k", ["k=5", "1 <= k <= 4"]),
        (lambda: resolve_matching("lastK", 12, 4, k=0, field=F), F + ".k", ["k=0"]),
        (lambda: resolve_matching("lastK", 3, 6, field=F), F + ".k", ["1 <= k <= 3"]),
        (lambda: resolve_matching("uniform", 4, 6, field=F), F, ["6 student > 4 teacher"]),
        (lambda: resolve_matching("last", 4, 6, field=F), F, ["student layers <= teacher layers"]),
        (lambda: resolve_matching("first", 4, 6, field=F), F, ["Fix:"]),
        (lambda: resolve_matching("random", 4, 6, field=F), F, ["Fix:"]),
        (
            lambda: resolve_matching("pair", 12, 4, teacher_layer=12, student_layer=0, field=F),
            F + ".teacher_layer",
            ["teacher layer 12", "0..11"],
        ),
        (
            lambda: resolve_matching("pair", 12, 4, teacher_layer=0, student_layer=-5, field=F),
            F + ".student_layer",
            ["student layer -5", "0..3"],
        ),
        (lambda: resolve_matching("pair", 12, 4, teacher_layer=3, field=F), F, ["student_layer"]),
        (lambda: resolve_matching([[11, 3], [12, 0]], 12, 4, field=F), F + "[1]", ["teacher layer 12"]),
        (lambda: resolve_matching([[11, 3], [1, 4]], 12, 4, field=F), F + "[1]", ["student layer 4"]),
        (lambda: resolve_matching([[11, 3], [8, -1]], 12, 4, field=F), F, ["student layer 3 appears twice"]),
        (lambda: resolve_matching([[11, 3, 1]], 12, 4, field=F), F + "[0]", ["pair"]),
        (lambda: resolve_matching([], 12, 4, field=F), F, ["empty"]),
    ],
)
def test_errors_name_the_field(call, field, words):
    with pytest.raises(ConfigError) as e:
        call()
    assert e.value.field == field
    msg = str(e.value)
    assert msg.startswith(field + ":")
    assert e.value.fix
    for w in words:
        assert w in msg, (w, msg)


def test_default_field_name():
    with pytest.raises(ConfigError) as e:
        resolve_matching("nope", 12, 4)
    assert e.value.field == "matching"
