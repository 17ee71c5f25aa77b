"""Extractive QA through the real trainer: a tiny QA teacher fine-tuned on SQuAD questions, its student distilled on
the span distributions (masked to the context), the no-KD twin, the capture's span logits against the formula."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from helpers import SHARED, save_tiny_model, tiny_bert

from unikd.capture import CaptureRequest, FeatureCapture
from unikd.config import load_config
from unikd.data.qa import load_qa_task, qa_collator
from unikd.errors import ConfigError
from unikd.losses import kl_div
from unikd.train import run

SQUAD = SHARED / "qa" / "squad"


def _common(out, steps=8):
    return [
        f"data.files.train={SQUAD / 'train.json'}",
        f"data.files.validation={SQUAD / 'dev.json'}",
        "data.train_limit=96",
        "data.eval_limit=40",
        "data.max_length=96",
        "data.qa.stride=24",
        "train.batch_size=16",
        "train.progress=false",
        "optim.lr=1e-3",
        f"train.max_steps={steps}",
        f"output_dir={out}",
    ]


@pytest.fixture(scope="module")
def qa_teacher(tmp_path_factory, minilm_path):
    tmp = tmp_path_factory.mktemp("qa")
    base = save_tiny_model(
        tiny_bert(2, 32, 4, positions=128, cls=T.BertForQuestionAnswering), tmp / "base", minilm_path
    )
    result = run(
        load_config(
            None,
            _common(tmp / "teacher", steps=16)
            + ["stage=finetune", f"teacher.path={base}", "student.init.strategy=teacher-layers"],
        )
    )
    assert set(result["final"]) >= {"exact_match", "f1", "score"} and result["trivial_baseline"]["f1"] == 0.0
    return tmp / "teacher" / "student"


def test_span_logits_kd_is_the_kl_of_the_start_and_end_distributions_over_the_context(qa_teacher, minilm_path):
    tokenizer = T.AutoTokenizer.from_pretrained(minilm_path)
    cfg = load_config(None, _common("/tmp/unused") + ["stage=task", f"teacher.path={qa_teacher}"])
    task = load_qa_task(cfg.data, tokenizer)
    batch = qa_collator()([task.train_features.rows[i] for i in range(6)])
    teacher = T.AutoModelForQuestionAnswering.from_pretrained(qa_teacher).eval()
    student = tiny_bert(1, 32, 4, positions=128, cls=T.BertForQuestionAnswering, seed=5).eval()
    t = FeatureCapture(teacher, CaptureRequest())(batch, teacher=True).logits
    s = FeatureCapture(student, CaptureRequest())(batch).logits
    assert t.shape == (12, 96)
    loss = kl_div(s, t, temperature=2.0)
    with torch.no_grad():
        to, so = (
            teacher(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}),
            student(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}),
        )
    by_hand = []
    for which in ("start_logits", "end_logits"):
        for row in range(6):
            keep = batch["context_mask"][row].bool()
            p = torch.softmax(getattr(to, which)[row][keep] / 2.0, -1)
            log_q = torch.log_softmax(getattr(so, which)[row][keep] / 2.0, -1)
            by_hand.append((p * (p.log() - log_q)).sum())
    torch.testing.assert_close(loss, torch.stack(by_hand).mean() * 4.0, rtol=1e-4, atol=1e-5)


def test_qa_kd_moves_the_student_towards_the_teacher_more_than_its_no_kd_twin(qa_teacher, tmp_path, minilm_path):
    student = ["student.shape.num_layers=1", "student.init.strategy=teacher-layers", "seed=2"]
    kd = run(
        load_config(
            None,
            _common(tmp_path / "kd")
            + student
            + [
                "stage=task",
                f"teacher.path={qa_teacher}",
                "teacher.allow_weak=true",
                "plan.terms=[{knowledge: logits, loss: kl}, {knowledge: hidden, loss: mse}]",
                "plan.hard_label_weight=0",
            ],
        )
    )
    base = run(
        load_config(None, _common(tmp_path / "nokd") + student + ["stage=finetune", f"teacher.path={qa_teacher}"])
    )
    for result, name in ((kd, "kd"), (base, "nokd")):
        assert set(result["final"]) >= {"exact_match", "f1", "score"}
        assert json.loads((tmp_path / name / "metrics.json").read_text())["final"] == result["final"]
    assert kd["teacher_dev"]["source"] == "evaluated" and kd["teacher_dev"]["f1"] >= 0.0

    tokenizer = T.AutoTokenizer.from_pretrained(minilm_path)
    cfg = load_config(None, _common("/tmp/unused") + ["stage=task", f"teacher.path={qa_teacher}"])
    batch = qa_collator()(list(load_qa_task(cfg.data, tokenizer).eval_features.rows))
    teacher = T.AutoModelForQuestionAnswering.from_pretrained(qa_teacher).eval()

    def kl_to_teacher(path):
        model = T.AutoModelForQuestionAnswering.from_pretrained(path).eval()
        s = FeatureCapture(model, CaptureRequest())(batch, teacher=True).logits
        t = FeatureCapture(teacher, CaptureRequest())(batch, teacher=True).logits
        return float(kl_div(s, t, temperature=1.0))

    assert kl_to_teacher(tmp_path / "kd" / "student") < kl_to_teacher(tmp_path / "nokd" / "student")


@pytest.mark.parametrize(
    "extra,field",
    [
        (["train.teacher_cache=true"], "train.teacher_cache"),
        (["plan.pseudo_labels=true", "plan.terms=[]"], "plan.pseudo_labels"),
    ],
)
def test_what_qa_does_not_support_is_refused_by_name(qa_teacher, tmp_path, extra, field):
    cfg = load_config(None, _common(tmp_path / "x") + ["stage=task", f"teacher.path={qa_teacher}"] + extra)
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert err.value.field == field


def test_a_classification_teacher_on_qa_data_is_refused(tmp_path, minilm_path):
    classifier = save_tiny_model(tiny_bert(2, 32, 4, positions=128), tmp_path / "cls", minilm_path)
    with pytest.raises(ConfigError) as err:
        run(load_config(None, _common(tmp_path / "y") + ["stage=task", f"teacher.path={classifier}"]))
    assert err.value.field == "teacher.path" and "question" in err.value.problem.lower()
