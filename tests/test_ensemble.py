"""Several teachers as one (unikd.ensemble): the combination against direct formulas, the hook on the first
teacher, a run whose ensemble reduces to its second teacher, and each bad ensemble refused by name."""

from __future__ import annotations

import pytest
import torch
from helpers import save_tiny_model, tiny_bert, tiny_task_options
from safetensors.torch import load_file

from unikd.config import load_config
from unikd.ensemble import Ensemble, combine
from unikd.errors import ConfigError
from unikd.train import run
from unikd.train.validate import validate_run


def _logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


# ---- the combination ------------------------------------------------------------------------------------------
def test_softmax_heads_average_the_probabilities():
    a, b, c = _logits(4, 7, 5, seed=1), _logits(4, 7, 5, seed=2), _logits(4, 7, 5, seed=3)
    out = combine([a, b, c], [1.0, 2.0, 1.0], "softmax")
    expected = torch.log(0.25 * a.softmax(-1) + 0.5 * b.softmax(-1) + 0.25 * c.softmax(-1))
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert torch.allclose(out.exp().sum(-1), torch.ones(4, 7))  # already log-probabilities
    torch.testing.assert_close(combine([a, b, c], [2.0, 4.0, 2.0], "softmax"), out)  # weights are normalized
    torch.testing.assert_close(combine([a], [3.0], "softmax"), a.log_softmax(-1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(combine([a, b], [0.0, 1.0], "softmax"), b.log_softmax(-1), rtol=1e-6, atol=1e-6)


def test_confidence_weighting_counts_the_surer_teacher_more_on_each_row():
    a, b = _logits(6, 3, seed=4), _logits(6, 3, seed=5)
    pa, pb = a.softmax(-1), b.softmax(-1)
    ca, cb = 1.0 * pa.amax(-1, keepdim=True), 3.0 * pb.amax(-1, keepdim=True)
    expected = torch.log((ca * pa + cb * pb) / (ca + cb))
    torch.testing.assert_close(combine([a, b], [1.0, 3.0], "softmax", "confidence"), expected, rtol=1e-6, atol=1e-6)


def test_sigmoid_and_regression_heads():
    a, b = _logits(5, 4, seed=6), _logits(5, 4, seed=7)
    mean = 0.5 * torch.sigmoid(a) + 0.5 * torch.sigmoid(b)
    torch.testing.assert_close(combine([a, b], [1, 1], "sigmoid"), torch.log(mean / (1 - mean)), rtol=1e-5, atol=1e-5)
    ra, rb = _logits(5, 1, seed=8), _logits(5, 1, seed=9)
    torch.testing.assert_close(combine([ra, rb], [3, 1], "regression"), 0.75 * ra + 0.25 * rb)
    with pytest.raises(ConfigError) as err:
        combine([ra, rb], [1, 1], "regression", "confidence")
    assert err.value.field == "teacher.ensemble_weighting"


def test_the_hook_puts_the_ensembles_logits_in_the_first_teachers_output():
    first, second = tiny_bert(2, 32, 4, seed=0).eval(), tiny_bert(2, 32, 4, seed=1).eval()
    ids = torch.randint(5, 200, (3, 9), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        alone_first, alone_second = first(**batch).logits, second(**batch).logits
    ensemble = Ensemble(first, [second], [1.0, 1.0], "softmax", "fixed")
    with torch.no_grad():
        hooked = first(**batch).logits
    torch.testing.assert_close(hooked, combine([alone_first, alone_second], [1, 1], "softmax"))
    ensemble.remove()
    with torch.no_grad():
        torch.testing.assert_close(first(**batch).logits, alone_first)


# ---- runs ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teachers(tmp_path_factory, minilm_path):
    tmp = tmp_path_factory.mktemp("ensemble")
    return {
        name: save_tiny_model(tiny_bert(2, 32, 4, positions=128, seed=seed), tmp / name, minilm_path)
        for name, seed in (("a", 0), ("b", 1))
    } | {"three": save_tiny_model(tiny_bert(2, 32, 4, positions=128, num_labels=3), tmp / "three", minilm_path)}


def _options(teacher, glue_dir, out, **fields):
    base = {
        "student.init.strategy": "random",  # the same student whichever teacher path: only the soft targets differ
        "student.shape.hidden_size": 16,
        "student.shape.num_heads": 2,
        "plan.terms": "[{knowledge: logits, loss: kl}]",
        "data.train_limit": 64,
        "data.eval_limit": 48,
        "train.max_steps": 4,
        "train.batch_size": 16,
        "train.teacher_cache": "true",
        "output_dir": out,
        "seed": 3,
    }
    return tiny_task_options(teacher, glue_dir, base | fields)


def test_an_ensemble_that_weights_only_its_second_teacher_distils_exactly_that_teacher(teachers, glue_dir, tmp_path):
    a, b = teachers["a"], teachers["b"]
    only_b = run(load_config(None, _options(b, glue_dir, tmp_path / "b")))
    ensemble = run(
        load_config(
            None,
            _options(a, glue_dir, tmp_path / "ens", **{"teacher.weight": 0, "teacher.ensemble": f"[{{path: {b}}}]"}),
        )
    )
    run(load_config(None, _options(a, glue_dir, tmp_path / "a")))
    assert ensemble["teacher_dev"]["accuracy"] == pytest.approx(only_b["teacher_dev"]["accuracy"])
    weights = {name: load_file(tmp_path / name / "student" / "model.safetensors") for name in ("b", "ens", "a")}
    for key, value in weights["b"].items():
        torch.testing.assert_close(weights["ens"][key], value, rtol=1e-4, atol=1e-5)
    assert any(not torch.allclose(weights["a"][k], v, atol=1e-4) for k, v in weights["b"].items())  # A's differs


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"teacher.ensemble": "[{path: <three>}]"}, "teacher.ensemble[0].path"),  # 3 labels against 2
        ({"teacher.ensemble": "[{path: ./no-such-teacher}]"}, "teacher.ensemble[0].path"),
        ({"teacher.ensemble": "[{path: <b>, weight: 0}]", "teacher.weight": "0"}, "teacher.ensemble"),
        ({"teacher.ensemble": "[{path: <b>}]", "stage": "finetune"}, "teacher.ensemble"),
    ],
)
def test_bad_ensembles_are_refused_by_name_before_weights_load(teachers, glue_dir, tmp_path, fields, field):
    fields = {
        k: v.replace("<three>", str(teachers["three"])).replace("<b>", str(teachers["b"])) for k, v in fields.items()
    }
    with pytest.raises(ConfigError) as err:
        validate_run(load_config(None, _options(teachers["a"], glue_dir, tmp_path / "bad", **fields)))
    assert err.value.field == field and err.value.fix


def test_a_member_with_another_tokenizer_is_refused(teachers, glue_dir, tmp_path):
    from helpers import SHARED

    other = save_tiny_model(
        tiny_bert(2, 32, 4, positions=128), tmp_path / "gpt2-tok", SHARED / "models" / "gpt2-tokenizer"
    )
    with pytest.raises(ConfigError) as err:
        validate_run(
            load_config(
                None,
                _options(teachers["a"], glue_dir, tmp_path / "tok", **{"teacher.ensemble": f"[{{path: {other}}}]"}),
            )
        )
    assert err.value.field == "teacher.ensemble[0].path" and "tokenizer" in err.value.problem
