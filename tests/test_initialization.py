"""Student initializers on tiny random teachers: exact copies, slices, importance pruning, round trips."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import transformers as T
from helpers import tiny_bert, tiny_distilbert, tiny_gpt2, tiny_llama

from unikd.errors import ConfigError
from unikd.families import get_adapter
from unikd.initialization import (
    INITIALIZERS,
    InitConfig,
    check_init,
    select_layers,
)
from unikd.initialization import build_student
from unikd.student import StudentShape, count_parameters, student_config
from unikd.weight_copy import importance_indices, importance_scores, slice_indices

T.logging.set_verbosity_error()


#: family -> (its tiny teacher's builder, taking seed=; the Auto class that reloads it)
FAMILIES = {
    "bert": (partial(tiny_bert, 4, 64, 4, vocab=97, positions=40, num_labels=3), T.AutoModelForSequenceClassification),
    "distilbert": (
        partial(tiny_distilbert, 4, 64, 4, vocab=97, positions=40, cls=T.DistilBertForMaskedLM),
        T.AutoModelForMaskedLM,
    ),
    "gpt2": (partial(tiny_gpt2, 4, 64, 4, vocab=97, positions=40), T.AutoModelForCausalLM),
    # grouped-query attention: 8 query heads share 2 key/value heads
    "llama": (partial(tiny_llama, 4, 64, 8, 2, vocab=97, ffn=96), T.AutoModelForCausalLM),
}


def _teacher(family: str):
    return FAMILIES[family][0](seed=0).eval()


def _batch(vocab: int = 97):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _out(model, batch):
    with torch.no_grad():
        return model(**batch).logits


# ---- layer selection ------------------------------------------------------------------------
def test_layer_selection_rules():
    assert select_layers(12, 6, "every-other") == [0, 2, 4, 7, 9, 11]  # DistilBERT
    assert select_layers(12, 4, "uniform") == [2, 5, 8, 11]
    assert select_layers(12, 6, "uniform") == [1, 3, 5, 7, 9, 11]
    assert select_layers(12, 3, "first") == [0, 1, 2]
    assert select_layers(12, 3, "last") == [9, 10, 11]
    assert select_layers(12, 4, "every-other") == [0, 3, 8, 11]
    assert select_layers(24, 6, "every-other") == [0, 4, 8, 15, 19, 23]
    assert select_layers(12, 3, [0, 5, 11]) == [0, 5, 11]
    for t in range(1, 25):
        for s in range(1, t + 1):
            for rule in ("uniform", "first", "last", "every-other"):
                layers = select_layers(t, s, rule)
                assert len(layers) == s and layers == sorted(set(layers)) and 0 <= layers[0] and layers[-1] < t
            every_other = select_layers(t, s, "every-other")
            assert every_other[0] == 0 and (every_other[-1] == t - 1 or s == 1)  # ends kept
            assert select_layers(t, t, "every-other") == list(range(t))


@pytest.mark.parametrize("rule,problem", [([0, 1], "lists 2"), ([0, 1, 12], "out of range"), ("middle", "unknown")])
def test_layer_selection_errors(rule, problem):
    with pytest.raises(ConfigError) as err:
        select_layers(12, 3, rule)
    assert err.value.field == "student.init.layers" and problem in err.value.problem


# ---- teacher-layers / slice at full size reproduce the teacher exactly --------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_full_copy_reproduces_the_teacher(family):
    teacher = _teacher(family)
    batch = _batch()
    expected = _out(teacher, batch)
    for strategy in ("teacher-layers", "slice", "importance"):
        layers = "first" if strategy == "teacher-layers" else "uniform"
        student = build_student(
            teacher, StudentShape(), InitConfig(strategy=strategy, layers=layers), calibration_batch=batch
        ).eval()
        assert type(student) is type(teacher)
        assert torch.equal(_out(student, batch), expected), strategy


@pytest.mark.parametrize("family", list(FAMILIES))
def test_teacher_layers_copies_the_selected_blocks(family):
    teacher = _teacher(family)
    adapter = get_adapter(teacher)
    student = build_student(teacher, StudentShape(num_layers=2), InitConfig(strategy="teacher-layers", layers=[3, 1]))
    for s_block, t_index in zip(adapter.blocks(student), [3, 1]):
        t_state = adapter.blocks(teacher)[t_index].state_dict()
        for name, value in s_block.state_dict().items():
            assert torch.equal(value, t_state[name]), name
    t_params = dict(teacher.named_parameters())
    s_params = dict(student.named_parameters())
    for name in s_params:  # embeddings, final norms, pooler and heads: copied too
        if ".layer." not in name and ".layers." not in name and ".h." not in name:
            assert torch.equal(s_params[name], t_params[name]), name


# ---- slice / importance to a smaller shape --------------------------------------------------
SMALL = StudentShape(num_layers=2, hidden_size=32, ffn_size=48)


@pytest.mark.parametrize("strategy", ["slice", "importance"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_pruned_student_shape_counts_and_round_trip(family, strategy, tmp_path):
    teacher = _teacher(family)
    batch = _batch()
    student = build_student(teacher, SMALL, InitConfig(strategy=strategy), calibration_batch=batch).eval()
    spec = get_adapter(student).spec(student.config)
    t_head_dim = get_adapter(teacher).spec(teacher.config).head_dim
    assert (spec.num_layers, spec.hidden_size, spec.head_dim) == (2, 32, t_head_dim)
    assert get_adapter(student).ffn_size(student.config) == 48
    counts = count_parameters(student)
    assert counts.total == student.num_parameters() == count_parameters(student.config, type(student).__name__).total
    out = _out(student, batch)
    assert out.shape[:-1] == _out(teacher, batch).shape[:-1] and torch.isfinite(out).all()

    student.save_pretrained(tmp_path)
    reloaded = FAMILIES[family][1].from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(student)
    assert torch.equal(_out(reloaded, batch), out)


def test_slice_takes_leading_rows_and_columns_bert():
    teacher = _teacher("bert")
    student = build_student(teacher, SMALL, InitConfig(strategy="slice", layers="last"))
    t, s = teacher.bert, student.bert
    assert torch.equal(s.embeddings.word_embeddings.weight, t.embeddings.word_embeddings.weight[:, :32])
    assert torch.equal(s.embeddings.LayerNorm.weight, t.embeddings.LayerNorm.weight[:32])
    q_t, q_s = t.encoder.layer[2].attention.self.query, s.encoder.layer[0].attention.self.query
    assert torch.equal(q_s.weight, q_t.weight[:32, :32]) and torch.equal(q_s.bias, q_t.bias[:32])  # heads 0, 1
    assert torch.equal(
        s.encoder.layer[1].intermediate.dense.weight, t.encoder.layer[3].intermediate.dense.weight[:48, :32]
    )
    assert torch.equal(s.encoder.layer[1].output.dense.weight, t.encoder.layer[3].output.dense.weight[:32, :48])
    assert torch.equal(s.pooler.dense.weight, t.pooler.dense.weight[:32, :32])
    assert torch.equal(student.classifier.weight, teacher.classifier.weight[:, :32])


def test_slice_gpt2_fused_qkv():
    teacher = _teacher("gpt2")
    student = build_student(
        teacher, StudentShape(num_layers=1, hidden_size=32), InitConfig(strategy="slice", layers="first")
    )
    w_t = teacher.transformer.h[0].attn.c_attn.weight  # Conv1D [in 64, out q|k|v 3 x 64]
    w_s = student.transformer.h[0].attn.c_attn.weight  # [32, 3 x 32]
    assert w_s.shape == (32, 96)
    expected = torch.cat([w_t[:32, 0:32], w_t[:32, 64:96], w_t[:32, 128:160]], dim=1)
    assert torch.equal(w_s, expected)
    assert torch.equal(
        student.transformer.h[0].attn.c_proj.weight, teacher.transformer.h[0].attn.c_proj.weight[:32, :32]
    )
    assert torch.equal(student.transformer.h[0].mlp.c_fc.weight, teacher.transformer.h[0].mlp.c_fc.weight[:32, :128])
    assert student.lm_head.weight.data_ptr() == student.transformer.wte.weight.data_ptr()  # still tied


def test_slice_llama_keeps_query_heads_with_their_kv_head():
    teacher = _teacher("llama")  # 8 heads of 8 dims, 2 KV heads: heads 0-3 use KV 0, heads 4-7 use KV 1
    student = build_student(
        teacher,
        StudentShape(num_layers=1, hidden_size=32),  # 4 heads, 2 KV heads
        InitConfig(strategy="slice", layers="first"),
    )
    c = student.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (4, 2, 8)
    a_t, a_s = teacher.model.layers[0].self_attn, student.model.layers[0].self_attn
    rows = torch.cat([torch.arange(0, 16), torch.arange(32, 48)])  # heads 0, 1 (KV 0) and 4, 5 (KV 1)
    assert torch.equal(a_s.q_proj.weight, a_t.q_proj.weight[rows][:, :32])
    assert torch.equal(a_s.k_proj.weight, a_t.k_proj.weight[:, :32])
    assert torch.equal(a_s.o_proj.weight, a_t.o_proj.weight[:32][:, rows])


def test_slice_of_ffn_only_keeps_the_function_when_the_dropped_neurons_are_dead():
    teacher = _teacher("llama")
    batch = _batch()
    with torch.no_grad():
        for layer in teacher.model.layers:
            layer.mlp.down_proj.weight[:, 48:] = 0  # neurons 48.. contribute nothing
    student = build_student(teacher, StudentShape(ffn_size=48), InitConfig(strategy="slice")).eval()
    torch.testing.assert_close(_out(student, batch), _out(teacher, batch), rtol=1e-5, atol=1e-5)


# ---- importance keeps what is active -------------------------------------------------------------
def test_importance_keeps_dominant_neuron_head_and_channel():
    teacher = _teacher("bert")
    batch = _batch()
    layer = teacher.bert.encoder.layer[1]
    with torch.no_grad():
        layer.intermediate.dense.weight[100] *= 40  # FFN neuron 100 of layer 1 dominates
        layer.intermediate.dense.bias[100] += 20
        layer.attention.self.value.weight[48:64] *= 40  # head 3 of layer 1 (dims 48..63) dominates
        teacher.bert.embeddings.LayerNorm.weight[50] = 30.0  # hidden channel 50 dominates
    shape = StudentShape(num_layers=2, hidden_size=32, ffn_size=16)  # 2 heads of 16 dims
    s_cfg = student_config(teacher.config, shape)
    scores = importance_scores(teacher, batch)
    keep = importance_indices(teacher.config, s_cfg, [0, 1], scores)
    assert 50 in keep.hidden.tolist() and keep.hidden.tolist() == sorted(keep.hidden.tolist())
    assert 3 in keep.heads[1] and keep.heads[1] == sorted(keep.heads[1])
    assert 100 in keep.ffn[1].tolist() and keep.ffn[1].tolist() == sorted(keep.ffn[1].tolist())
    # slice would have dropped all three
    sliced = slice_indices(teacher.config, s_cfg, [0, 1])
    assert 50 not in sliced.hidden.tolist() and 3 not in sliced.heads[1] and 100 not in sliced.ffn[1].tolist()

    student = build_student(teacher, shape, InitConfig(strategy="importance", layers="first"), calibration_batch=batch)
    pos = keep.ffn[1].tolist().index(100)
    hidden = keep.hidden
    t_row = layer.intermediate.dense.weight[100, hidden]
    assert torch.equal(student.bert.encoder.layer[1].intermediate.dense.weight[pos], t_row)
    assert torch.equal(student.bert.embeddings.LayerNorm.weight, teacher.bert.embeddings.LayerNorm.weight[hidden])
    v_rows = torch.cat([torch.arange(h * 16, h * 16 + 16) for h in keep.heads[1]])
    assert torch.equal(
        student.bert.encoder.layer[1].attention.self.value.weight, layer.attention.self.value.weight[v_rows][:, hidden]
    )


def test_importance_keeps_the_kv_group_of_a_dominant_head():
    teacher = _teacher("llama")
    with torch.no_grad():
        teacher.model.layers[0].self_attn.v_proj.weight[8:16] *= 50  # KV head 1 -> heads 4..7 dominate
    s_cfg = student_config(teacher.config, StudentShape(num_layers=1, hidden_size=32, num_kv_heads=1))
    assert (s_cfg.num_attention_heads, s_cfg.num_key_value_heads) == (4, 1)
    keep = importance_indices(teacher.config, s_cfg, [0], importance_scores(teacher, _batch()))
    assert keep.kv_heads[0] == [1] and keep.heads[0] == [4, 5, 6, 7]
    assert slice_indices(teacher.config, s_cfg, [0]).heads[0] == [0, 1, 2, 3]


def test_importance_without_batch_warns_and_uses_random_tokens():
    teacher = _teacher("gpt2")
    with pytest.warns(UserWarning, match="calibration batch"):
        student = build_student(teacher, SMALL, InitConfig(strategy="importance", calibration_texts=4))
    assert student.config.n_embd == 32


# ---- random / pretrained / source -----------------------------------------------------------------
def test_random_is_the_fresh_family_init():
    teacher = _teacher("bert")
    student = build_student(teacher, StudentShape(num_layers=2, hidden_size=32), InitConfig(strategy="random"))
    assert student.num_parameters() == count_parameters(student).total
    assert not torch.equal(
        student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight[:, :32]
    )


def test_pretrained_loads_same_task_across_families(tmp_path):
    teacher = _teacher("bert")
    base = tiny_distilbert(2, 32, 2, vocab=97, positions=40, cls=T.DistilBertModel, seed=3)
    base.save_pretrained(tmp_path / "distil")
    student = build_student(
        teacher, StudentShape(), InitConfig(strategy="pretrained", pretrained=str(tmp_path / "distil"))
    )
    assert type(student) is T.DistilBertForSequenceClassification and student.config.num_labels == 3
    assert torch.equal(student.distilbert.embeddings.word_embeddings.weight, base.embeddings.word_embeddings.weight)

    copy = build_student(teacher, SMALL, InitConfig(strategy="slice"))
    copy.save_pretrained(tmp_path / "small")
    loaded = build_student(
        teacher, StudentShape(num_layers=2), InitConfig(strategy="pretrained", pretrained=str(tmp_path / "small"))
    ).eval()
    assert torch.equal(_out(loaded, _batch()), _out(copy.eval(), _batch()))
    with pytest.raises(ConfigError) as err:  # a shape that contradicts the checkpoint
        build_student(
            teacher, StudentShape(num_layers=3), InitConfig(strategy="pretrained", pretrained=str(tmp_path / "small"))
        )
    assert err.value.field == "student.shape.num_layers"


def test_source_donates_the_weights(tmp_path):
    teacher = _teacher("bert")
    donor = FAMILIES["bert"][0](seed=7)
    donor.save_pretrained(tmp_path)
    student = build_student(
        teacher, StudentShape(num_layers=2), InitConfig(strategy="teacher-layers", source=str(tmp_path))
    )
    assert torch.equal(
        student.bert.encoder.layer[0].output.dense.weight, donor.bert.encoder.layer[1].output.dense.weight
    )
    assert not torch.equal(
        student.bert.encoder.layer[0].output.dense.weight, teacher.bert.encoder.layer[1].output.dense.weight
    )


# ---- bad requests fail with the field name, before weights are touched ---------------------------
@pytest.mark.parametrize(
    "shape,init,field",
    [
        (StudentShape(num_heads=3), InitConfig(strategy="slice"), "student.shape.num_heads"),
        (StudentShape(num_layers=5), InitConfig(strategy="teacher-layers"), "student.shape.num_layers"),
        (StudentShape(hidden_size=32), InitConfig(strategy="teacher-layers"), "student.shape.hidden_size"),
        (StudentShape(hidden_size=128), InitConfig(strategy="slice"), "student.shape.hidden_size"),
        (StudentShape(ffn_size=256), InitConfig(strategy="importance"), "student.shape.ffn_size"),
        (StudentShape(num_layers=2), InitConfig(layers=[0, 9]), "student.init.layers"),
        (
            StudentShape(),
            InitConfig(strategy="pretrained", pretrained="/nonexistent/unikd-student"),
            "student.init.pretrained",
        ),
        (StudentShape(), InitConfig(strategy="pretrained"), "student.init.pretrained"),
        (StudentShape(), InitConfig(source="./missing-dir"), "student.init.source"),
    ],
)
def test_bad_requests_raise_before_weights_are_touched(shape, init, field, monkeypatch):
    teacher = _teacher("bert")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}

    def boom(*args, **kwargs):
        raise AssertionError("weights were created or loaded")

    monkeypatch.setattr(T.BertForSequenceClassification, "_from_config", classmethod(boom))
    monkeypatch.setattr(T.PreTrainedModel, "from_pretrained", classmethod(boom))
    with pytest.raises(ConfigError) as err:
        build_student(teacher, shape, init)
    assert err.value.field == field and err.value.fix
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_initializers_validate_when_called_directly():
    teacher = _teacher("bert")
    big = T.BertForSequenceClassification(student_config(teacher.config, StudentShape(num_layers=6)))
    with pytest.raises(ConfigError) as err:
        INITIALIZERS["teacher-layers"](big, teacher, InitConfig(strategy="teacher-layers"))
    assert err.value.field == "student.shape.num_layers"
    narrow = student_config(teacher.config, StudentShape(hidden_size=32))
    assert check_init(teacher.config, narrow, InitConfig(strategy="slice")) == [0, 1, 2, 3]
    with pytest.raises(ConfigError):
        check_init(teacher.config, narrow, InitConfig(strategy="teacher-layers"))
    assert set(INITIALIZERS) == {"random", "teacher-layers", "slice", "importance", "prune", "pretrained"}
