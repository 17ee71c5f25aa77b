"""DistillationPlan: validation, projections, capture requests and the objective's values, end to end.

Tiny random BERT / Llama / GPT-2 models come from conftest's builders. Every logged term is checked against a
reference written out by hand in this file (per-example loops over the valid tokens), not only against
the functions in ``unikd.losses``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from helpers import tiny_bert, tiny_gpt2, tiny_llama
from pydantic import ValidationError

from unikd import losses as L
from unikd.capture import FeatureCapture
from unikd.distiller import Distiller
from unikd.errors import ConfigError
from unikd.families import ModelSpec, model_spec
from unikd.plan import DistillationPlan, PlanConfig, term_config, linear_schedule

VOCAB = 61
LENGTHS = [7, 5, 3]  # right padding to 7
TOL = dict(rtol=2e-5, atol=1e-8)
#: 10x the HF default init scale, so logits and attention maps are far from uniform and every term is O(0.1-1)
INIT = 0.2


# ---------------------------------------------------------------------------------------------------
# models, batches, capture
# ---------------------------------------------------------------------------------------------------
#: what every model here shares besides its size: no dropout, the larger init, 32 positions
BERT = dict(
    positions=32, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=INIT
)
LLAMA = dict(positions=32, tie_word_embeddings=False, initializer_range=INIT)
GPT2 = dict(positions=32, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=INIT)


@pytest.fixture(scope="module")
def bert_teacher():
    return tiny_bert(4, 32, 4, vocab=VOCAB, seed=0, **BERT).eval()


@pytest.fixture(scope="module")
def bert_student_same():
    """Same width and head count as the teacher (per-head attention, no projections)."""
    return tiny_bert(2, 32, 4, vocab=VOCAB, seed=1, **BERT).eval()


@pytest.fixture(scope="module")
def bert_student_narrow():
    """Half the teacher's width and heads (projections, mean attention, relation re-splitting)."""
    return tiny_bert(2, 16, 2, vocab=VOCAB, seed=2, **BERT).eval()


def _batch(decoder: bool = False, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1] * n + [0] * (max(LENGTHS) - n) for n in LENGTHS])
    ids = torch.randint(1, VOCAB, mask.shape, generator=g) * mask
    batch = {"input_ids": ids, "attention_mask": mask}
    if decoder:
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :2] = -100  # e.g. prompt tokens: the label mask is not the attention mask
        batch["labels"] = labels
    else:
        batch["labels"] = torch.tensor([0, 2, 1])
    return batch


def _capture(plan: DistillationPlan, teacher, student, batch, step: int = 0):
    t_req, s_req = plan.requests(step)
    with FeatureCapture(teacher, t_req) as cap:
        tf = cap(batch, teacher=True)
    with FeatureCapture(student, s_req) as cap:
        sf = cap(batch)
    return tf, sf


# ---------------------------------------------------------------------------------------------------
# hand-written references (per example, valid tokens only)
# ---------------------------------------------------------------------------------------------------
def _lengths(mask):
    return [int(n) for n in mask.sum(1)]


def ref_hidden_mse(s, t, mask):
    rows = mask.bool()
    return ((s[rows].float() - t[rows].float()) ** 2).mean()


def ref_cosine(s, t, mask):
    rows = mask.bool()
    return (1 - F.cosine_similarity(s[rows].float(), t[rows].float(), dim=-1)).mean()


def ref_gram(s, t, mask):
    diffs = []
    for b, n in enumerate(_lengths(mask)):
        hs, ht = s[b, :n].float(), t[b, :n].float()
        diffs.append((hs @ hs.T / hs.shape[-1] - ht @ ht.T / ht.shape[-1]).flatten())
    return (torch.cat(diffs) ** 2).mean()


def ref_logits_kl(s, t, temperature, rows=None):
    if rows is not None:  # token level: keep the selected [B, L] rows
        s, t = s[rows.bool()], t[rows.bool()]
    log_q, log_p = F.log_softmax(s.float() / temperature, -1), F.log_softmax(t.float() / temperature, -1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * temperature**2


def _causal(n):
    return torch.ones(n, n, dtype=torch.bool).tril()


def ref_attention_kl(s_probs, t_probs, mask, causal=False, reduce="per_head"):
    rows = []
    for b, n in enumerate(_lengths(mask)):
        p, q = t_probs[b, :, :n, :n].float(), s_probs[b, :, :n, :n].float()
        if reduce == "mean":
            p, q = p.mean(0, keepdim=True), q.mean(0, keepdim=True)
        keep = _causal(n) if causal else torch.ones(n, n, dtype=torch.bool)
        kl = torch.where(keep & (p > 0), p * (p.log() - q.log()), 0.0).sum(-1)  # [H, n]
        rows.append(kl.flatten())
    return torch.cat(rows).mean()


def ref_attention_mse(s_maps, t_maps, mask, causal=False, reduce="per_head", window=None):
    diffs = []
    for b, n in enumerate(_lengths(mask)):
        s, t = s_maps[b, :, :n, :n].float(), t_maps[b, :, :n, :n].float()
        keep = _causal(n) if causal else torch.ones(n, n, dtype=torch.bool)
        if window is not None:  # key j visible from query i when i - window < j
            keep = keep & (torch.arange(n)[None, :] > torch.arange(n)[:, None] - window)
        if reduce == "mean":  # average the visible entries only (masked ones hold finfo.min)
            s = torch.where(keep, s, 0.0).mean(0, keepdim=True)
            t = torch.where(keep, t, 0.0).mean(0, keepdim=True)
        keep = keep.expand_as(s)
        diffs.append((s - t)[keep])
    return (torch.cat(diffs) ** 2).mean()


def ref_relation_kl(s_x, t_x, heads, mask, causal=False):
    """MiniLMv2 relation KL from [B, H, L, d] Q/K/V: concatenate heads, re-split into ``heads``."""

    def rel_log_probs(x, n):  # x: [B, H, L, d] -> [A, n, n] log-probs for one example's n tokens
        flat = x.permute(1, 0, 2).reshape(x.shape[1], -1)[:n].float()  # [n, H*d]
        xr = flat.view(n, heads, -1).transpose(0, 1)  # [A, n, d_r]
        scores = xr @ xr.transpose(1, 2) / math.sqrt(xr.shape[-1])
        if causal:
            scores = scores.masked_fill(~_causal(n), float("-inf"))
        return scores.log_softmax(-1)

    rows = []
    for b, n in enumerate(_lengths(mask)):
        log_q, log_p = rel_log_probs(s_x[b], n), rel_log_probs(t_x[b], n)
        p = log_p.exp()
        rows.append(torch.where(p > 0, p * (log_p - log_q), 0.0).sum(-1).flatten())
    return torch.cat(rows).mean()


def _close(actual, expected):
    torch.testing.assert_close(actual.float(), torch.as_tensor(expected).float(), **TOL)


# ---------------------------------------------------------------------------------------------------
# validation: before any forward pass, ConfigError naming the exact field
# ---------------------------------------------------------------------------------------------------
def _spec(layers=6, hidden=32, heads=4, kv_heads=None, vocab=100, decoder=False, model_type="bert"):
    kv = kv_heads or heads
    return ModelSpec(model_type, layers, hidden, heads, kv, hidden // heads, vocab, decoder)


OK_TERM = {"knowledge": "embeddings", "loss": "gram"}  # valid for every spec pair below


@pytest.mark.parametrize(
    "term, teacher, student, token_level, field, words",
    [
        ({"knowledge": "hidden", "loss": "l7"}, _spec(), _spec(2), False, "plan.terms[1].loss", "l7"),
        ({"knowledge": "attention", "loss": "cosine"}, _spec(), _spec(2), False, "plan.terms[1].loss", "cosine"),
        ({"knowledge": "hidden", "matching": "zigzag"}, _spec(), _spec(2), False, "plan.terms[1].matching", "zigzag"),
        (
            {"knowledge": "hidden", "matching": "pair", "teacher_layer": 20, "student_layer": 0},
            _spec(6),
            _spec(2),
            False,
            "plan.terms[1].teacher_layer",
            "20",
        ),
        (
            {"knowledge": "relation", "matching": "pair", "teacher_layer": -1, "student_layer": 2},
            _spec(6),
            _spec(2),
            False,
            "plan.terms[1].student_layer",
            "2",
        ),
        ({"knowledge": "hidden", "matching": "pair"}, _spec(6), _spec(2), False, "plan.terms[1].matching", "pair"),
        ({"knowledge": "hidden", "matching": "lastK", "k": 3}, _spec(6), _spec(2), False, "plan.terms[1].k", "k=3"),
        (
            {"knowledge": "hidden", "matching": [[0, 0], [6, 1]]},
            _spec(6),
            _spec(2),
            False,
            "plan.terms[1].matching[1]",
            "6",
        ),
        ({"knowledge": "hidden", "matching": "uniform"}, _spec(2), _spec(4), False, "plan.terms[1].matching", "4"),
        (
            {"knowledge": "attention", "head_reduction": "per_head"},
            _spec(heads=4),
            _spec(2, heads=2),
            False,
            "plan.terms[1].head_reduction",
            "head counts",
        ),
        (
            {"knowledge": "hidden", "loss": "mse", "projection": False},
            _spec(hidden=32),
            _spec(2, hidden=16),
            False,
            "plan.terms[1].projection",
            "width",
        ),
        (
            {"knowledge": "embeddings", "loss": "cosine", "projection": False},
            _spec(hidden=32),
            _spec(2, hidden=16),
            False,
            "plan.terms[1].projection",
            "width",
        ),
        (
            {"knowledge": "relation", "relation_heads": 3},
            _spec(),
            _spec(2),
            False,
            "plan.terms[1].relation_heads",
            "3 relation heads",
        ),
        # default relation heads = the student's heads (3), which do not divide the teacher's width 32
        (
            {"knowledge": "value_relation"},
            _spec(hidden=32, heads=4),
            _spec(2, hidden=24, heads=3),
            False,
            "plan.terms[1].relation_heads",
            "teacher",
        ),
        (
            {"knowledge": "relation", "relations": []},
            _spec(),
            _spec(2),
            False,
            "plan.terms[1].relations",
            "no relation",
        ),
        ({"knowledge": "logits"}, _spec(vocab=100), _spec(2, vocab=90), True, "plan.terms[1].knowledge", "vocabulary"),
        (
            {"knowledge": "attention", "head_reduction": "sum", "attention_on": "probs", "loss": "kl"},
            _spec(),
            _spec(2),
            False,
            "plan.terms[1].head_reduction",
            "not a distribution",
        ),
        (
            {"knowledge": "attention", "head_reduction": "sum", "attention_on": "probs", "loss": "ce"},
            _spec(),
            _spec(2),
            False,
            "plan.terms[1].head_reduction",
            "not a distribution",
        ),
        ({"knowledge": "hidden", "name": "total"}, _spec(), _spec(2), False, "plan.terms[1].name", "reserved"),
    ],
)
def test_validation_names_the_field(term, teacher, student, token_level, field, words):
    cfg = PlanConfig(terms=[OK_TERM, term])
    with pytest.raises(ConfigError) as info:
        DistillationPlan(cfg, teacher, student, token_level_logits=token_level)
    err = info.value
    assert err.field == field
    assert str(err).startswith(f"{field}: ")
    assert "Fix:" in str(err)
    assert words in str(err)


def test_validation_uses_the_given_field_prefix():
    cfg = PlanConfig(terms=[{"knowledge": "hidden", "matching": "pair", "teacher_layer": -7, "student_layer": 0}])
    with pytest.raises(ConfigError) as info:
        DistillationPlan(cfg, _spec(6), _spec(2), field="stage2.plan")
    assert info.value.field == "stage2.plan.terms[0].teacher_layer"


def test_valid_configs_pass():
    """Counterparts of the failing cases that must be accepted."""
    cfgs = [
        # sequence-level logits: vocab sizes are irrelevant
        ({"knowledge": "logits"}, _spec(vocab=100), _spec(2, vocab=90), False),
        ({"knowledge": "attention", "head_reduction": "mean"}, _spec(heads=4), _spec(2, heads=2), False),
        ({"knowledge": "attention", "head_reduction": "sum", "attention_on": "scores"}, _spec(), _spec(2), False),
        ({"knowledge": "attention", "head_reduction": "sum", "loss": "mse"}, _spec(), _spec(2), False),
        ({"knowledge": "hidden", "loss": "gram", "projection": False}, _spec(hidden=32), _spec(2, hidden=16), False),
        ({"knowledge": "hidden", "loss": "nst", "projection": False}, _spec(hidden=32), _spec(2, hidden=16), False),
        (
            {"knowledge": "hidden", "matching": "pair", "teacher_layer": -6, "student_layer": -2},
            _spec(6),
            _spec(2),
            False,
        ),
        (
            {"knowledge": "relation", "relation_heads": 8},
            _spec(hidden=32, heads=4),
            _spec(2, hidden=16, heads=2),
            False,
        ),
        # GQA: K/V width 16 (2 KV heads of 8) divides by the default 4 relation heads
        (
            {"knowledge": "relation"},
            _spec(hidden=32, heads=4, kv_heads=2, decoder=True, model_type="llama"),
            _spec(2, hidden=32, heads=4, kv_heads=2, decoder=True, model_type="llama"),
            True,
        ),
    ]
    for term, t, s, token_level in cfgs:
        DistillationPlan(PlanConfig(terms=[term]), t, s, token_level_logits=token_level)


def test_pydantic_rejects_unknown_knowledge_and_keys():
    with pytest.raises(ValidationError):
        PlanConfig.model_validate({"terms": [{"knowledge": "gradients"}]})
    with pytest.raises(ValidationError):
        PlanConfig.model_validate({"terms": [{"knowledge": "hidden", "wieght": 2.0}]})
    with pytest.raises(ValidationError):
        PlanConfig.model_validate({"term": []})
    with pytest.raises(ValidationError):
        term_config(knowledge="logits", temperature=0.0)
    with pytest.raises(ValidationError):
        term_config(knowledge="hidden", weight=-1.0)


def test_term_defaults():
    term = term_config(knowledge="attention")
    assert (term.loss, term.name, term.matching) == ("kl", "attention_kl", "uniform")
    assert term_config(knowledge="hidden", loss="cosine").name == "hidden_cosine"
    assert term_config(knowledge="relation").relations == ["qq", "kk", "vv"]


@pytest.mark.parametrize(
    "term, field, owner",
    [
        ({"knowledge": "hidden", "temperature": 2.0}, "temperature", "logits"),
        ({"knowledge": "logits", "relation_heads": 4}, "relation_heads", "relation"),
        ({"knowledge": "logits", "matching": "last"}, "matching", "hidden"),
        ({"knowledge": "embeddings", "layer_reduction": "sum"}, "layer_reduction", "attention"),
        ({"knowledge": "attention", "include_embeddings": True}, "include_embeddings", "hidden"),
        ({"knowledge": "relation", "head_reduction": "mean"}, "head_reduction", "attention"),
        ({"knowledge": "value_relation", "relations": ["qq"]}, "relations", "relation"),
        ({"knowledge": "hidden", "projection_typo": True}, "projection_typo", ""),
    ],
)
def test_a_field_of_another_knowledge_type_is_refused_by_name(term, field, owner):
    from unikd.config import load_config

    with pytest.raises(ValidationError) as info:
        PlanConfig.model_validate({"terms": [term]})
    assert info.value.errors()[0]["loc"][-1] == field
    with pytest.raises(ConfigError) as info:
        load_config(None, ["stage=task", "data.task=sst2", "teacher.path=x", f"plan.terms=[{term}]"])
    message = str(info.value)
    assert f"plan.terms.0.{field}: is not a field of a '{term['knowledge']}' term" in message
    if owner:
        assert owner in message.split("belongs to ")[1].split(" terms")[0]
    else:
        assert "belongs to" not in message


def test_stored_configs_of_the_flat_term_model_drop_only_default_leftovers():
    """unikd used to dump every field on every term; such a config reads back (the leftovers held their
    defaults and meant nothing), but a leftover with another value is still an error."""
    from unikd.compat import LEGACY_FLAT_DEFAULTS, STORED

    flat = {"knowledge": "hidden", "loss": "mse", **LEGACY_FLAT_DEFAULTS}
    plan = PlanConfig.model_validate({"terms": [flat]}, context=STORED)
    assert plan.terms[0] == term_config(knowledge="hidden", loss="mse")
    with pytest.raises(ValidationError):
        PlanConfig.model_validate({"terms": [flat]})  # a user's config gets no such leniency
    with pytest.raises(ValidationError):
        PlanConfig.model_validate({"terms": [{**flat, "temperature": 2.0}]}, context=STORED)


# ---------------------------------------------------------------------------------------------------
# projections
# ---------------------------------------------------------------------------------------------------
T4, S2_NARROW, S2_SAME = _spec(4, 32, 4), _spec(2, 16, 2), _spec(2, 32, 4)


def _projection_keys(terms, teacher=T4, student=S2_NARROW):
    return set(DistillationPlan(PlanConfig(terms=terms), teacher, student).projections.keys())


def test_projections_only_where_widths_differ_and_the_loss_needs_them():
    assert _projection_keys([{"knowledge": "hidden"}]) == {"hidden_mse:0", "hidden_mse:1"}
    assert _projection_keys([{"knowledge": "hidden"}], student=S2_SAME) == set()
    assert _projection_keys([{"knowledge": "logits"}, {"knowledge": "embeddings", "loss": "cosine"}]) == {
        "embeddings_cosine:emb"
    }
    assert _projection_keys(
        [{"knowledge": "hidden", "matching": "pair", "teacher_layer": -1, "student_layer": -1}]
    ) == {"hidden_mse:1"}
    assert _projection_keys([{"knowledge": "hidden", "include_embeddings": True}]) == {
        "hidden_mse:0",
        "hidden_mse:1",
        "hidden_mse:emb",
    }
    for width_free in (
        {"knowledge": "hidden", "loss": "gram"},
        {"knowledge": "hidden", "loss": "nst"},
        {"knowledge": "hidden", "loss": "mmd"},
        {"knowledge": "relation"},
        {"knowledge": "value_relation"},
        {"knowledge": "attention", "head_reduction": "mean"},
        {"knowledge": "logits"},
    ):
        assert _projection_keys([width_free]) == set(), width_free
    # FSP also projects each block's input: the embeddings for block 0, block 0's output for block 1
    assert _projection_keys([{"knowledge": "hidden", "loss": "fsp", "matching": "first"}]) == {
        "hidden_fsp:0",
        "hidden_fsp:1",
        "hidden_fsp:emb",
    }


def test_projection_modules():
    plan = DistillationPlan(
        PlanConfig(
            terms=[
                {"knowledge": "hidden"},
                {"knowledge": "hidden", "loss": "cosine", "matching": "last", "projection_activation": "gelu"},
            ]
        ),
        T4,
        S2_NARROW,
    )
    assert set(plan.projections.keys()) == {"hidden_mse:0", "hidden_mse:1", "hidden_cosine:0", "hidden_cosine:1"}
    lin = plan.projections["hidden_mse:1"][0]
    assert isinstance(lin, torch.nn.Linear) and (lin.in_features, lin.out_features) == (16, 32)
    assert len(plan.projections["hidden_mse:1"]) == 1
    assert isinstance(plan.projections["hidden_cosine:0"][1], torch.nn.GELU)
    # separate parameters per term and per student layer
    assert len({id(p) for p in plan.parameters()}) == 8
    assert set(dict(plan.named_parameters())) == {
        f"projections.{k}.0.{w}"
        for k in ("hidden_mse:0", "hidden_mse:1", "hidden_cosine:0", "hidden_cosine:1")
        for w in ("weight", "bias")
    }


def test_projection_init_depends_on_the_seed_and_its_key_only():
    """The global RNG (what ran before in the process) and the other terms play no part; the seed does."""
    terms = [{"knowledge": "hidden"}, {"knowledge": "embeddings"}]
    torch.manual_seed(1)
    a = DistillationPlan(PlanConfig(terms=terms), T4, S2_NARROW)
    torch.manual_seed(2)
    b = DistillationPlan(PlanConfig(terms=[{"knowledge": "logits"}, *terms[::-1]]), T4, S2_NARROW)
    assert set(a.projections) == set(b.projections)
    assert not torch.equal(a.projections["hidden_mse:0"][0].weight, b.projections["hidden_mse:0"][0].weight)
    rng = torch.get_rng_state()
    a.seed_projections(7)
    b.seed_projections(7)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left as it was
    for key in a.projections:
        for pa, pb in zip(a.projections[key].parameters(), b.projections[key].parameters()):
            assert torch.equal(pa, pb), key
    weight = a.projections["hidden_mse:0"][0].weight.clone()
    a.seed_projections(8)
    assert not torch.equal(a.projections["hidden_mse:0"][0].weight, weight)
    assert not torch.equal(a.projections["hidden_mse:0"][0].weight, a.projections["hidden_mse:1"][0].weight)


def test_projections_of_two_terms_sharing_a_name_are_told_apart_by_matching():
    keys = _projection_keys([{"knowledge": "hidden", "matching": "first"}, {"knowledge": "hidden", "matching": "last"}])
    assert keys == {"hidden_mse_first:0", "hidden_mse_first:1", "hidden_mse_last:0", "hidden_mse_last:1"}
    with pytest.raises(ConfigError) as info:
        _projection_keys([{"knowledge": "hidden"}, {"knowledge": "hidden", "weight": 2.0}])
    assert info.value.field == "plan.terms[0].name" and "own name" in str(info.value)


def test_old_projection_keys_load_under_the_term_names():
    """Checkpoints written when projections were keyed by term index ('1_0') load into today's plan."""
    terms = [{"knowledge": "logits"}, {"knowledge": "hidden"}, {"knowledge": "embeddings"}]
    plan = DistillationPlan(PlanConfig(terms=terms), T4, S2_NARROW)
    old = {
        f"projections.{i}_{key}.0.{w}": torch.full_like(p, float(i))
        for i, key in ((1, "0"), (1, "1"), (2, "emb"))
        for w, p in (("weight", torch.zeros(32, 16)), ("bias", torch.zeros(32)))
    }
    plan.load_state_dict(old)
    assert float(plan.projections["hidden_mse:1"][0].weight.detach().mean()) == 1.0
    assert float(plan.projections["embeddings_mse:emb"][0].bias.detach().mean()) == 2.0


def test_random_matching_projects_every_student_layer_and_embeddings():
    keys = _projection_keys(
        [{"knowledge": "hidden", "matching": "random", "include_embeddings": True}], teacher=_spec(6, 32, 4)
    )
    assert keys == {"hidden_mse:0", "hidden_mse:1", "hidden_mse:emb"}


# ---------------------------------------------------------------------------------------------------
# capture requests
# ---------------------------------------------------------------------------------------------------
def test_requests_follow_the_pairs():
    plan = DistillationPlan(
        PlanConfig(
            terms=[
                {"knowledge": "logits"},
                {"knowledge": "hidden"},  # uniform 4 -> 2: (1, 0), (3, 1)
                {"knowledge": "attention", "matching": "first", "head_reduction": "mean"},  # (0, 0), (1, 1)
                {"knowledge": "relation", "matching": "pair", "teacher_layer": 2, "student_layer": -1},  # (2, 1)
            ]
        ),
        T4,
        S2_NARROW,
    )
    assert plan.pairs_at(0) == {1: [(1, 0), (3, 1)], 2: [(0, 0), (1, 1)], 3: [(2, 1)]}
    t, s = plan.requests()
    assert (t.embeddings, t.hidden, t.attention, t.qkv) == (False, {1, 3}, {0, 1}, {2})
    assert (s.embeddings, s.hidden, s.attention, s.qkv) == (False, {0, 1}, {0, 1}, {1})
    assert not plan.is_dynamic

    t, s = DistillationPlan(PlanConfig(terms=[{"knowledge": "embeddings"}]), T4, S2_NARROW).requests()
    assert t.embeddings and s.embeddings and not (t.hidden or s.hidden)
    t, s = DistillationPlan(
        PlanConfig(terms=[{"knowledge": "hidden", "loss": "fsp", "matching": [[2, 0], [3, 1]]}]), T4, S2_SAME
    ).requests()
    assert (t.embeddings, t.hidden) == (False, {1, 2, 3})  # block inputs: outputs of blocks 1 and 2
    assert (s.embeddings, s.hidden) == (True, {0, 1})  # block 0's input is the embedding output


# ---------------------------------------------------------------------------------------------------
# objective values, end to end on BERT
# ---------------------------------------------------------------------------------------------------
def test_bert_same_width_terms_equal_the_losses_by_hand(bert_teacher, bert_student_same):
    cfg = PlanConfig(
        terms=[
            {"knowledge": "logits", "loss": "kl", "temperature": 2.0, "weight": 0.5},
            {"knowledge": "hidden", "loss": "mse", "matching": "uniform", "weight": 2.0},
            {"knowledge": "attention", "loss": "kl", "attention_on": "probs", "matching": "last"},
            {
                "knowledge": "relation",
                "relations": ["qq", "kk", "vv"],
                "relation_heads": 8,
                "matching": "pair",
                "teacher_layer": -1,
                "student_layer": -1,
                "weight": 3.0,
            },
            {"knowledge": "value_relation", "matching": [[1, 0], [3, 1]]},
            {"knowledge": "embeddings", "loss": "mse", "weight": 0.25},
            {
                "knowledge": "attention",
                "loss": "mse",
                "attention_on": "scores",
                "head_reduction": "mean",
                "matching": "first",
                "layer_reduction": "sum",
                "name": "att_scores",
            },
            {"knowledge": "hidden", "loss": "cosine", "matching": "last", "name": "cos", "weight": 0.0},
            {"knowledge": "logits", "loss": "soft_ce", "temperature": 3.0, "t2_scaling": False},
        ],
        hard_label_weight=0.7,
    )
    plan = DistillationPlan(cfg, model_spec(bert_teacher), model_spec(bert_student_same))
    assert len(plan.projections) == 0
    batch = _batch()
    tf, sf = _capture(plan, bert_teacher, bert_student_same, batch)
    mask = batch["attention_mask"]
    hard = sf.output.loss
    loss, logs = plan(tf, sf, labels=batch["labels"], hard_loss=hard)

    expected = {
        "logits_kl": ref_logits_kl(sf.logits, tf.logits, 2.0),
        # uniform 4 -> 2 pairs teacher blocks 1 and 3 with student blocks 0 and 1
        "hidden_mse": (
            ref_hidden_mse(sf.hidden[0], tf.hidden[1], mask) + ref_hidden_mse(sf.hidden[1], tf.hidden[3], mask)
        )
        / 2,
        # 'last': the teacher's top two blocks
        "attention_kl": (
            ref_attention_kl(sf.attention_probs(0), tf.attention_probs(2), mask)
            + ref_attention_kl(sf.attention_probs(1), tf.attention_probs(3), mask)
        )
        / 2,
        "relation_kl": sum(ref_relation_kl(getattr(sf, a)[1], getattr(tf, a)[3], 8, mask) for a in "qkv"),
        # MiniLM value relation: V-V with the student's 4 heads
        "value_relation_kl": (ref_relation_kl(sf.v[0], tf.v[1], 4, mask) + ref_relation_kl(sf.v[1], tf.v[3], 4, mask))
        / 2,
        "embeddings_mse": ref_hidden_mse(sf.embeddings, tf.embeddings, mask),
        "att_scores": sum(
            ref_attention_mse(sf.attention_scores(i), tf.attention_scores(i), mask, reduce="mean") for i in (0, 1)
        ),
        "cos": (ref_cosine(sf.hidden[0], tf.hidden[2], mask) + ref_cosine(sf.hidden[1], tf.hidden[3], mask)) / 2,
        "logits_soft_ce": -(F.softmax(tf.logits / 3.0, -1) * F.log_softmax(sf.logits / 3.0, -1)).sum(-1).mean(),
    }
    assert set(logs) == set(expected) | {"hard", "total"}
    for name, value in expected.items():
        _close(logs[name], value)
        assert float(logs[name]) > 0, name
    # the losses library agrees with the references (same tensors, same numbers)
    _close(logs["logits_kl"], L.kl_div(sf.logits, tf.logits, temperature=2.0))
    _close(
        logs["relation_kl"],
        sum(
            L.relation_kl(
                getattr(sf, a)[1].transpose(1, 2).flatten(2), getattr(tf, a)[3].transpose(1, 2).flatten(2), 8, mask
            )
            for a in "qkv"
        ),
    )

    weights = [t.weight for t in cfg.terms]
    total = sum(w * expected[t.name] for w, t in zip(weights, cfg.terms)) + 0.7 * hard
    _close(loss, total)
    _close(logs["total"], total)
    _close(logs["hard"], hard)
    assert loss.requires_grad
    assert all(not v.requires_grad for v in logs.values())


def test_bert_narrow_student_projections_and_width_free_terms(bert_teacher, bert_student_narrow):
    cfg = PlanConfig(
        terms=[
            {"knowledge": "hidden", "loss": "mse", "matching": "uniform"},
            {"knowledge": "attention", "loss": "kl", "head_reduction": "mean", "matching": "uniform"},
            {"knowledge": "relation", "matching": "pair", "teacher_layer": -1, "student_layer": -1},
            {"knowledge": "hidden", "loss": "gram", "matching": "last"},
            {"knowledge": "embeddings", "loss": "mse", "projection_activation": "tanh"},
        ],
        hard_label_weight=0.0,
    )
    plan = DistillationPlan(cfg, model_spec(bert_teacher), model_spec(bert_student_narrow))
    assert set(plan.projections.keys()) == {"hidden_mse:0", "hidden_mse:1", "embeddings_mse:emb"}
    batch = _batch()
    tf, sf = _capture(plan, bert_teacher, bert_student_narrow, batch)
    mask = batch["attention_mask"]
    proj = plan.projections
    loss, logs = plan(tf, sf, hard_loss=sf.output.loss)
    expected = {
        "hidden_mse": (
            ref_hidden_mse(proj["hidden_mse:0"](sf.hidden[0]), tf.hidden[1], mask)
            + ref_hidden_mse(proj["hidden_mse:1"](sf.hidden[1]), tf.hidden[3], mask)
        )
        / 2,
        "attention_kl": (
            ref_attention_kl(sf.attention_probs(0), tf.attention_probs(1), mask, reduce="mean")
            + ref_attention_kl(sf.attention_probs(1), tf.attention_probs(3), mask, reduce="mean")
        )
        / 2,
        # default relation heads = the student's 2: teacher Q/K/V (32 wide) re-split into 2 heads of 16
        "relation_kl": sum(ref_relation_kl(getattr(sf, a)[1], getattr(tf, a)[3], 2, mask) for a in "qkv"),
        "hidden_gram": (ref_gram(sf.hidden[0], tf.hidden[2], mask) + ref_gram(sf.hidden[1], tf.hidden[3], mask)) / 2,
        "embeddings_mse": ref_hidden_mse(torch.tanh(proj["embeddings_mse:emb"][0](sf.embeddings)), tf.embeddings, mask),
    }
    assert set(logs) == set(expected) | {"hard", "total"}
    for name, value in expected.items():
        _close(logs[name], value)
    # hard_label_weight 0: the hard loss is logged but not added
    _close(loss, sum(expected.values()))


def test_padding_does_not_change_the_objective(bert_teacher, bert_student_narrow):
    """Same sequences with more padding: every term is unchanged."""
    cfg = PlanConfig(
        terms=[
            {"knowledge": "hidden"},
            {"knowledge": "attention", "head_reduction": "mean"},
            {"knowledge": "relation"},
            {"knowledge": "logits", "temperature": 2.0},
        ]
    )
    plan = DistillationPlan(cfg, model_spec(bert_teacher), model_spec(bert_student_narrow))
    batch = _batch()
    wide = {k: v for k, v in batch.items()}
    wide["input_ids"] = F.pad(batch["input_ids"], (0, 3))
    wide["attention_mask"] = F.pad(batch["attention_mask"], (0, 3))
    _, logs = plan(*_capture(plan, bert_teacher, bert_student_narrow, batch))
    _, logs_wide = plan(*_capture(plan, bert_teacher, bert_student_narrow, wide))
    for name in logs:
        torch.testing.assert_close(logs_wide[name], logs[name], rtol=1e-4, atol=1e-6)


def test_linear_schedule():
    assert linear_schedule(2.0, None, 5, 10) == 2.0
    assert linear_schedule(2.0, 0.0, 0, 1) == 2.0
    assert linear_schedule(1.0, 3.0, 0, 5) == 1.0
    assert linear_schedule(1.0, 3.0, 2, 5) == 2.0
    assert linear_schedule(1.0, 3.0, 4, 5) == 3.0
    assert linear_schedule(1.0, 3.0, 99, 5) == 3.0  # clamped past the end
    assert linear_schedule(1.0, 0.0, 1, 3) == 0.5


@pytest.mark.parametrize(
    "step, w_logits, temperature, w_hidden, w_hard",
    [
        (0, 1.0, 1.0, 2.0, 1.0),
        (2, 0.5, 2.0, 1.0, 0.75),
        (4, 0.0, 3.0, 0.0, 0.5),
    ],
)
def test_schedules_for_weight_temperature_and_hard_label_weight(
    bert_teacher, bert_student_same, step, w_logits, temperature, w_hidden, w_hard
):
    cfg = PlanConfig(
        terms=[
            {"knowledge": "logits", "weight": 1.0, "weight_end": 0.0, "temperature": 1.0, "temperature_end": 3.0},
            {"knowledge": "hidden", "weight": 2.0, "weight_end": 0.0},
        ],
        hard_label_weight=1.0,
        hard_label_weight_end=0.5,
    )
    plan = DistillationPlan(cfg, model_spec(bert_teacher), model_spec(bert_student_same))
    batch = _batch()
    tf, sf = _capture(plan, bert_teacher, bert_student_same, batch, step=step)
    hard = sf.output.loss
    loss, logs = plan(tf, sf, labels=batch["labels"], hard_loss=hard, step=step, total_steps=5)
    kl = ref_logits_kl(sf.logits, tf.logits, temperature)  # includes T²
    hidden = (
        ref_hidden_mse(sf.hidden[0], tf.hidden[1], batch["attention_mask"])
        + ref_hidden_mse(sf.hidden[1], tf.hidden[3], batch["attention_mask"])
    ) / 2
    _close(logs["logits_kl"], kl)  # logged values are unweighted
    _close(logs["hidden_mse"], hidden)
    _close(loss, w_logits * kl + w_hidden * hidden + w_hard * hard)


@pytest.mark.parametrize("loss", ["kl", "soft_ce"])
def test_multi_label_logits_take_one_sigmoid_per_label(bert_teacher, bert_student_same, loss):
    """Multi-hot labels [B, C] mark C independent labels: the logits term compares per-label Bernoullis
    (losses.bernoulli_kd), not one softmax over the labels."""
    cfg = PlanConfig(terms=[{"knowledge": "logits", "loss": loss, "temperature": 2.0}])
    plan = DistillationPlan(cfg, model_spec(bert_teacher), model_spec(bert_student_same))
    batch = _batch()
    multi_hot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    tf, sf = _capture(plan, bert_teacher, bert_student_same, {**batch, "labels": torch.tensor([0, 2, 1])})
    _, logs = plan(tf, sf, labels=multi_hot)
    expected = L.bernoulli_kd(sf.logits, tf.logits, 2.0, cross_entropy=loss == "soft_ce")
    _close(logs[f"logits_{loss}"], expected)
    _, single = plan(tf, sf, labels=batch["labels"])  # one label per row: the softmax KD
    assert not torch.isclose(single[f"logits_{loss}"], expected)


def test_duplicate_term_names_get_their_index(bert_teacher, bert_student_same):
    cfg = PlanConfig(terms=[{"knowledge": "hidden", "matching": "first"}, {"knowledge": "hidden", "matching": "last"}])
    plan = DistillationPlan(cfg, model_spec(bert_teacher), model_spec(bert_student_same))
    batch = _batch()
    tf, sf = _capture(plan, bert_teacher, bert_student_same, batch)
    loss, logs = plan(tf, sf)
    assert set(logs) == {"hidden_mse", "hidden_mse_1", "total"}
    mask = batch["attention_mask"]
    _close(
        logs["hidden_mse"],
        (ref_hidden_mse(sf.hidden[0], tf.hidden[0], mask) + ref_hidden_mse(sf.hidden[1], tf.hidden[1], mask)) / 2,
    )
    _close(
        logs["hidden_mse_1"],
        (ref_hidden_mse(sf.hidden[0], tf.hidden[2], mask) + ref_hidden_mse(sf.hidden[1], tf.hidden[3], mask)) / 2,
    )
    _close(loss, logs["hidden_mse"] + logs["hidden_mse_1"])


def test_logits_class_mismatch_names_the_term(bert_teacher):
    student = tiny_bert(2, 16, 2, vocab=VOCAB, seed=3, **BERT).eval()
    student.classifier = torch.nn.Linear(16, 5)  # 5 classes against the teacher's 3
    cfg = PlanConfig(terms=[{"knowledge": "hidden", "loss": "gram"}, {"knowledge": "logits"}])
    plan = DistillationPlan(cfg, model_spec(bert_teacher), model_spec(student))
    batch = _batch()
    del batch["labels"]
    tf, sf = _capture(plan, bert_teacher, student, batch)
    with pytest.raises(ConfigError) as info:
        plan(tf, sf)
    assert info.value.field == "plan.terms[1].knowledge" and "Fix:" in str(info.value)


# ---------------------------------------------------------------------------------------------------
# random matching: re-drawn per step, deterministic in (seed, step)
# ---------------------------------------------------------------------------------------------------
T6 = _spec(6)


def _random_plan(seed: int, teacher=T6, student=S2_NARROW):
    return DistillationPlan(
        PlanConfig(
            seed=seed,
            terms=[
                {"knowledge": "logits"},
                {"knowledge": "hidden", "matching": "random"},
                {"knowledge": "relation", "matching": "random"},
                {"knowledge": "hidden", "loss": "gram", "matching": "uniform"},
            ],
        ),
        teacher,
        student,
    )


def test_random_matching_is_deterministic_per_seed_and_step():
    a, b, other = _random_plan(3), _random_plan(3), _random_plan(4)
    assert a.is_dynamic and not DistillationPlan(PlanConfig(terms=[{"knowledge": "hidden"}]), T4, S2_NARROW).is_dynamic
    steps = range(25)
    torch.manual_seed(123)  # the global RNG plays no part
    draws_a = [a.pairs_at(s) for s in steps]
    torch.manual_seed(456)
    draws_b = [b.pairs_at(s) for s in reversed(steps)][::-1]  # order of the calls plays no part either
    assert draws_a == draws_b
    assert a.pairs_at(7) == draws_a[7]  # asking again gives the same draw
    assert any(other.pairs_at(s) != draws_a[s] for s in steps)
    hidden_draws = {tuple(d[1]) for d in draws_a}
    assert len(hidden_draws) > 3  # re-drawn from step to step
    for d in draws_a:
        assert [s for _, s in d[1]] == [0, 1]
        assert d[1][0][0] < d[1][1][0] and all(0 <= t < 6 for t, _ in d[1])
        assert d[2] == d[1]  # random terms share the step's draw: one layer subset, captured once
        assert d[3] == [(2, 0), (5, 1)]  # static terms do not move
        assert 0 not in d  # logits have no layer pairs


def test_requests_follow_the_random_draw():
    plan = _random_plan(11)
    for step in range(10):
        pairs = plan.pairs_at(step)
        t, s = plan.requests(step)
        assert t.hidden == {tl for tl, _ in pairs[1]} | {2, 5}
        assert t.qkv == {tl for tl, _ in pairs[2]}
        assert s.hidden == {0, 1} and s.qkv == {0, 1}


def test_random_matching_end_to_end(bert_teacher, bert_student_narrow):
    cfg = PlanConfig(
        seed=5, terms=[{"knowledge": "hidden", "matching": "random", "include_embeddings": True}], hard_label_weight=0.0
    )
    plan = DistillationPlan(cfg, model_spec(bert_teacher), model_spec(bert_student_narrow))
    batch = _batch()
    mask = batch["attention_mask"]
    proj = plan.projections
    seen = set()
    for step in range(6):
        pairs = plan.pairs_at(step)
        seen.add(tuple(pairs[0]))
        tf, sf = _capture(plan, bert_teacher, bert_student_narrow, batch, step=step)
        assert set(tf.hidden) == {tl for tl, _ in pairs[0]}
        loss, logs = plan(tf, sf, step=step, total_steps=6, pairs=pairs)
        loss_again, _ = plan(tf, sf, step=step, total_steps=6)  # pairs re-drawn from (seed, step): the same
        _close(loss_again, loss)
        values = [ref_hidden_mse(proj["hidden_mse:emb"](sf.embeddings), tf.embeddings, mask)]
        values += [ref_hidden_mse(proj[f"hidden_mse:{sl}"](sf.hidden[sl]), tf.hidden[tl], mask) for tl, sl in pairs[0]]
        _close(logs["hidden_mse"], sum(values) / len(values))
    assert len(seen) > 1


# ---------------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------------
def test_gradients_reach_student_and_projections_only(bert_teacher, bert_student_narrow):
    cfg = PlanConfig(
        terms=[
            {"knowledge": "logits", "temperature": 2.0},
            {"knowledge": "hidden"},
            {"knowledge": "attention", "head_reduction": "mean"},
            {"knowledge": "relation"},
            {"knowledge": "embeddings", "loss": "cosine"},
        ]
    )
    plan = DistillationPlan(cfg, model_spec(bert_teacher), model_spec(bert_student_narrow))
    batch = _batch()
    tf, sf = _capture(plan, bert_teacher, bert_student_narrow, batch)
    teacher_tensors = [
        tf.logits,
        tf.embeddings,
        *tf.hidden.values(),
        *tf.q.values(),
        *tf.k.values(),
        *tf.v.values(),
        tf.attention_probs(3),
    ]
    assert all(not x.requires_grad and x.grad_fn is None for x in teacher_tensors)
    bert_student_narrow.zero_grad(set_to_none=True)
    plan.zero_grad(set_to_none=True)
    loss, _ = plan(tf, sf, labels=batch["labels"], hard_loss=sf.output.loss)
    loss.backward()
    try:
        assert {k for k in plan.projections} == {"hidden_mse:0", "hidden_mse:1", "embeddings_cosine:emb"}
        for name, p in plan.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        student_params = dict(bert_student_narrow.named_parameters())
        for name in (
            "bert.embeddings.word_embeddings.weight",
            "bert.encoder.layer.0.attention.self.query.weight",
            "bert.encoder.layer.1.attention.self.key.weight",
            "bert.encoder.layer.1.output.dense.weight",
            "classifier.weight",
        ):
            assert student_params[name].grad is not None and student_params[name].grad.abs().sum() > 0, name
        assert all(p.grad is None for p in bert_teacher.parameters())
    finally:
        bert_student_narrow.zero_grad(set_to_none=True)


def test_distillation_terms_alone_train_the_student_not_the_classifier(bert_teacher, bert_student_narrow):
    """A relation-only plan sends gradients to the last block's Q/K/V, not to layers above them."""
    cfg = PlanConfig(
        terms=[{"knowledge": "relation", "matching": "pair", "teacher_layer": -1, "student_layer": 0}],
        hard_label_weight=0.0,
    )
    plan = DistillationPlan(cfg, model_spec(bert_teacher), model_spec(bert_student_narrow))
    tf, sf = _capture(plan, bert_teacher, bert_student_narrow, _batch())
    bert_student_narrow.zero_grad(set_to_none=True)
    loss, _ = plan(tf, sf)
    loss.backward()
    try:
        params = dict(bert_student_narrow.named_parameters())
        assert params["bert.encoder.layer.0.attention.self.value.weight"].grad.abs().sum() > 0
        assert params["bert.encoder.layer.1.attention.self.query.weight"].grad is None
        assert params["classifier.weight"].grad is None
    finally:
        bert_student_narrow.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------------
# decoders: causality
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["llama", "gpt2"])
def decoder_pair(request):
    if request.param == "llama":  # GQA on both sides: 4 heads / 2 KV heads and 2 heads / 1 KV head
        return (
            tiny_llama(4, 32, 4, 2, vocab=VOCAB, seed=0, **LLAMA).eval(),
            tiny_llama(2, 16, 2, 1, vocab=VOCAB, seed=1, **LLAMA).eval(),
        )
    return (
        tiny_gpt2(4, 32, 4, vocab=VOCAB, seed=0, **GPT2).eval(),
        tiny_gpt2(2, 16, 2, vocab=VOCAB, seed=1, **GPT2).eval(),
    )


def test_decoder_plan_values_are_causal(decoder_pair):
    teacher, student = decoder_pair
    cfg = PlanConfig(
        terms=[
            {"knowledge": "hidden", "matching": "uniform"},
            {"knowledge": "relation", "matching": "pair", "teacher_layer": -1, "student_layer": -1},
            {"knowledge": "attention", "head_reduction": "mean", "matching": "last"},
            {"knowledge": "logits", "temperature": 2.0},
        ],
        hard_label_weight=1.0,
    )
    plan = DistillationPlan(cfg, model_spec(teacher), model_spec(student), token_level_logits=True)
    batch = _batch(decoder=True)
    tf, sf = _capture(plan, teacher, student, batch)
    assert tf.causal and sf.causal
    mask = batch["attention_mask"]
    proj = plan.projections
    loss, logs = plan(tf, sf, labels=batch["labels"], hard_loss=sf.output.loss)
    assert torch.isfinite(loss)

    _close(
        logs["hidden_mse"],
        (
            ref_hidden_mse(proj["hidden_mse:0"](sf.hidden[0]), tf.hidden[1], mask)
            + ref_hidden_mse(proj["hidden_mse:1"](sf.hidden[1]), tf.hidden[3], mask)
        )
        / 2,
    )
    causal_rel = sum(ref_relation_kl(getattr(sf, a)[1], getattr(tf, a)[3], 2, mask, causal=True) for a in "qkv")
    full_rel = sum(ref_relation_kl(getattr(sf, a)[1], getattr(tf, a)[3], 2, mask, causal=False) for a in "qkv")
    _close(logs["relation_kl"], causal_rel)
    assert not torch.allclose(causal_rel, full_rel)  # the reference is sensitive to causality
    _close(
        logs["attention_kl"],
        (
            ref_attention_kl(sf.attention_probs(0), tf.attention_probs(2), mask, causal=True, reduce="mean")
            + ref_attention_kl(sf.attention_probs(1), tf.attention_probs(3), mask, causal=True, reduce="mean")
        )
        / 2,
    )
    # token-level logits KL over the positions with a label
    _close(logs["logits_kl"], ref_logits_kl(sf.logits, tf.logits, 2.0, rows=batch["labels"] != -100))
    loss.backward()
    assert all(p.grad is not None for p in plan.projections.parameters())
    student.zero_grad(set_to_none=True)


def _future(length):
    return torch.ones(length, length, dtype=torch.bool).triu(1)


def test_decoder_attention_terms_ignore_future_keys(decoder_pair):
    """Garbage in the teacher's maps at key > query (masked out by causality) changes nothing."""
    teacher, student = decoder_pair
    cfg = PlanConfig(
        terms=[
            {"knowledge": "attention", "loss": "kl", "head_reduction": "mean", "matching": "last", "name": "probs_kl"},
            {
                "knowledge": "attention",
                "loss": "mse",
                "attention_on": "scores",
                "head_reduction": "mean",
                "matching": "last",
                "name": "scores_mse",
            },
            {
                "knowledge": "attention",
                "loss": "kl",
                "attention_on": "scores",
                "head_reduction": "mean",
                "matching": "last",
                "name": "scores_kl",
            },
        ],
        hard_label_weight=0.0,
    )
    plan = DistillationPlan(cfg, model_spec(teacher), model_spec(student))
    batch = _batch(decoder=True)
    tf, sf = _capture(plan, teacher, student, batch)
    _, logs = plan(tf, sf)
    length = batch["input_ids"].shape[1]

    def tampered(where):
        gen = torch.Generator().manual_seed(0)
        probs = {
            i: torch.where(where, torch.rand(tf.attention_probs(i).shape, generator=gen), tf.attention_probs(i))
            for i in (2, 3)
        }
        scores = {
            i: torch.where(
                where, 100 * torch.randn(tf.attention_scores(i).shape, generator=gen), tf.attention_scores(i)
            )
            for i in (2, 3)
        }
        tf.attention_probs, tf.attention_scores = probs.__getitem__, (lambda i, masked=True: scores[i])
        try:
            return plan(tf, sf)[1]
        finally:
            del tf.attention_probs, tf.attention_scores  # back to the class methods

    future_logs = tampered(_future(length))
    for name in ("probs_kl", "scores_mse", "scores_kl"):
        torch.testing.assert_close(future_logs[name], logs[name])
    # the same garbage at past keys does change every term (the check above is not vacuous)
    past = torch.zeros(length, length, dtype=torch.bool)
    past[3, 1] = True
    past_logs = tampered(past)
    for name in ("probs_kl", "scores_mse", "scores_kl"):
        assert not torch.allclose(past_logs[name], logs[name]), name


def _last_row_kl(s_x, t_x, heads, n):
    """Σ over relation heads of KL for query row n-1 of example 0 (its keys 0..n-1: all of them)."""

    def log_probs(x):
        flat = x[0].permute(1, 0, 2).reshape(x.shape[2], -1)[:n].float()  # [n, H*d]
        xr = flat.view(n, heads, -1).transpose(0, 1)  # [A, n, d_r]
        return (xr[:, -1:] @ xr.transpose(1, 2) / math.sqrt(xr.shape[-1])).log_softmax(-1)  # [A, 1, n]

    log_q, log_p = log_probs(s_x), log_probs(t_x)
    return (log_p.exp() * (log_p - log_q)).sum()


def test_decoder_relation_rows_only_see_earlier_positions(decoder_pair):
    """Perturbing the teacher's Q/K/V at the last position of a sequence changes only that query row.

    Without causality every row of that sequence would see the perturbed key, and the change in the
    term would not equal the change of the last row alone.
    """
    teacher, student = decoder_pair
    cfg = PlanConfig(
        terms=[{"knowledge": "relation", "matching": "pair", "teacher_layer": -1, "student_layer": -1}],
        hard_label_weight=0.0,
    )
    plan = DistillationPlan(cfg, model_spec(teacher), model_spec(student))
    batch = _batch(decoder=True)
    tf, sf = _capture(plan, teacher, student, batch)
    _, logs = plan(tf, sf)
    n = LENGTHS[0]  # example 0 has no padding; its last position is n - 1
    orig = {a: getattr(tf, a)[3] for a in "qkv"}
    gen = torch.Generator().manual_seed(0)
    pert = {}
    for a in "qkv":
        x = orig[a].clone()
        x[0, :, n - 1] = 3 * torch.randn(x[0, :, n - 1].shape, generator=gen)
        pert[a] = getattr(tf, a)[3] = x
    _, logs_perturbed = plan(tf, sf)
    rows = sum(LENGTHS) * 2  # valid query rows x 2 relation heads (the student's head count)
    change = (
        sum(
            _last_row_kl(getattr(sf, a)[1], pert[a], 2, n) - _last_row_kl(getattr(sf, a)[1], orig[a], 2, n)
            for a in "qkv"
        )
        / rows
    )
    assert abs(float(change.detach())) > 1e-4
    _close(logs_perturbed["relation_kl"] - logs["relation_kl"], change)


def test_sliding_window_attention_terms_are_finite_and_skip_keys_outside_the_window():
    """Mistral, window 3 < length 7: keys outside the window hold finfo.min scores in both models.

    Averaged over heads they become -inf; they must be left out (as causal/padding keys are), not
    turned into -inf - -inf = NaN, and must not count in the mean.
    """
    mistral = dict(cls=T.MistralForCausalLM, positions=32, sliding_window=3, initializer_range=INIT)
    teacher = tiny_llama(2, 32, 4, 2, vocab=VOCAB, seed=0, **mistral).eval()
    student = tiny_llama(1, 16, 2, 2, vocab=VOCAB, seed=1, **mistral).eval()
    cfg = PlanConfig(
        terms=[
            {
                "knowledge": "attention",
                "loss": "mse",
                "attention_on": "scores",
                "head_reduction": "mean",
                "matching": "last",
                "name": "scores_mse",
            },
            {"knowledge": "attention", "loss": "kl", "head_reduction": "mean", "matching": "last", "name": "probs_kl"},
        ],
        hard_label_weight=0.0,
    )
    plan = DistillationPlan(cfg, model_spec(teacher), model_spec(student))
    batch = _batch(decoder=True)
    mask = batch["attention_mask"]
    tf, sf = _capture(plan, teacher, student, batch)
    assert tf.sliding_windows == {1: 3} and sf.sliding_windows == {0: 3}
    loss, logs = plan(tf, sf)
    assert torch.isfinite(loss)
    _close(
        logs["scores_mse"],
        ref_attention_mse(sf.attention_scores(0), tf.attention_scores(1), mask, causal=True, reduce="mean", window=3),
    )
    _close(
        logs["probs_kl"],
        ref_attention_kl(sf.attention_probs(0), tf.attention_probs(1), mask, causal=True, reduce="mean"),
    )
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)


def test_regression_logits_distill_values_not_a_constant_softmax():
    """STS-B has one output: KL over a 1-way softmax is always 0, so the plan matches values (MSE)."""
    import torch

    from unikd.capture import Features
    from unikd.families import ModelSpec
    from unikd.plan import DistillationPlan, PlanConfig

    spec = ModelSpec("bert", 2, 8, 2, 2, 4, 10, False)
    plan = DistillationPlan(PlanConfig.model_validate({"terms": [{"knowledge": "logits", "loss": "kl"}]}), spec, spec)
    mask = torch.ones(3, 4, dtype=torch.long)

    def feats(logits):
        return Features(
            embeddings=None,
            hidden={},
            q={},
            k={},
            v={},
            logits=logits,
            attention_mask=mask,
            causal=False,
            scalings={},
            output=None,
        )

    s, t = torch.tensor([[1.0], [2.0], [0.5]]), torch.tensor([[1.5], [2.0], [3.5]])
    _, logs = plan(feats(t), feats(s))
    assert abs(float(logs["logits_kl"]) - ((0.5**2 + 0 + 3.0**2) / 3)) < 1e-6


def _two_attention_terms(teacher, student) -> DistillationPlan:
    """Score MSE and probability KL on the same (uniformly matched) layers, plus logits."""
    cfg = PlanConfig(
        terms=[
            {"knowledge": "attention", "attention_on": "scores", "loss": "mse", "head_reduction": "mean"},
            {"knowledge": "attention", "attention_on": "probs", "loss": "kl", "head_reduction": "mean"},
            {"knowledge": "logits"},
        ]
    )
    return DistillationPlan(cfg, model_spec(teacher), model_spec(student))


def _assert_same_logs_and_grads(results):
    (logs_a, grads_a), (logs_b, grads_b) = results
    assert logs_a.keys() == logs_b.keys()
    for key in logs_a:
        torch.testing.assert_close(logs_a[key], logs_b[key])
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)


@pytest.mark.parametrize("attention", ["inline", "recompute"])
def test_release_maps_changes_nothing_but_what_the_features_hold(bert_teacher, bert_student_narrow, attention):
    """Two attention terms read the same layers: maps are dropped after the last one, values are unchanged."""
    plan = _two_attention_terms(bert_teacher, bert_student_narrow)
    batch = _batch()
    t_req, s_req = plan.requests(0)
    results = []
    for release in (False, True):
        with (
            FeatureCapture(bert_teacher, t_req, attention=attention) as tc,
            FeatureCapture(bert_student_narrow, s_req, attention=attention) as sc,
        ):
            tf, sf = tc(batch, teacher=True), sc(batch)
            bert_student_narrow.zero_grad(set_to_none=True)
            loss, logs = plan(tf, sf, labels=batch["labels"], release_maps=release)
            if release and attention == "inline":
                assert tf.inline_scores == tf.inline_probs == sf.inline_scores == sf.inline_probs == {}
            elif attention == "inline":
                assert set(sf.inline_scores) == set(sf.inline_probs) == {p[1] for p in plan.pairs_at(0)[0]}
            loss.backward()
        grads = {n: p.grad.clone() for n, p in bert_student_narrow.named_parameters() if p.grad is not None}
        results.append((logs, grads))
    _assert_same_logs_and_grads(results)
    bert_student_narrow.zero_grad(set_to_none=True)


def test_inline_consumer_takes_attention_losses_during_the_student_forward(bert_teacher, bert_student_narrow):
    """The losses taken as each student layer runs equal the ones taken afterwards, gradients too, and the
    student's maps are never held."""
    plan = _two_attention_terms(bert_teacher, bert_student_narrow)
    batch = _batch()
    t_req, s_req = plan.requests(0)
    results = []
    for consume in (False, True):
        distiller = Distiller(plan, bert_teacher, bert_student_narrow, attention="inline")
        assert (distiller.teacher_capture.request, distiller.student_capture.request) == (t_req, s_req)
        with distiller.teacher_capture, distiller.student_capture as sc:
            tf = distiller.capture_teacher(batch)
            sf, precomputed = distiller.capture_student(batch, tf) if consume else (sc(batch), None)
            assert sc.on_inline is None  # the consumer lives for one student forward only
            if consume:
                assert sf.inline_scores == sf.inline_probs == {}  # used up inside the forward
                assert tf.inline_scores == tf.inline_probs == {}  # teacher maps released after their last pair
                assert len(precomputed) == 2 * len(plan.pairs_at(0)[0])
            bert_student_narrow.zero_grad(set_to_none=True)
            loss, logs = plan(tf, sf, labels=batch["labels"], precomputed=precomputed)
            assert not precomputed  # every value was used
            loss.backward()
        grads = {n: p.grad.clone() for n, p in bert_student_narrow.named_parameters() if p.grad is not None}
        results.append((logs, grads))
    _assert_same_logs_and_grads(results)
    bert_student_narrow.zero_grad(set_to_none=True)
