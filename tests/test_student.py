"""Student configs, exact parameter counts and the budget helper (tiny configs built here)."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from unikd.errors import ConfigError
from unikd.initialization import InitConfig
from unikd.initialization import build_student
from unikd.student import (
    BudgetRow,
    ParamCount,
    StudentShape,
    budget_configs,
    count_parameters,
    format_budget_table,
    parse_budget,
    resolve_shape,
    student_config,
)

T.logging.set_verbosity_error()


BERT = dict(
    vocab_size=97,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
    num_labels=3,
)
DISTIL = dict(vocab_size=97, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=40, num_labels=3)
GPT2 = dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=40, num_labels=3, bos_token_id=0, eos_token_id=0)
LLAMA = dict(
    vocab_size=97,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    num_labels=3,
)


def _cases():
    """(model class, config) pairs covering every family, the common heads and tied/untied LM heads."""
    cases = []
    for tie in (True, False):
        for name in (
            "BertModel",
            "BertForSequenceClassification",
            "BertForMaskedLM",
            "BertForTokenClassification",
            "BertForMultipleChoice",
            "BertForPreTraining",
        ):
            cases.append((name, T.BertConfig(**BERT, tie_word_embeddings=tie)))
        for name in ("RobertaForSequenceClassification", "RobertaForMaskedLM"):
            cases.append((name, T.RobertaConfig(**BERT, tie_word_embeddings=tie)))
        for e in (16, 32):
            for name in ("ElectraForSequenceClassification", "ElectraForMaskedLM", "ElectraForPreTraining"):
                cases.append((name, T.ElectraConfig(**BERT, embedding_size=e, tie_word_embeddings=tie)))
        for name in ("DistilBertModel", "DistilBertForSequenceClassification", "DistilBertForMaskedLM"):
            cases.append((name, T.DistilBertConfig(**DISTIL, tie_word_embeddings=tie)))
        for name in ("GPT2Model", "GPT2LMHeadModel", "GPT2ForSequenceClassification"):
            cases.append((name, T.GPT2Config(**GPT2, tie_word_embeddings=tie)))
        cases.append(("GPT2LMHeadModel", T.GPT2Config(**GPT2, n_inner=48, tie_word_embeddings=tie)))
        for prefix, cls in (("Llama", T.LlamaConfig), ("Qwen2", T.Qwen2Config), ("Mistral", T.MistralConfig)):
            for head in ("Model", "ForCausalLM", "ForSequenceClassification"):
                cases.append((prefix + head, cls(**LLAMA, tie_word_embeddings=tie)))
    cases.append(("LlamaForCausalLM", T.LlamaConfig(**LLAMA, attention_bias=True, mlp_bias=True, head_dim=16)))
    return cases


@pytest.mark.parametrize("name,config", _cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_count_parameters_matches_num_parameters(name, config):
    model = getattr(T, name)(config)
    counts = count_parameters(model)
    assert counts.total == model.num_parameters() == counts.embedding + counts.non_embedding
    assert count_parameters(config, architecture=name) == counts  # the formula needs only the config


def test_count_parameters_real_shapes():
    # BERT-base (bare model, with pooler) and GPT-2 small with its tied LM head: published sizes.
    assert count_parameters(T.BertConfig()) == ParamCount(23_837_184, 85_645_056, 109_482_240)
    gpt2 = T.GPT2Config(architectures=["GPT2LMHeadModel"])
    assert gpt2.tie_word_embeddings
    assert count_parameters(gpt2).total == 124_439_808
    with torch.device("meta"):
        bert = T.BertForSequenceClassification(T.BertConfig(num_labels=2))
        lm = T.GPT2LMHeadModel(T.GPT2Config())
    assert count_parameters(bert).total == bert.num_parameters() == 109_482_240 + 768 * 2 + 2
    assert count_parameters(lm).total == lm.num_parameters() == 124_439_808
    # the embedding part is exactly the token + position (+ token-type + LayerNorm) tables
    assert count_parameters(lm).embedding == (50257 + 1024) * 768
    assert count_parameters(bert).embedding == (30522 + 512 + 2) * 768 + 2 * 768


def test_count_parameters_unknown_head_on_config_is_a_config_error():
    config = T.GPT2Config(**GPT2)
    with pytest.raises(ConfigError) as err:
        count_parameters(config, architecture="GPT2DoubleHeadsModel")
    assert err.value.field == "model"
    model = T.GPT2DoubleHeadsModel(config)  # a built model is counted directly instead
    assert count_parameters(model).total == model.num_parameters()


def test_student_config_uses_family_keys():
    d = student_config(T.DistilBertConfig(**DISTIL), StudentShape(num_layers=1, hidden_size=16, ffn_size=24))
    assert (d.n_layers, d.dim, d.n_heads, d.hidden_dim) == (1, 16, 2, 24)  # heads = 16 / teacher head size 8
    assert (d.vocab_size, d.num_labels) == (97, 3)

    g = student_config(T.GPT2Config(**GPT2), StudentShape(num_layers=1, hidden_size=16))
    assert (g.n_layer, g.n_embd, g.n_head, g.n_inner) == (1, 16, 2, None)  # n_inner None = 4 x n_embd
    g = student_config(T.GPT2Config(**GPT2), StudentShape(ffn_size=40))
    assert (g.n_embd, g.n_inner) == (32, 40)

    teacher = T.LlamaConfig(**LLAMA)
    assert teacher.head_dim == 8
    ll = student_config(teacher, StudentShape(hidden_size=16))
    assert (ll.hidden_size, ll.num_attention_heads, ll.num_key_value_heads, ll.head_dim, ll.intermediate_size) == (
        16,
        2,
        2,
        8,
        32,
    )  # FFN keeps the teacher's 2x ratio
    ll = student_config(teacher, StudentShape(num_heads=2, num_kv_heads=1))
    assert (ll.num_attention_heads, ll.num_key_value_heads, ll.head_dim) == (2, 1, 16)

    b = T.BertConfig(**BERT)
    b.architectures = ["BertForSequenceClassification"]
    s = student_config(b, StudentShape(num_layers=1))
    assert s.architectures == b.architectures and s.num_labels == 3 and s.num_hidden_layers == 1
    assert b.num_hidden_layers == 2  # the teacher config is untouched


def test_student_config_defaults_follow_the_teacher():
    assert resolve_shape(T.BertConfig()).num_layers == 12
    r = resolve_shape(T.BertConfig(), StudentShape(hidden_size=384))
    assert (r.num_heads, r.head_dim, r.ffn_size) == (6, 64, 1536)
    r = resolve_shape(T.BertConfig(hidden_size=96, num_attention_heads=3), StudentShape(hidden_size=48))
    assert (r.num_heads, r.head_dim) == (3, 16)  # 48 is no multiple of the head size 32: keep the 3 heads
    # Qwen2 keeps per-layer settings for the layers it keeps
    q = student_config(T.Qwen2Config(**LLAMA), StudentShape(num_layers=1))
    assert len(q.layer_types) == 1


@pytest.mark.parametrize(
    "shape,field",
    [
        (StudentShape(num_heads=5), "student.shape.num_heads"),
        (StudentShape(hidden_size=30, num_heads=4), "student.shape.num_heads"),
        (StudentShape(hidden_size=0), "student.shape.hidden_size"),
        (StudentShape(num_layers=-1), "student.shape.num_layers"),
        (StudentShape(ffn_size=0), "student.shape.ffn_size"),
        (StudentShape(num_kv_heads=2), "student.shape.num_kv_heads"),  # BERT has no GQA
    ],
)
def test_student_config_errors_name_the_field(shape, field):
    with pytest.raises(ConfigError) as err:
        student_config(T.BertConfig(**BERT), shape)
    assert err.value.field == field and err.value.fix


def test_kv_heads_must_divide_heads():
    with pytest.raises(ConfigError) as err:
        student_config(T.LlamaConfig(**LLAMA), StudentShape(num_kv_heads=3))
    assert err.value.field == "student.shape.num_kv_heads"


def test_bad_shape_fails_before_any_weight_is_created(monkeypatch):
    teacher = T.BertForSequenceClassification(T.BertConfig(**BERT))

    def boom(*args, **kwargs):
        raise AssertionError("a student model was constructed")

    monkeypatch.setattr(T.BertForSequenceClassification, "_from_config", classmethod(boom))
    with pytest.raises(ConfigError) as err:
        build_student(teacher, StudentShape(num_heads=3), InitConfig(strategy="random"))
    assert err.value.field == "student.shape.num_heads"


def test_build_student_keeps_the_teacher_class_and_task():
    teacher = T.BertForSequenceClassification(T.BertConfig(**BERT))
    student = build_student(teacher, StudentShape(num_layers=1, hidden_size=16), InitConfig(strategy="random"))
    assert type(student) is T.BertForSequenceClassification
    assert student.config.num_labels == 3 and student.config.hidden_size == 16
    assert student.num_parameters() == count_parameters(student.config, "BertForSequenceClassification").total


def test_parse_budget():
    assert parse_budget("22M", 10**9) == parse_budget(22_000_000, 1) == parse_budget("22_000_000", 1) == 22_000_000
    assert parse_budget("1.5b", 1) == 1_500_000_000 and parse_budget("350k", 1) == 350_000
    assert parse_budget("1/4", 1000) == parse_budget("0.25x", 1000) == parse_budget("25%", 1000) == 250
    assert parse_budget(0.25, 1000) == 250
    for bad in ("lots", "-3M", "0", "1/0", True):
        with pytest.raises(ConfigError) as err:
            parse_budget(bad, 1000)
        assert err.value.field == "student.budget"


def test_budget_quarter_of_bert_base():
    teacher = T.BertConfig()
    rows = budget_configs(teacher, "1/4")
    target = 109_482_240 / 4
    assert rows and all(isinstance(r, BudgetRow) for r in rows)
    assert any(abs(r.params.total - 27.4e6) < 0.7e6 for r in rows)
    for r in rows:
        assert abs(r.params.total - target) <= 0.05 * target
        assert r.hidden_size % r.num_heads == 0 and r.hidden_size // r.num_heads == r.head_dim
        assert r.head_dim in (32, 64, 128) and r.hidden_size % 64 == 0
        assert r.num_layers <= 12
    deviations = [abs(r.deviation) for r in rows]
    assert deviations == sorted(deviations)
    for r in rows[:5]:  # each row's count is the exact count of the student it describes
        assert count_parameters(student_config(teacher, r.shape())) == r.params
    table = format_budget_table(rows)
    assert "layers" in table and f"{rows[0].params.total:,}" in table


def test_budget_llama_rows_are_valid_and_tight():
    teacher = T.LlamaConfig(
        vocab_size=1000,
        hidden_size=256,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=688,
    )
    total = count_parameters(teacher).total
    rows = budget_configs(teacher, total // 3, tolerance=0.1)
    assert rows
    for r in rows:
        assert r.hidden_size % r.num_heads == 0 and r.num_heads % r.num_kv_heads == 0
        assert abs(r.params.total - total // 3) <= 0.1 * (total // 3)
        assert count_parameters(student_config(teacher, r.shape())).total == r.params.total
    assert budget_configs(teacher, 10) == []
    assert "no student configuration" in format_budget_table([])
