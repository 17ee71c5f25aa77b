"""Token-level divergences (unikd.divergences) against direct float64 formulas on small tensors, endpoints and
directions included: forward vs reverse KL is where other tools' users keep finding swaps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unikd import divergences as D
from unikd import losses as L
from unikd.errors import ConfigError
from unikd.knowledge.logits import LogitsTerm, scored_positions


def _logits(seed: int = 0, shape=(2, 5, 7)):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(*shape, generator=g, dtype=torch.float64) * 2
    t = torch.randn(*shape, generator=g, dtype=torch.float64) * 2
    mask = torch.ones(shape[:-1], dtype=torch.long)
    mask[0, -2:] = 0
    mask[1, 0] = 0
    return s, t, mask


def _kl(a, b):  # rows of KL(a || b) from probabilities, float64, a written-out sum
    return (a * (a.log() - b.log())).sum(-1)


def _reference(name: str, s, t, mask, T: float, param: float | None):
    p, q = F.softmax(t / T, -1), F.softmax(s / T, -1)
    if name == "kl":
        rows = _kl(p, q)
    elif name == "reverse_kl":
        rows = _kl(q, p)
    elif name == "jsd":
        m = param * p + (1 - param) * q
        rows = param * _kl(p, m) + (1 - param) * _kl(q, m)
    elif name == "tvd":
        rows = 0.5 * (p - q).abs().sum(-1)
    elif name == "skew_kl":
        rows = _kl(p, param * p + (1 - param) * q)
    elif name == "skew_reverse_kl":
        rows = _kl(q, param * q + (1 - param) * p)
    keep = mask.bool()
    return rows[keep].mean() * T**2


CASES = [
    ("kl", None),
    ("reverse_kl", None),
    ("jsd", 0.5),
    ("jsd", 0.1),
    ("jsd", 0.9),
    ("tvd", None),
    ("skew_kl", 0.1),
    ("skew_kl", 0.5),
    ("skew_reverse_kl", 0.1),
    ("skew_reverse_kl", 0.7),
]


@pytest.mark.parametrize("name,param", CASES)
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_each_divergence_equals_its_formula(name, param, T):
    s, t, mask = _logits()
    spec = L.loss_spec("logits", name)
    extra = {spec.parameter: param} if spec.parameter else {}
    got = spec.fn(s.float(), t.float(), temperature=T, mask=mask, t2_scaling=True, **extra)
    want = _reference(name, s, t, mask, T, param)
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-7)


def test_jsd_endpoints_are_forward_and_reverse_kl_as_trl_defines_them():
    s, t, mask = _logits(1)
    forward = L.kl_div(s.float(), t.float(), mask=mask)
    reverse = D.reverse_kl(s.float(), t.float(), mask=mask)
    assert forward.item() != pytest.approx(reverse.item(), rel=1e-3)  # the two directions differ on these tensors
    assert D.jsd(s.float(), t.float(), mask=mask, beta=0.0).item() == pytest.approx(forward.item(), rel=1e-6)
    assert D.jsd(s.float(), t.float(), mask=mask, beta=1.0).item() == pytest.approx(reverse.item(), rel=1e-6)
    # the reverse KL is the expectation under the student: KL(q || p) with q = softmax(student)
    q, p = F.softmax(s, -1), F.softmax(t, -1)
    assert reverse.item() == pytest.approx(_kl(q, p)[mask.bool()].mean().item(), rel=1e-6)


def test_jsd_matches_trls_generalized_jsd_written_with_kl_div():
    """TRL's generalized_jsd_loss builds the mixture with logsumexp and F.kl_div(mixture, x, log_target=True);
    the same construction here, independently of unikd's code."""
    s, t, mask = _logits(2)
    beta = 0.3
    ls, lt = F.log_softmax(s, -1), F.log_softmax(t, -1)
    b = torch.tensor(beta, dtype=torch.float64)
    mix = torch.logsumexp(torch.stack([ls + torch.log(1 - b), lt + torch.log(b)]), dim=0)
    kl_t = F.kl_div(mix, lt, reduction="none", log_target=True).sum(-1)
    kl_s = F.kl_div(mix, ls, reduction="none", log_target=True).sum(-1)
    want = (beta * kl_t + (1 - beta) * kl_s)[mask.bool()].mean()
    got = D.jsd(s.float(), t.float(), mask=mask, beta=beta, t2_scaling=False)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_skew_endpoints():
    s, t, mask = _logits(3)
    sf, tf = s.float(), t.float()
    assert D.skew_kl(sf, tf, mask=mask, alpha=0.0).item() == pytest.approx(L.kl_div(sf, tf, mask=mask).item(), 1e-6)
    assert D.skew_reverse_kl(sf, tf, mask=mask, alpha=0.0).item() == pytest.approx(
        D.reverse_kl(sf, tf, mask=mask).item(), 1e-6
    )
    # every divergence is 0 between a distribution and itself
    for name, param in CASES:
        spec = L.loss_spec("logits", name)
        extra = {spec.parameter: param} if spec.parameter else {}
        assert spec.fn(sf, sf.clone(), mask=mask, **extra).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name,param", CASES[1:])
def test_masked_rows_reach_neither_value_nor_gradient(name, param):
    s, t, mask = _logits(4)
    spec = L.loss_spec("logits", name)
    extra = {spec.parameter: param} if spec.parameter else {}
    s1 = s.float().requires_grad_()
    v1 = spec.fn(s1, t.float(), mask=mask, **extra)
    v1.backward()
    s_bad, t_bad = s.float().clone(), t.float().clone()
    s_bad[0, -1] = float("nan")
    t_bad[1, 0] = float("inf")
    s2 = s_bad.requires_grad_()
    v2 = spec.fn(s2, t_bad, mask=mask, **extra)
    v2.backward()
    assert v2.item() == pytest.approx(v1.item(), rel=1e-6)
    assert torch.isfinite(s2.grad).all()
    assert torch.equal(s2.grad[~mask.bool()], torch.zeros_like(s2.grad[~mask.bool()]))
    assert torch.allclose(s1.grad, s2.grad)
    assert t_bad.grad is None


def test_gradient_matches_the_reference_formula():
    s, t, mask = _logits(5)
    s64 = s.clone().requires_grad_()
    _reference("jsd", s64, t, mask, 1.0, 0.4).backward()
    s32 = s.float().requires_grad_()
    D.jsd(s32, t.float(), mask=mask, beta=0.4).backward()
    assert torch.allclose(s32.grad.double(), s64.grad, rtol=1e-4, atol=1e-7)


def test_teacher_minus_inf_entries_count_zero():
    s, t, mask = _logits(6)
    t = t.float().clone()
    t[..., 0] = float("-inf")  # the teacher never produces token 0
    for name in ("jsd", "tvd", "skew_kl", "skew_reverse_kl"):  # the mixture keeps every log finite
        value = L.loss_spec("logits", name).fn(s.float(), t, mask=mask)
        assert torch.isfinite(value), name
    # the reverse KL is infinite there, as it is mathematically: the student puts mass where p = 0
    assert D.reverse_kl(s.float(), t, mask=mask).item() == float("inf")


def test_no_scored_row_is_zero_and_keeps_the_graph():
    s, t, _ = _logits(7)
    s = s.float().requires_grad_()
    value = D.reverse_kl(s, t.float(), mask=torch.zeros(2, 5, dtype=torch.long))
    value.backward()
    assert value.item() == 0.0 and torch.equal(s.grad, torch.zeros_like(s))


def test_out_of_range_parameters_are_clear_errors():
    s, t, mask = _logits()
    with pytest.raises(ConfigError, match="beta"):
        D.jsd(s.float(), t.float(), mask=mask, beta=1.5)
    with pytest.raises(ConfigError, match="alpha"):
        D.skew_kl(s.float(), t.float(), mask=mask, alpha=1.0)
    with pytest.raises(ValueError, match="beta"):
        LogitsTerm(knowledge="logits", loss="jsd", beta=-0.1)
    with pytest.raises(ValueError, match="alpha: the jsd loss has no alpha"):
        LogitsTerm(knowledge="logits", loss="jsd", alpha=0.2)
    assert LogitsTerm(knowledge="logits", loss="jsd").parameter_value == 0.5
    assert LogitsTerm(knowledge="logits", loss="skew_kl").parameter_value == 0.1


def test_decoder_positions_are_scored_where_the_next_token_has_a_label():
    labels = torch.tensor([[-100, -100, 5, 6, 2, -100], [-100, 7, 8, -100, -100, -100]])
    attention = torch.ones_like(labels)
    causal = scored_positions(labels, attention, causal=True)
    assert causal.tolist() == [[0, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]]
    encoder = scored_positions(labels, attention, causal=False)
    assert encoder.tolist() == (labels != -100).long().tolist()
    assert scored_positions(None, attention, causal=True) is attention
