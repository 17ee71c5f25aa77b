"""The knowledge terms (unikd.knowledge): each term's validation naming its field, its defaults, and its value against a hand-written reference on BERT, Llama and GPT-2 models (padding, causal masks, sliding windows, regression)."""

from __future__ import annotations
import pytest
import torch
import torch.nn.functional as F
import transformers as T
from helpers import tiny_bert, tiny_llama
from pydantic import ValidationError
from unikd import losses as L
from unikd.errors import ConfigError
from unikd.families import ModelSpec, model_spec
from unikd.plan import DistillationPlan, PlanConfig, term_config
from plan_builders import (
    BERT,
    INIT,
    LENGTHS,
    OK_TERM,
    VOCAB,
    _batch,
    _capture,
    _close,
    _future,
    _last_row_kl,
    _spec,
    ref_attention_kl,
    ref_attention_mse,
    ref_cosine,
    ref_gram,
    ref_hidden_mse,
    ref_logits_kl,
    ref_relation_kl,
)


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
    # token-level logits KL over the positions whose next token has a label (position i predicts token i + 1)
    has_label = batch["labels"] != -100
    next_has_label = torch.cat([has_label[:, 1:], torch.zeros_like(has_label[:, :1])], dim=1)
    _close(logs["logits_kl"], ref_logits_kl(sf.logits, tf.logits, 2.0, rows=next_has_label))
    assert not torch.allclose(
        ref_logits_kl(sf.logits, tf.logits, 2.0, rows=has_label), logs["logits_kl"]
    )  # the shift matters on this batch
    loss.backward()
    assert all(p.grad is not None for p in plan.projections.parameters())
    student.zero_grad(set_to_none=True)


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
    from unikd.plan import DistillationPlan, PlanConfig

    spec = ModelSpec("bert", 2, 8, 2, 2, 4, 10, False)
    plan = DistillationPlan(PlanConfig.model_validate({"terms": [{"knowledge": "logits", "loss": "kl"}]}), spec, spec)
    mask = torch.ones(3, 4, dtype=torch.long)

    def feats(logits):
        return Features(logits=logits, attention_mask=mask)

    s, t = torch.tensor([[1.0], [2.0], [0.5]]), torch.tensor([[1.5], [2.0], [3.5]])
    _, logs = plan(feats(t), feats(s))
    assert abs(float(logs["logits_kl"]) - ((0.5**2 + 0 + 3.0**2) / 3)) < 1e-6
