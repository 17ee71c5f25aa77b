"""The plan (unikd.plan): projections keyed by term name and their seeds, what each term asks the captures for, random matching per step, which parameters the gradients reach, schedules, and the maps released during the student's forward."""

from __future__ import annotations
import pytest
import torch
from unikd.capture import FeatureCapture
from unikd.distiller import Distiller
from unikd.errors import ConfigError
from unikd.families import model_spec
from unikd.plan import DistillationPlan, PlanConfig, linear_schedule
from plan_builders import (
    S2_NARROW,
    S2_SAME,
    T4,
    _assert_same_logs_and_grads,
    _batch,
    _capture,
    _close,
    _projection_keys,
    _random_plan,
    _spec,
    _two_attention_terms,
    ref_hidden_mse,
    ref_logits_kl,
)


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
