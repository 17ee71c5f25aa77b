"""Every loss against a hand-written reference (plain Python loops over lists, not the library)."""

from __future__ import annotations

import math

import pytest
import torch

from unikd import losses as L
from unikd.errors import ConfigError

MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 1, 1, 1]])  # right, right, left padding
B, SEQ = MASK.shape


def rnd(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


# ---- plain-Python reference helpers ----------------------------------------------------------
def softmax_list(xs, T=1.0):
    mx = max(x / T for x in xs)
    e = [math.exp(x / T - mx) for x in xs]
    z = sum(e)
    return [v / z for v in e]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def norm(a):
    return math.sqrt(dot(a, a))


def valid_tokens(mask_row):
    return [i for i, m in enumerate(mask_row) if m]


# ---- logits ----------------------------------------------------------------------------------
def ref_ce_kl_rows(s_rows, t_rows, T):
    ces, kls, ents = [], [], []
    for s, t in zip(s_rows, t_rows):
        p, q = softmax_list(t, T), softmax_list(s, T)
        ces.append(-sum(pi * math.log(qi) for pi, qi in zip(p, q)))
        kls.append(sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q)))
        ents.append(-sum(pi * math.log(pi) for pi in p))
    n = len(s_rows)
    return sum(ces) / n, sum(kls) / n, sum(ents) / n


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_sequence_level_soft_ce_and_kl(T):
    s, t = rnd(3, 5, seed=1, scale=2), rnd(3, 5, seed=2, scale=2)
    ce, kl, ent = ref_ce_kl_rows(s.tolist(), t.tolist(), T)
    assert L.soft_cross_entropy(s, t, T, t2_scaling=False).item() == pytest.approx(ce, rel=1e-5)
    assert L.kl_div(s, t, T, t2_scaling=False).item() == pytest.approx(kl, rel=1e-5, abs=1e-7)
    assert L.soft_cross_entropy(s, t, T).item() == pytest.approx(ce * T * T, rel=1e-5)
    assert L.kl_div(s, t, temperature=T).item() == pytest.approx(kl * T * T, rel=1e-5, abs=1e-7)
    # identity: soft CE - KL = teacher entropy (at temperature T, scaled by T^2 when asked)
    diff = L.soft_cross_entropy(s, t, T) - L.kl_div(s, t, T)
    assert diff.item() == pytest.approx(ent * T * T, rel=1e-5)


def test_temperature_values_literal():
    # two classes, teacher logits [0, 0] -> p = [.5, .5]; student [0, 2T*ln 3]... pick simple numbers
    s = torch.tensor([[0.0, math.log(3.0) * 2]])  # at T=2: q = softmax([0, ln3]) = [1/4, 3/4]
    t = torch.tensor([[0.0, 0.0]])
    ce = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert L.soft_cross_entropy(s, t, 2.0, t2_scaling=False).item() == pytest.approx(ce, rel=1e-6)
    assert L.soft_cross_entropy(s, t, 2.0).item() == pytest.approx(4 * ce, rel=1e-6)
    assert L.kl_div(s, t, 2.0).item() == pytest.approx(4 * kl, rel=1e-6)
    assert L.kl_div(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_token_level_logits_with_mask():
    s, t = rnd(B, SEQ, 6, seed=3, scale=3), rnd(B, SEQ, 6, seed=4, scale=3)
    rows_s = [s[b, i].tolist() for b in range(B) for i in valid_tokens(MASK[b].tolist())]
    rows_t = [t[b, i].tolist() for b in range(B) for i in valid_tokens(MASK[b].tolist())]
    ce, kl, _ = ref_ce_kl_rows(rows_s, rows_t, 2.0)
    assert L.soft_cross_entropy(s, t, 2.0, MASK).item() == pytest.approx(4 * ce, rel=1e-5)
    assert L.kl_div(s, t, 2.0, MASK, t2_scaling=False).item() == pytest.approx(kl, rel=1e-5)
    mse = sum((a - b) ** 2 for rs, rt in zip(rows_s, rows_t) for a, b in zip(rs, rt)) / (len(rows_s) * 6)
    assert L.logits_mse(s, t, MASK).item() == pytest.approx(mse, rel=1e-5)


def test_soft_targets_with_masked_vocabulary_entries():
    """A teacher whose logits are -inf on some classes (a masked vocabulary): p = 0 there, its terms are 0
    (the CPU's one-map path gives NaN on such input and hands over to the exact path), gradients finite."""
    s, t = rnd(2, 5, seed=7, scale=2), rnd(2, 5, seed=8, scale=2)
    t_masked = t.clone()
    t_masked[:, 3:] = float("-inf")
    p = [softmax_list(row[:3], 2.0) + [0.0, 0.0] for row in t.tolist()]
    q = [softmax_list(row, 2.0) for row in s.tolist()]
    ce = sum(-sum(pi * math.log(qi) for pi, qi in zip(pr, qr) if pi > 0) for pr, qr in zip(p, q)) / 2
    kl = sum(sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(pr, qr) if pi > 0) for pr, qr in zip(p, q)) / 2
    for fn, ref in ((L.soft_cross_entropy, ce), (L.kl_div, kl)):
        x = s.clone().requires_grad_(True)
        loss = fn(x, t_masked, 2.0, t2_scaling=False)
        loss.backward()
        assert loss.item() == pytest.approx(ref, rel=1e-5)
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_logits_mse_sequence_level():
    s, t = rnd(2, 3, seed=5), rnd(2, 3, seed=6)
    ref = sum((a - b) ** 2 for rs, rt in zip(s.tolist(), t.tolist()) for a, b in zip(rs, rt)) / 6
    assert L.logits_mse(s, t).item() == pytest.approx(ref, rel=1e-6)


def test_bad_temperature_and_mask_shape():
    s = rnd(2, 3)
    with pytest.raises(ConfigError, match="temperature"):
        L.kl_div(s, s, temperature=0.0)
    with pytest.raises(ConfigError, match="mask"):
        L.hidden_mse(rnd(2, 4, 3), rnd(2, 4, 3), torch.ones(2, 5))


# ---- hidden states ---------------------------------------------------------------------------
def toks(x, b):
    return [x[b, i].tolist() for i in valid_tokens(MASK[b].tolist())]


def test_hidden_mse():
    s, t = rnd(B, SEQ, 3, seed=7), rnd(B, SEQ, 3, seed=8)
    tot, n = 0.0, 0
    for b in range(B):
        for vs, vt in zip(toks(s, b), toks(t, b)):
            tot += sum((x - y) ** 2 for x, y in zip(vs, vt))
            n += 3
    assert L.hidden_mse(s, t, MASK).item() == pytest.approx(tot / n, rel=1e-6)


def test_cosine():
    s, t = rnd(B, SEQ, 3, seed=9), rnd(B, SEQ, 3, seed=10)
    vals = [1 - dot(vs, vt) / (norm(vs) * norm(vt)) for b in range(B) for vs, vt in zip(toks(s, b), toks(t, b))]
    assert L.cosine(s, t, MASK).item() == pytest.approx(sum(vals) / len(vals), rel=1e-5)
    assert L.cosine(s, 3 * s, MASK).item() == pytest.approx(0.0, abs=1e-6)


def test_pkd_uses_first_valid_token():
    s, t = rnd(B, SEQ, 3, seed=11), rnd(B, SEQ, 3, seed=12)
    vals = []
    for b in range(B):
        i = valid_tokens(MASK[b].tolist())[0]  # 0, 0, 1 (left padded)
        vs, vt = s[b, i].tolist(), t[b, i].tolist()
        ns, nt = norm(vs), norm(vt)
        vals.append(sum((x / ns - y / nt) ** 2 for x, y in zip(vs, vt)))
    assert L.pkd(s, t, MASK).item() == pytest.approx(sum(vals) / B, rel=1e-5)
    # without a mask: token 0 of every example
    vals0 = []
    for b in range(B):
        vs, vt = s[b, 0].tolist(), t[b, 0].tolist()
        vals0.append(sum((x / norm(vs) - y / norm(vt)) ** 2 for x, y in zip(vs, vt)))
    assert L.pkd(s, t).item() == pytest.approx(sum(vals0) / B, rel=1e-5)


def test_gram_width_free():
    s, t = rnd(B, SEQ, 3, seed=13), rnd(B, SEQ, 5, seed=14)
    tot, n = 0.0, 0
    for b in range(B):
        vs, vt = toks(s, b), toks(t, b)
        for i in range(len(vs)):
            for j in range(len(vs)):
                gs = dot(vs[i], vs[j]) / 3
                gt = dot(vt[i], vt[j]) / 5
                tot += (gs - gt) ** 2
                n += 1
    assert L.gram(s, t, MASK).item() == pytest.approx(tot / n, rel=1e-5)


def test_fsp():
    s_in, s_out = rnd(B, SEQ, 3, seed=15), rnd(B, SEQ, 3, seed=16)
    t_in, t_out = rnd(B, SEQ, 3, seed=17), rnd(B, SEQ, 3, seed=18)

    def flow(a, c, b):
        va, vc = toks(a, b), toks(c, b)
        n = len(va)
        return [[sum(va[l][i] * vc[l][j] for l in range(n)) / n for j in range(3)] for i in range(3)]

    per_ex = []
    for b in range(B):
        gs, gt = flow(s_in, s_out, b), flow(t_in, t_out, b)
        per_ex.append(sum((gs[i][j] - gt[i][j]) ** 2 for i in range(3) for j in range(3)) / 9)
    assert L.fsp(s_in, s_out, t_in, t_out, MASK).item() == pytest.approx(sum(per_ex) / B, rel=1e-5)
    with pytest.raises(ConfigError, match="fsp"):
        L.fsp(s_in, s_out, rnd(B, SEQ, 4), t_out, MASK)


def test_nst_mmd_polynomial_kernel():
    s, t = rnd(B, SEQ, 3, seed=19), rnd(B, SEQ, 5, seed=20)
    per_ex = []
    for b in range(B):
        vs, vt = toks(s, b), toks(t, b)
        # channels: vectors over the valid tokens, L2-normalized
        cs = [[tok[c] for tok in vs] for c in range(3)]
        ct = [[tok[c] for tok in vt] for c in range(5)]
        cs = [[x / norm(ch) for x in ch] for ch in cs]
        ct = [[x / norm(ch) for x in ch] for ch in ct]

        def mean_k(a, c):
            return sum(dot(x, y) ** 2 for x in a for y in c) / (len(a) * len(c))

        per_ex.append(mean_k(ct, ct) + mean_k(cs, cs) - 2 * mean_k(cs, ct))
    assert L.nst(s, t, MASK).item() == pytest.approx(sum(per_ex) / B, rel=1e-4)
    assert L.mmd is L.nst
    assert L.nst(s, s, MASK).item() == pytest.approx(0.0, abs=1e-6)


def test_shape_mismatch_needs_projection():
    with pytest.raises(ConfigError, match="project"):
        L.hidden_mse(rnd(2, 3, 4), rnd(2, 3, 5))


# ---- attention -------------------------------------------------------------------------------
def test_valid_pairs_literal():
    m = torch.tensor([[1, 1, 0]])
    enc = L.valid_pairs(m, causal=False)
    dec = L.valid_pairs(m, causal=True)
    assert enc.shape == (1, 1, 3, 3) and enc.dtype == torch.bool
    assert enc[0, 0].int().tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]
    assert dec[0, 0].int().tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]


def test_reduce_heads():
    x = rnd(2, 3, 4, 4, seed=21)
    assert torch.equal(L.reduce_heads(x, "per_head"), x)
    assert L.reduce_heads(x, "sum").shape == (2, 1, 4, 4)
    assert L.reduce_heads(x, "sum")[1, 0, 2, 3].item() == pytest.approx(sum(x[1, h, 2, 3].item() for h in range(3)))
    assert L.reduce_heads(x, "mean")[0, 0, 1, 0].item() == pytest.approx(
        sum(x[0, h, 1, 0].item() for h in range(3)) / 3
    )
    with pytest.raises(ConfigError, match="per_head"):
        L.reduce_heads(x, "max")


def test_masked_softmax():
    scores = rnd(1, 2, 3, 3, seed=22).to(torch.bfloat16)
    valid = L.valid_pairs(torch.tensor([[1, 1, 0]]), causal=True)
    p = L.masked_softmax(scores, valid)
    assert p.dtype == torch.float32
    for h in range(2):
        assert p[0, h, 0].tolist() == [1.0, 0.0, 0.0]
        ref = softmax_list(scores[0, h, 1, :2].float().tolist())
        assert p[0, h, 1].tolist() == pytest.approx(ref + [0.0], rel=1e-6)
        assert p[0, h, 2].tolist() == [0.0, 0.0, 0.0]  # fully invalid row -> zeros, not NaN


def attn_mask_and_valid(causal):
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    return m, L.valid_pairs(m, causal)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_mse_ignores_min_and_inf(causal):
    _, valid = attn_mask_and_valid(causal)
    s, t = rnd(2, 3, 4, 4, seed=23), rnd(2, 3, 4, 4, seed=24)
    tot, n = 0.0, 0
    for b in range(2):
        for h in range(3):
            for q in range(4):
                for k in range(4):
                    if valid[b, 0, q, k]:
                        tot += (s[b, h, q, k].item() - t[b, h, q, k].item()) ** 2
                        n += 1
    ref = tot / n
    assert L.attention_mse(s, t, valid).item() == pytest.approx(ref, rel=1e-6)
    s2 = s.masked_fill(~valid, torch.finfo(torch.float32).min)
    t2 = t.masked_fill(~valid, float("-inf"))
    s2.requires_grad_(True)
    loss = L.attention_mse(s2, t2, valid)
    loss.backward()
    assert loss.item() == pytest.approx(ref, rel=1e-6)
    assert torch.isfinite(s2.grad).all()
    # the hand-written backward: 2 (s - t) / n on valid entries, exactly 0 elsewhere
    expected = torch.where(valid, 2 * (s - t) / n, 0.0).expand_as(s)
    torch.testing.assert_close(s2.grad, expected, atol=1e-7, rtol=1e-6)
    # bf16 maps (autocast): computed in fp32, the gradient comes back in the student's dtype
    s3 = s.bfloat16().requires_grad_(True)
    loss3 = L.attention_mse(s3, t.bfloat16(), valid)
    loss3.backward()
    assert loss3.dtype == torch.float32 and s3.grad.dtype == torch.bfloat16
    torch.testing.assert_close(
        s3.grad.float(),
        torch.where(valid, 2 * (s3.float() - t.bfloat16().float()) / n, 0.0).expand_as(s),
        atol=1e-2,
        rtol=1e-2,
    )


def ref_attn_kl_ce(sp, tp, valid):
    kls, ces = [], []
    for b in range(sp.shape[0]):
        for h in range(sp.shape[1]):
            for q in range(sp.shape[2]):
                keys = [k for k in range(sp.shape[3]) if valid[b, 0, q, k]]
                if not keys:
                    continue
                kl = ce = 0.0
                for k in keys:
                    pt, ps = tp[b, h, q, k].item(), sp[b, h, q, k].item()
                    if pt > 0:
                        kl += pt * (math.log(pt) - math.log(ps))
                        ce -= pt * math.log(ps)
                kls.append(kl)
                ces.append(ce)
    return sum(kls) / len(kls), sum(ces) / len(ces)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_kl_and_ce(causal):
    _, valid = attn_mask_and_valid(causal)
    sp = L.masked_softmax(rnd(2, 3, 4, 4, seed=25), valid)
    tscores = rnd(2, 3, 4, 4, seed=26)
    tscores[0, 1, 2, 1] = -1e4  # teacher prob exactly 0 at a valid key: 0*log0 = 0
    tp = L.masked_softmax(tscores, valid)
    assert tp[0, 1, 2, 1].item() == 0.0
    kl, ce = ref_attn_kl_ce(sp, tp, valid)
    assert L.attention_kl(sp, tp, valid).item() == pytest.approx(kl, rel=1e-5)
    assert L.attention_ce(sp, tp, valid).item() == pytest.approx(ce, rel=1e-5)
    assert L.attention_kl(tp, tp, valid).item() == pytest.approx(0.0, abs=1e-6)


def test_attention_kl_clamps_zero_student_prob():
    valid = torch.ones(1, 1, 1, 2, dtype=torch.bool)
    sp = torch.tensor([[[[1.0, 0.0]]]])
    tp = torch.tensor([[[[0.5, 0.5]]]])
    val = L.attention_kl(sp, tp, valid).item()
    assert math.isfinite(val) and val > 10


# ---- relations (MiniLM / MiniLMv2) -----------------------------------------------------------
def ref_relation_kl(s_heads, t_heads, num_rel, mask, causal=False):
    """Step by step: concat heads, re-split, scaled dot product, softmax, KL."""

    def relations(heads):  # heads: [B, H, L, d]
        Bn, H, Ln, d = heads.shape
        out = []
        for b in range(Bn):
            # 1. concatenate the attention heads token by token -> [L][H*d]
            cat = [[heads[b, h, i, j].item() for h in range(H) for j in range(d)] for i in range(Ln)]
            W = H * d
            dr = W // num_rel
            rel_b = []
            for a in range(num_rel):
                # 2. re-split into relation head a
                xa = [row[a * dr : (a + 1) * dr] for row in cat]
                rel_a = []
                for q in range(Ln):
                    keys = [k for k in range(Ln) if mask[b][q] and mask[b][k] and (not causal or k <= q)]
                    # 3. scaled dot product  4. softmax over valid keys
                    scores = [dot(xa[q], xa[k]) / math.sqrt(dr) for k in keys]
                    rel_a.append(dict(zip(keys, softmax_list(scores))) if keys else {})
                rel_b.append(rel_a)
            out.append(rel_b)
        return out

    rs, rt = relations(s_heads), relations(t_heads)
    kls = []
    for b in range(len(rs)):
        for a in range(num_rel):
            for q in range(len(rs[b][a])):
                if not rt[b][a][q]:
                    continue
                # 5. KL(teacher || student) summed over keys
                kls.append(sum(p * (math.log(p) - math.log(rs[b][a][q][k])) for k, p in rt[b][a][q].items()))
    return sum(kls) / len(kls)


def concat_heads(x):  # [B, H, L, d] -> [B, L, H*d]
    Bn, H, Ln, d = x.shape
    return x.transpose(1, 2).reshape(Bn, Ln, H * d)


@pytest.mark.parametrize("causal", [False, True])
def test_relation_kl_minilmv2_different_widths_and_heads(causal):
    t_heads = rnd(B, 3, SEQ, 4, seed=27)  # teacher: 3 heads x 4 = width 12
    s_heads = rnd(B, 2, SEQ, 4, seed=28)  # student: 2 heads x 4 = width 8
    mask = MASK.tolist()
    for num_rel in (1, 2, 4):
        ref = ref_relation_kl(s_heads, t_heads, num_rel, mask, causal)
        got = L.relation_kl(concat_heads(s_heads), concat_heads(t_heads), num_rel, MASK, causal=causal)
        assert got.item() == pytest.approx(ref, rel=1e-5), num_rel


def _torch_relation_kl(s_x, t_x, heads, mask, causal):
    """Plain autograd reference in float64: -inf masking, log_softmax, KL, mean over valid rows."""
    v = L.valid_pairs(mask, causal)

    def log_rel(x):
        Bn, Ln, W = x.shape
        xh = x.double().view(Bn, Ln, heads, W // heads).transpose(1, 2)
        z = (xh @ xh.transpose(-1, -2) / math.sqrt(W // heads)).masked_fill(~v, float("-inf"))
        return torch.log_softmax(z.masked_fill(~v.any(-1, keepdim=True), 0.0), -1)

    log_q, log_p = log_rel(s_x), log_rel(t_x)
    kl = torch.where(v, log_p.exp() * (log_p - log_q), 0.0).sum(-1)
    rows = v.any(-1).expand_as(kl)
    return kl[rows].mean()


@pytest.mark.parametrize("causal", [False, True])
def test_relation_kl_gradient_matches_autograd_reference(causal):
    """relation_kl's hand-written backward (_RowKL) against autograd through a plain float64 formulation."""
    s_x = rnd(B, SEQ, 8, seed=31).requires_grad_(True)
    t_x = rnd(B, SEQ, 12, seed=32)
    got = L.relation_kl(s_x, t_x, 2, MASK, causal=causal)
    (g_got,) = torch.autograd.grad(got, s_x)
    s_ref = s_x.detach().double().requires_grad_(True)
    ref = _torch_relation_kl(s_ref, t_x, 2, MASK, causal)
    (g_ref,) = torch.autograd.grad(ref, s_ref)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(g_got.double(), g_ref, rtol=1e-4, atol=1e-7)
    assert g_got[~MASK.bool()].abs().max() == 0  # padded tokens get no gradient
    # and the Function itself, in float64
    z = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    log_p = torch.log_softmax(torch.randn(2, 3, 5, 5, dtype=torch.float64), -1)
    w = torch.rand(2, 1, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(L._RowKL.apply, (z, log_p, w))


def test_relation_kl_minilm_value_relation_equals_per_head():
    # MiniLM value relation: A_r = number of attention heads -> relation heads are the attention heads
    v = rnd(B, 2, SEQ, 3, seed=29)
    vt = rnd(B, 2, SEQ, 5, seed=30)
    ref = ref_relation_kl(v, vt, 2, MASK.tolist())
    assert L.relation_kl(concat_heads(v), concat_heads(vt), 2, MASK).item() == pytest.approx(ref, rel=1e-5)


def test_relation_heads_must_divide_width():
    with pytest.raises(ConfigError, match="num_relation_heads"):
        L.relation_kl(rnd(1, 3, 8), rnd(1, 3, 12), 5)


# ---- padding invariance and gradients, for every loss ----------------------------------------
def _pad_like(x, mask_bl, seed):
    """x with the padded token rows replaced by large junk."""
    junk = rnd(*x.shape, seed=seed, scale=1e3)
    return torch.where(mask_bl.bool().reshape(*mask_bl.shape, *([1] * (x.dim() - 2))), x, junk)


def _attn_pad(x, valid, value):
    return x.masked_fill(~valid.expand_as(x), value)


def _cases():
    """(name, fn(student_tensors, teacher_tensors), student_tensors, teacher_tensors, pad_fn)."""
    m = MASK
    valid = L.valid_pairs(m, causal=True)
    sp = L.masked_softmax(rnd(B, 2, SEQ, SEQ, seed=40), valid)
    tp = L.masked_softmax(rnd(B, 2, SEQ, SEQ, seed=41), valid)
    tok = lambda xs, seed: [_pad_like(x, m, seed + i) for i, x in enumerate(xs)]
    att = lambda xs, seed: [_attn_pad(x, valid, 123.0 + seed) for x in xs]
    h3, h5 = (lambda seed: rnd(B, SEQ, 3, seed=seed)), (lambda seed: rnd(B, SEQ, 5, seed=seed))
    return [
        (
            "soft_ce",
            lambda s, t: L.soft_cross_entropy(s[0], t[0], 2.0, m),
            [rnd(B, SEQ, 6, seed=42)],
            [rnd(B, SEQ, 6, seed=43)],
            tok,
        ),
        ("kl", lambda s, t: L.kl_div(s[0], t[0], 2.0, m), [rnd(B, SEQ, 6, seed=44)], [rnd(B, SEQ, 6, seed=45)], tok),
        (
            "logits_mse",
            lambda s, t: L.logits_mse(s[0], t[0], m),
            [rnd(B, SEQ, 6, seed=46)],
            [rnd(B, SEQ, 6, seed=47)],
            tok,
        ),
        ("hidden_mse", lambda s, t: L.hidden_mse(s[0], t[0], m), [h3(48)], [h3(49)], tok),
        ("cosine", lambda s, t: L.cosine(s[0], t[0], m), [h3(50)], [h3(51)], tok),
        ("pkd", lambda s, t: L.pkd(s[0], t[0], m), [h3(52)], [h3(53)], tok),
        ("gram", lambda s, t: L.gram(s[0], t[0], m), [h3(54)], [h5(55)], tok),
        ("fsp", lambda s, t: L.fsp(s[0], s[1], t[0], t[1], m), [h3(56), h3(57)], [h3(58), h3(59)], tok),
        ("nst", lambda s, t: L.nst(s[0], t[0], m), [h3(60)], [h5(61)], tok),
        (
            "attention_mse",
            lambda s, t: L.attention_mse(s[0], t[0], valid),
            [rnd(B, 2, SEQ, SEQ, seed=62)],
            [rnd(B, 2, SEQ, SEQ, seed=63)],
            att,
        ),
        ("attention_kl", lambda s, t: L.attention_kl(s[0], t[0], valid), [sp], [tp], att),
        ("attention_ce", lambda s, t: L.attention_ce(s[0], t[0], valid), [sp], [tp], att),
        (
            "relation_kl",
            lambda s, t: L.relation_kl(s[0], t[0], 2, m, causal=True),
            [rnd(B, SEQ, 8, seed=64)],
            [rnd(B, SEQ, 12, seed=65)],
            tok,
        ),
    ]


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_padding_changes_nothing(case):
    _, fn, s, t, pad = case
    base = fn(s, t)
    s_grad = [x.clone().requires_grad_(True) for x in s]
    fn(s_grad, t).backward()
    s_pad = [x.clone().requires_grad_(True) for x in pad(s, 100)]
    other = fn(s_pad, pad(t, 200))
    other.backward()
    assert other.item() == pytest.approx(base.item(), rel=1e-6, abs=1e-7)
    for g0, g1 in zip(s_grad, s_pad):
        assert torch.allclose(g0.grad, g1.grad, atol=1e-7)
    # and the unpadded positions do matter (sanity check that the loss is not constant)
    assert base.item() != pytest.approx(fn([x * 1.7 + 0.3 for x in s], t).item(), rel=1e-4)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gradients_reach_student_only(case):
    _, fn, s, t, _ = case
    s = [x.clone().requires_grad_(True) for x in s]
    t_frozen = [x.clone() for x in t]  # requires_grad=False, like teacher outputs under no_grad
    fn(s, t_frozen).backward()
    for x in s:
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for x in t_frozen:
        assert x.grad is None and not x.requires_grad
    # even a teacher tensor that requires grad receives none: teacher inputs are detached
    t_live = [x.clone().requires_grad_(True) for x in t]
    fn([x.detach().requires_grad_(True) for x in s], t_live).backward()
    assert all(x.grad is None for x in t_live)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bf16_inputs_computed_in_float32(case):
    _, fn, s, t, _ = case
    ref = fn(s, t)
    got = fn([x.bfloat16() for x in s], [x.bfloat16() for x in t])
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(ref.item(), rel=0.05, abs=1e-3)


# ---- registry --------------------------------------------------------------------------------
def test_registry_contents():
    assert {g: set(v) for g, v in L.LOSSES.items()} == {
        "logits": {"soft_ce", "kl", "mse", "reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl"},
        "hidden": {"mse", "cosine", "pkd", "gram", "fsp", "nst", "mmd"},
        "attention": {"mse", "kl", "ce"},
        "relation": {"kl"},
    }
    assert L.LOSSES["logits"]["soft_ce"] is L.soft_cross_entropy
    assert L.LOSSES["hidden"]["mmd"] is L.nst
    assert L.LOSSES["relation"]["kl"] is L.relation_kl
    assert L.WIDTH_FREE_HIDDEN_LOSSES == {"gram", "nst", "mmd"}
    assert L.get_loss("attention", "kl", "plan.terms[0].loss") is L.attention_kl


def test_get_loss_errors_name_field_and_choices():
    with pytest.raises(ConfigError) as e:
        L.get_loss("hidden", "l1", "plan.terms[2].loss")
    assert e.value.field == "plan.terms[2].loss"
    assert "cosine" in str(e.value) and "nst" in str(e.value) and "l1" in str(e.value)
    with pytest.raises(ConfigError) as e:
        L.get_loss("values", "kl", "plan.terms[0].knowledge")
    assert e.value.field == "plan.terms[0].knowledge" and "relation" in str(e.value)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_padding_with_nan_and_inf_is_ignored(case):
    name, fn, s, t, _ = case
    if name.startswith("attention"):
        inv = ~L.valid_pairs(MASK, causal=True)
        fill = lambda x, v: x.masked_fill(inv.expand_as(x), v)
    else:
        inv = ~MASK.bool()[..., None]
        fill = lambda x, v: x.masked_fill(inv, v)
    s_nan = [fill(x, float("nan")).requires_grad_(True) for x in s]
    loss = fn(s_nan, [fill(x, float("-inf")) for x in t])
    loss.backward()
    assert loss.item() == pytest.approx(fn(s, t).item(), rel=1e-6, abs=1e-7)
    assert all(torch.isfinite(x.grad).all() for x in s_nan)


def test_all_padded_batch_gives_zero_not_nan():
    m = torch.zeros(2, 3)
    x, y = rnd(2, 3, 4, seed=70), rnd(2, 3, 4, seed=71)
    for fn in (L.hidden_mse, L.cosine, L.pkd, L.gram, L.nst, L.logits_mse):
        assert fn(x, y, m).item() == 0.0
    assert L.kl_div(x, y, 2.0, m).item() == 0.0
    assert L.relation_kl(x, y, 2, m).item() == 0.0


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cpu_fast_path_equals_the_exact_path(case, monkeypatch):
    """On a CPU the large maps skip torch.where (multiply-masked, checked); the exact path must agree."""
    _, fn, s, t, pad = case
    s_fast = [x.clone().requires_grad_(True) for x in pad(s, 100)]
    fast = fn(s_fast, pad(t, 200))
    fast.backward()
    monkeypatch.setattr(L, "_cpu_fast_path", lambda fast_fn, exact_fn, device: exact_fn())
    s_exact = [x.clone().requires_grad_(True) for x in pad(s, 100)]
    exact = fn(s_exact, pad(t, 200))
    exact.backward()
    assert fast.item() == pytest.approx(exact.item(), rel=1e-6, abs=1e-7)
    for a, b in zip(s_fast, s_exact):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-7, rtol=1e-5)


def test_masked_softmax_fast_path_equals_the_exact_path(monkeypatch):
    valid = L.valid_pairs(MASK, causal=True)
    scores = rnd(B, 2, SEQ, SEQ, seed=72).masked_fill(~valid, 1e3)
    fast = L.masked_softmax(scores, valid)
    monkeypatch.setattr(L, "_cpu_fast_path", lambda fast_fn, exact_fn, device: exact_fn())
    exact = L.masked_softmax(scores, valid)
    torch.testing.assert_close(fast, exact, atol=1e-7, rtol=1e-6)
    assert (fast[~valid.expand_as(fast)] == 0).all() and (
        fast.sum(-1)[valid.any(-1).expand(B, 2, SEQ)] - 1
    ).abs().max() < 1e-6


def _bernoulli_ref(s, t, T, cross_entropy):
    """Per row, per label: the Bernoulli KL (or soft binary CE) of sigmoid(t/T) against sigmoid(s/T)."""
    total = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        for zs, zt in zip(srow, trow):
            q, p = 1 / (1 + math.exp(-zs / T)), 1 / (1 + math.exp(-zt / T))
            ce = -(p * math.log(q) + (1 - p) * math.log(1 - q))
            total += ce if cross_entropy else ce + p * math.log(p) + (1 - p) * math.log(1 - p)
    return total / len(s) * T * T


def test_bernoulli_kd_is_one_sigmoid_per_label():
    s, t = rnd(3, 4, seed=1, scale=2.0), rnd(3, 4, seed=2, scale=2.0)
    for T in (1.0, 3.0):
        for ce in (False, True):
            got = L.bernoulli_kd(s, t, temperature=T, cross_entropy=ce)
            assert float(got) == pytest.approx(_bernoulli_ref(s, t, T, ce), rel=1e-5)
    assert float(L.bernoulli_kd(t, t, temperature=2.0)) == pytest.approx(0.0, abs=1e-6)  # KL of equal targets
    assert float(L.bernoulli_kd(s, t, 2.0, t2_scaling=False)) == pytest.approx(_bernoulli_ref(s, t, 2.0, False) / 4)
    # not the softmax over labels: a label the teacher is sure of costs the same whatever the other labels say
    one = L.bernoulli_kd(torch.tensor([[0.0, 5.0]]), torch.tensor([[0.0, -5.0]]))
    two = L.bernoulli_kd(torch.tensor([[0.0, 5.0, 9.0]]), torch.tensor([[0.0, -5.0, 9.0]]))
    assert float(one) == pytest.approx(float(two), rel=1e-5)
