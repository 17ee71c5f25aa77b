"""Chunked and fused token-level divergences equal the unchunked losses: value and gradients, every divergence,
chunks that do not divide the rows, the fused output projection, and what the backward pass holds."""

from __future__ import annotations

import weakref

import pytest
import torch
import torch.nn.functional as F

from unikd import losses as L
from unikd.chunked import chunked_divergence, fused_linear_cross_entropy, fused_linear_divergence
from unikd.errors import ConfigError

#: (loss name, its shape parameter): every divergence with a per-row form
CASES = [
    ("kl", None),
    ("soft_ce", None),
    ("reverse_kl", None),
    ("jsd", 0.5),
    ("jsd", 0.0),
    ("jsd", 1.0),
    ("tvd", None),
    ("skew_kl", 0.1),
    ("skew_reverse_kl", 0.3),
]


def _unchunked(name, s, t, temperature, parameter):
    spec = L.REGISTRY["logits"][name]
    extra = {spec.parameter: parameter} if spec.parameter else {}
    return spec.fn(s, t, temperature=temperature, **extra)


@pytest.mark.parametrize(("name", "parameter"), CASES)
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_equals_unchunked_value_and_gradient(name, parameter, chunk):
    g = torch.Generator().manual_seed(0)
    s = (3 * torch.randn(23, 50, generator=g)).requires_grad_()
    t = 3 * torch.randn(23, 50, generator=g)
    ref = _unchunked(name, s, t, 2.0, parameter)
    (ref_grad,) = torch.autograd.grad(ref, s)
    s2 = s.detach().clone().requires_grad_()
    got = chunked_divergence(s2, t, name, temperature=2.0, chunk=chunk, parameter=parameter)
    got.backward()
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(s2.grad, ref_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("name", "parameter"), [("kl", None), ("jsd", 0.5), ("reverse_kl", None)])
def test_fused_projection_equals_the_full_logits_loss(name, parameter):
    """The student's lm_head applied per chunk (logits never stored) and the teacher's too: the same value and the
    same gradients w.r.t. the hidden states, the weight and the bias as the loss on the full logits."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(19, 16, generator=g, requires_grad=True)
    w = (0.5 * torch.randn(40, 16, generator=g)).requires_grad_()
    b = (0.1 * torch.randn(40, generator=g)).requires_grad_()
    th, tw, tb = torch.randn(19, 24, generator=g), torch.randn(40, 24, generator=g), torch.randn(40, generator=g)
    t = F.linear(th, tw, tb)
    ref = _unchunked(name, F.linear(h, w, b), t, 1.5, parameter)
    ref_grads = torch.autograd.grad(ref, (h, w, b))
    for teacher in (t, (th, tw, tb)):
        leaves = [x.detach().clone().requires_grad_() for x in (h, w, b)]
        got = fused_linear_divergence(*leaves, teacher, name, temperature=1.5, chunk=5, parameter=parameter)
        got.backward()
        assert got.item() == pytest.approx(ref.item(), rel=1e-5)
        for leaf, want in zip(leaves, ref_grads):
            torch.testing.assert_close(leaf.grad, want, rtol=1e-5, atol=1e-6)


def test_the_incoming_gradient_scales_and_no_rows_give_zero():
    s = torch.randn(6, 9, requires_grad=True)
    t = torch.randn(6, 9)
    (3.0 * chunked_divergence(s, t, chunk=4)).backward()
    ref = torch.autograd.grad(3.0 * L.kl_div(s, t), s)[0]
    torch.testing.assert_close(s.grad, ref, rtol=1e-5, atol=1e-7)
    empty = torch.zeros(0, 9, requires_grad=True)
    value = chunked_divergence(empty, torch.zeros(0, 9))
    value.backward()
    assert value.item() == 0.0 and empty.grad.shape == (0, 9)


def test_the_backward_pass_holds_one_gradient_not_the_intermediates():
    """What autograd keeps for the backward pass, summed from the saved-tensor hooks: the unchunked JSD keeps
    several [N, V] fp32 tensors; the chunked one keeps the gradient [N, V]; the fused one [N, d] + [V, d]."""
    n, v, d = 64, 500, 16
    h = torch.randn(n, d, requires_grad=True)
    w = torch.randn(v, d, requires_grad=True)
    t = torch.randn(n, v)

    def saved_bytes(fn) -> int:
        """Bytes of the tensors saved for backward that are still alive once ``fn``'s output exists (a chunk's
        own graph, saved and freed inside the forward, does not count)."""
        held = []

        def pack(x):
            held.append((weakref.ref(x), x.numel() * x.element_size(), x.untyped_storage().data_ptr()))
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            out = fn()
        alive = {ptr: size for ref, size, ptr in held if ref() is not None}
        del out
        return sum(alive.values()) - sum(x.numel() * 4 for x in (h, w) if x.untyped_storage().data_ptr() in alive)

    full = saved_bytes(lambda: L.REGISTRY["logits"]["jsd"].fn(F.linear(h, w), t, beta=0.5))
    chunked = saved_bytes(lambda: chunked_divergence(F.linear(h, w), t, "jsd", chunk=8, parameter=0.5))
    fused = saved_bytes(lambda: fused_linear_divergence(h, w, None, t, "jsd", chunk=8, parameter=0.5))
    one = n * v * 4  # one [N, V] fp32 tensor
    assert full >= 4 * one
    assert one <= chunked <= 1.1 * one  # the gradient w.r.t. the logits (h and w, the user's, not counted)
    assert fused <= 1.1 * (n + v) * d * 4  # the gradients w.r.t. h and w


def test_bad_arguments_are_config_errors():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    with pytest.raises(ConfigError) as exc:
        chunked_divergence(s, t, "mse")
    assert exc.value.field == "loss"
    with pytest.raises(ConfigError) as exc:
        chunked_divergence(s, t, chunk=0)
    assert exc.value.field == "train.logits_chunk_tokens"
    with pytest.raises(ConfigError):
        fused_linear_divergence(torch.randn(4, 3), torch.randn(6, 3), None, t)  # vocabulary 6 vs 5


@pytest.mark.parametrize("bias", [False, True])
def test_fused_cross_entropy_equals_the_cross_entropy_of_the_full_logits(bias):
    """The fused next-token loss (train.fused_output_projection's hard-label loss): value and gradients w.r.t. the
    hidden states, the projection and its bias equal F.cross_entropy over the full logits, chunks of 4 over 13
    rows (the last one short), to fp32 rounding (1e-5 relative)."""
    torch.manual_seed(3)
    h = torch.randn(13, 6, requires_grad=True)
    w = torch.randn(50, 6, requires_grad=True)
    b = torch.randn(50, requires_grad=True) if bias else None
    y = torch.randint(0, 50, (13,))
    leaves = [h, w] + ([b] if bias else [])
    full = F.cross_entropy(F.linear(h, w, b), y)
    fused = fused_linear_cross_entropy(h, w, b, y, chunk=4)
    assert fused.item() == pytest.approx(full.item(), rel=1e-5)
    for g_full, g_fused in zip(torch.autograd.grad(3 * full, leaves), torch.autograd.grad(3 * fused, leaves)):
        torch.testing.assert_close(g_fused, g_full, rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError) as exc:
        fused_linear_cross_entropy(h, w, b, y, chunk=0)
    assert exc.value.field == "train.logits_chunk_tokens"
