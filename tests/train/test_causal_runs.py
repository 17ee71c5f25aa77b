"""Decoder task runs on causal-LM data end to end: a teacher fine-tuned on prompt/response rows, students distilled
from it with the token-level divergences, scores recomputed independently, bad input refused before training, and
a GGUF teacher converted to the same model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from causal_fixtures import causal_files as _files
from helpers import SHARED, save_tiny_model, tiny_bert, word_tokenizer

from unikd.config import load_config
from unikd.errors import ConfigError
from unikd.train import run


def _one_layer_student(root: Path) -> list[str]:
    """A task-stage run from the toy decoder teacher into a student of its first layer."""
    return [
        "stage=task",
        f"teacher.path={root / 'teacher' / 'student'}",
        "student.shape.num_layers=1",
        "student.init.strategy=teacher-layers",
    ]


def _independent_perplexity(model_dir: Path, rows: list[dict]) -> float:
    """Response perplexity from HF's own loss, one row at a time: Σ (mean NLL of the row × its scored tokens) / Σ
    tokens, the prompt + "\\n" + response + EOS rendering written out here."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    nll, tokens = 0.0, 0
    for row in rows:
        prompt = tok(row["prompt"] + "\n")["input_ids"]
        response = tok(row["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([prompt + response])
        labels = torch.tensor([[-100] * len(prompt) + response])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss
        nll += float(loss) * len(response)
        tokens += len(response)
    return math.exp(nll / tokens)


def test_finetuned_decoder_is_scored_by_response_perplexity(teacher_run):
    root, metrics = teacher_run
    final, baseline = metrics["final"], metrics["trivial_baseline"]
    dev = [json.loads(line) for line in (root / "validation.jsonl").read_text().splitlines()]
    assert final["tokens"] == 3 * len(dev)  # "<sum> <letter>" + EOS per row
    assert final["score"] == -final["perplexity"]
    assert final["perplexity"] == pytest.approx(_independent_perplexity(root / "teacher" / "student", dev), rel=1e-4)
    # the unigram baseline knows the token frequencies only: the teacher learned the task far beyond it
    assert baseline["perplexity"] > 5 and final["perplexity"] < 0.3 * baseline["perplexity"]


@pytest.mark.parametrize(
    "term",
    [
        "{knowledge: logits, loss: kl}",
        "{knowledge: logits, loss: jsd, beta: 0.5}",
        "{knowledge: logits, loss: reverse_kl}",
    ],
)
def test_students_distil_the_decoder_with_each_divergence(teacher_run, term, tmp_path):
    root, teacher_metrics = teacher_run
    overrides = [
        "stage=task",
        f"teacher.path={root / 'teacher' / 'student'}",
        f"output_dir={tmp_path / 'kd'}",
        "student.shape.num_layers=1",
        "student.init.strategy=teacher-layers",
        f"plan.terms=[{term}, {{knowledge: hidden, loss: mse, matching: last}}]",
        "plan.hard_label_weight=0",
        "train.epochs=3",
        "optim.lr=3e-3",
    ]
    metrics = run(load_config(None, [*overrides, *_files(root)]))
    # the teacher measured on the same dev rows before step 1 is the fine-tune's own final score
    assert metrics["teacher_dev"]["perplexity"] == pytest.approx(teacher_metrics["final"]["perplexity"], rel=1e-5)
    assert metrics["final"]["perplexity"] < 0.5 * metrics["trivial_baseline"]["perplexity"]
    dev = [json.loads(line) for line in (root / "validation.jsonl").read_text().splitlines()]
    assert metrics["final"]["perplexity"] == pytest.approx(
        _independent_perplexity(tmp_path / "kd" / "student", dev), rel=1e-4
    )


def test_bad_causal_input_is_refused_before_training(teacher_run, tmp_path):
    root, _ = teacher_run
    base = ["stage=task", f"output_dir={tmp_path / 'x'}", *_files(root)]
    encoder = save_tiny_model(
        tiny_bert(layers=1, cls=__import__("transformers").BertForSequenceClassification), tmp_path / "bert"
    )
    word_tokenizer(encoder)
    with pytest.raises(ConfigError) as info:
        run(load_config(None, [*base, f"teacher.path={encoder}"]))
    assert info.value.field == "teacher.path"
    assert not (tmp_path / "x" / "metrics.json").exists()  # (the token cache's refusals: tests/test_token_cache.py)


GGUF = SHARED / "models" / "smollm2-135m-instruct-q4_1" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.skipif(not GGUF.is_file(), reason="the SmolLM2 GGUF is not in ../shared/data/models")
def test_a_gguf_teacher_becomes_the_same_model_directory(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM

    from unikd.models import load_tokenizer, model_config, resolve_model_path

    monkeypatch.setenv("UNIKD_CACHE", str(tmp_path))
    converted = resolve_model_path(str(GGUF), "teacher.path")
    assert resolve_model_path(str(GGUF.parent), "teacher.path", gguf_file=GGUF.name) == converted  # cached
    assert model_config(converted).num_hidden_layers == 30 and load_tokenizer(converted).chat_template
    ids = load_tokenizer(converted)("Once upon a time", return_tensors="pt")["input_ids"]
    original = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name).eval()
    copy = AutoModelForCausalLM.from_pretrained(converted).eval()
    with torch.no_grad():
        assert torch.equal(original(ids).logits, copy(ids).logits)


def test_a_missing_gguf_file_is_a_config_error(tmp_path):
    from unikd.models import resolve_model_path

    with pytest.raises(ConfigError) as info:
        resolve_model_path(str(tmp_path / "model.gguf"), "teacher.path")
    assert info.value.field == "teacher.path" and "does not exist" in str(info.value)


def test_generation_scores_the_students_samples_with_the_teacher_and_rouge(teacher_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, _ = teacher_run
    overrides = [
        "stage=task",
        f"teacher.path={root / 'teacher' / 'student'}",
        f"output_dir={tmp_path / 'kd'}",
        "student.shape.num_layers=1",
        "student.init.strategy=teacher-layers",
        "plan.terms=[{knowledge: logits, loss: kl}]",
        "plan.hard_label_weight=0",
        "train.epochs=3",
        "optim.lr=3e-3",
        "eval.generation.rows=20",
        "eval.generation.max_new_tokens=4",
        "eval.generation.batch_size=8",
        "eval.generation.show=20",
    ]
    generation = run(load_config(None, [*overrides, *_files(root)]))["generation"]
    assert generation["rows"] == 20 and len(generation["samples"]) == 20 and generation["tokens_per_s"] > 0
    saved = json.loads((tmp_path / "kd" / "metrics.json").read_text())["generation"]
    assert saved["teacher_nll"] == generation["teacher_nll"]
    # recomputed here: each sample re-tokenized after its prompt and scored by the teacher with HF's own loss;
    # ROUGE-L by rouge-score called directly
    from rouge_score import rouge_scorer

    tok = AutoTokenizer.from_pretrained(root / "teacher" / "student")
    teacher = AutoModelForCausalLM.from_pretrained(root / "teacher" / "student").eval()
    dev = [json.loads(line) for line in (root / "validation.jsonl").read_text().splitlines()][:20]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    nll, tokens, rouge = 0.0, 0, []
    for row, shown in zip(dev, generation["samples"]):
        assert shown["prompt"].split() == row["prompt"].split()
        assert shown["reference"].split() == row["response"].split()
        rouge.append(scorer.score(row["response"], shown["sample"])["rougeL"].fmeasure)
        prompt = tok(row["prompt"] + "\n")["input_ids"]
        sample = tok(shown["sample"], add_special_tokens=False)["input_ids"]
        if len(sample) < 4:  # stopped by its EOS (max_new_tokens=4 otherwise)
            sample.append(tok.eos_token_id)
        with torch.no_grad():
            loss = teacher(
                input_ids=torch.tensor([prompt + sample]), labels=torch.tensor([[-100] * len(prompt) + sample])
            ).loss
        nll, tokens = nll + float(loss) * len(sample), tokens + len(sample)
    assert tokens == generation["generated_tokens"]
    assert generation["teacher_nll"] == pytest.approx(nll / tokens, rel=1e-4)
    assert generation["rouge_l"] == pytest.approx(100 * sum(rouge) / len(rouge), rel=1e-6)


def _sampled_twin(root, out) -> list[str]:
    """A one-epoch fine-tune of a 1-layer student of the toy teacher that samples 8 dev prompts after training."""
    return [
        "stage=finetune",
        f"teacher.path={root / 'teacher' / 'student'}",
        f"output_dir={out}",
        "student.shape.num_layers=1",
        "student.init.strategy=teacher-layers",
        "train.epochs=1",
        "eval.generation.rows=8",
        "eval.generation.max_new_tokens=4",
    ]


def test_the_no_kd_twin_is_scored_by_the_same_teacher(teacher_run, tmp_path):
    """A fine-tune (the no-KD twin) runs no teacher; its samples are scored by the model it was built from, the
    KD run's teacher, so the twins' teacher NLLs compare."""
    root, _ = teacher_run
    overrides = _sampled_twin(root, tmp_path / "twin")
    generation = run(load_config(None, [*overrides, *_files(root)]))["generation"]
    assert generation["rows"] == 8 and generation["teacher_nll"] > 0


@pytest.mark.parametrize(("metric", "sign"), [("teacher_nll", -1.0), ("rouge_l", 1.0)])
def test_eval_metric_can_rank_by_the_samples_and_the_best_checkpoint_stays_on_perplexity(
    teacher_run, tmp_path, metric, sign
):
    root, _ = teacher_run
    overrides = [*_sampled_twin(root, tmp_path / "twin"), f"eval.metric={metric}"]
    metrics = run(load_config(None, [*overrides, *_files(root)]))
    assert metrics["final"]["score"] == sign * metrics["generation"][metric] and metrics["final"][metric] > 0
    assert metrics["best"]["score"] == -metrics["best"]["perplexity"]  # chosen during training, before any sample
    assert json.loads((tmp_path / "twin" / "metrics.json").read_text())["final"] == metrics["final"]
    with pytest.raises(ConfigError) as exc:
        run(load_config(None, [*overrides, *_files(root), "eval.generation.rows=0", f"output_dir={tmp_path / 'x'}"]))
    assert exc.value.field == "eval.metric" and "eval.generation.rows" in exc.value.fix


@pytest.mark.parametrize("term", ["{knowledge: logits, loss: kl}", "{knowledge: logits, loss: jsd, beta: 0.5}"])
def test_chunked_logits_train_the_same_student(teacher_run, tmp_path, term):
    """train.logits_chunk_tokens (3: chunks that split batches' scored tokens unevenly) trains the same run as the
    unchunked divergence, and so does train.fused_output_projection (the lm_head applied per chunk inside the
    divergence and the next-token loss, the student's logits never made): the dev perplexities at steps 4, 8 and
    12 agree to fp32 rounding."""
    root, _ = teacher_run
    base = [
        *_one_layer_student(root),
        f"plan.terms=[{term}]",
        "train.max_steps=12",
        "train.eval_every=4",
        "optim.lr=3e-3",
    ]
    plain = run(load_config(None, [*base, *_files(root), f"output_dir={tmp_path / 'plain'}"]))
    chunked = run(
        load_config(None, [*base, *_files(root), f"output_dir={tmp_path / 'chunked'}", "train.logits_chunk_tokens=3"])
    )
    fused = run(
        load_config(
            None,
            [
                *base,
                *_files(root),
                f"output_dir={tmp_path / 'fused'}",
                "train.logits_chunk_tokens=3",
                "train.fused_output_projection=true",
            ],
        )
    )
    history = [h["perplexity"] for h in plain["history"]]
    assert len(history) == 3 and history[0] != history[-1]  # the student moved: the comparison has teeth
    assert [h["perplexity"] for h in chunked["history"]] == pytest.approx(history, rel=1e-4)
    assert [h["perplexity"] for h in fused["history"]] == pytest.approx(history, rel=1e-4)


def test_length_grouped_batches_train_a_causal_run(teacher_run, tmp_path):
    root, _ = teacher_run
    overrides = [
        "stage=finetune",
        f"teacher.path={root / 'teacher' / 'student'}",
        f"output_dir={tmp_path / 'grouped'}",
        "student.shape.num_layers=1",
        "student.init.strategy=teacher-layers",
        "train.epochs=1",
        "train.group_by_length=true",
    ]
    metrics = run(load_config(None, [*overrides, *_files(root)]))
    assert metrics["steps"] == 10  # 300 rows in batches of 32
    assert metrics["final"]["perplexity"] < metrics["trivial_baseline"]["perplexity"]


def test_unikd_validate_reads_causal_data_with_the_teachers_tokenizer(teacher_run, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from unikd.cli import app

    root, _ = teacher_run
    bare = tmp_path / "bare"
    shutil.copytree(root / "teacher" / "student", bare)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (bare / name).unlink(missing_ok=True)
    word_tokenizer(bare, chat_template=False)
    args = ["validate", "stage=task", f"teacher.path={bare}", f"output_dir={tmp_path / 'v'}", *_files(root)]
    result = CliRunner().invoke(app, [*args, "data.render=chat"])
    assert "data.chat_template" in result.output and "Traceback" not in result.output, result.output
    assert result.exit_code == 3  # a data field (README "Exit codes")
    assert CliRunner().invoke(app, args).exit_code == 0


def test_fused_output_projection_is_refused_where_it_cannot_apply(teacher_run, tmp_path):
    """train.fused_output_projection without chunks, with the top-k cache, or with a logits loss that has no
    fused form: each refused by field before training."""
    from unikd.train.validate import validate_run

    root, _ = teacher_run
    base = [
        *_one_layer_student(root),
        f"output_dir={tmp_path / 'fused'}",
        *_files(root),
    ]
    for extra, expected in (
        (["train.fused_output_projection=true"], "train.logits_chunk_tokens"),
        (
            [
                "train.fused_output_projection=true",
                "train.logits_chunk_tokens=8",
                "train.teacher_cache=true",
                "train.teacher_cache_topk=8",
            ],
            "train.teacher_cache_topk",
        ),
    ):
        with pytest.raises(ConfigError) as exc:
            validate_run(load_config(None, [*base, *extra]))
        assert exc.value.field == "train.fused_output_projection" and expected in str(exc.value)
    cfg = load_config(
        None,
        [
            *base,
            "plan.terms=[{knowledge: logits, loss: mse}]",
            "train.logits_chunk_tokens=8",
            "train.fused_output_projection=true",
        ],
    )
    with pytest.raises(ConfigError) as exc:
        validate_run(cfg)
    assert exc.value.field == "plan.terms[0].loss" and "fused" in exc.value.problem
