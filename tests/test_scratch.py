"""``unikd student new``: a random decoder written as a model directory, which the finetune stage then trains from
scratch (a user without a pre-trained decoder follows the same path as with one)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import addition_rows, word_tokenizer
from typer.testing import CliRunner

from unikd.cli import app
from unikd.config import load_config
from unikd.errors import ConfigError
from unikd.models import load_model
from unikd.scratch import new_model
from unikd.train import run


@pytest.fixture()
def tokenizer_dir(tmp_path):
    word_tokenizer(tmp_path / "tok")
    return tmp_path / "tok"


def test_a_llama_is_written_with_the_tokenizers_vocabulary_and_the_seeds_weights(tokenizer_dir, tmp_path):
    made = new_model(str(tokenizer_dir), tmp_path / "a", layers=2, hidden_size=64, heads=4, kv_heads=2, seed=3)
    model = load_model(made["path"], "causal-lm", field="teacher.path")
    cfg = model.config
    tok_size = len(word_tokenizer())
    assert (cfg.model_type, cfg.vocab_size, cfg.num_hidden_layers, cfg.hidden_size) == ("llama", tok_size, 2, 64)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (4, 2, 192)  # 8/3 x 64 -> 192
    assert (cfg.bos_token_id, cfg.eos_token_id) == (2, 3)  # the word tokenizer's <s>, </s>
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    # parameters written out: embeddings V x d; per layer q, o (d x d), k, v (d x d/2 at 2 of 4 KV heads), the
    # SwiGLU's three d x f matrices and two RMSNorm weights; the final norm
    d, f, layers = 64, 192, 2
    expected = tok_size * d + layers * (2 * d * d + 2 * d * d // 2 + 3 * d * f + 2 * d) + d
    assert made["parameters"] == sum(p.numel() for p in model.parameters()) == expected
    same = new_model(str(tokenizer_dir), tmp_path / "b", layers=2, hidden_size=64, heads=4, kv_heads=2, seed=3)
    other = new_model(str(tokenizer_dir), tmp_path / "c", layers=2, hidden_size=64, heads=4, kv_heads=2, seed=4)
    w = [load_model(m["path"], "causal-lm").model.layers[0].mlp.up_proj.weight for m in (made, same, other)]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])


def test_a_gpt2_is_written_with_learned_positions(tokenizer_dir, tmp_path):
    made = new_model(str(tokenizer_dir), tmp_path / "g", family="gpt2", layers=1, hidden_size=32, heads=2)
    model = load_model(made["path"], "causal-lm")
    assert (model.config.model_type, model.config.n_positions, model.config.vocab_size) == (
        "gpt2",
        1024,
        len(word_tokenizer()),
    )


def test_a_decoder_from_scratch_learns_the_task_in_the_finetune_stage(tokenizer_dir, tmp_path):
    """The toy addition task: from random weights, 6 epochs, the dev response perplexity falls far below the
    unigram baseline's (the training answers' token frequencies)."""
    made = new_model(str(tokenizer_dir), tmp_path / "scratch", layers=2, hidden_size=64, heads=4, max_positions=32)
    for split, n, seed in (("train", 300, 1), ("validation", 60, 2)):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in addition_rows(n, seed)))
    metrics = run(
        load_config(
            None,
            [
                "stage=finetune",
                f"teacher.path={made['path']}",
                f"output_dir={tmp_path / 'run'}",
                f"data.files.train={tmp_path / 'train.jsonl'}",
                f"data.files.validation={tmp_path / 'validation.jsonl'}",
                "data.max_length=16",
                "train.epochs=6",
                "train.batch_size=32",
                "train.progress=false",
                "optim.lr=3e-3",
            ],
        )
    )
    unigram = metrics["trivial_baseline"]["perplexity"]
    assert metrics["final"]["perplexity"] < unigram / 2, (metrics["final"], unigram)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"heads": 3}, "--heads"),  # 3 does not divide 64
        ({"kv_heads": 3}, "--kv-heads"),  # 3 does not divide 4
        ({"family": "gpt2", "kv_heads": 2}, "--kv-heads"),
        ({"family": "bert"}, "--family"),
        ({"layers": 0}, "--layers"),
    ],
)
def test_bad_shapes_name_the_option(tokenizer_dir, tmp_path, kwargs, field):
    with pytest.raises(ConfigError) as exc:
        new_model(str(tokenizer_dir), tmp_path / "m", **({"hidden_size": 64} | kwargs))
    assert exc.value.field == field
    assert not (tmp_path / "m").exists()


def test_a_non_empty_directory_is_refused_and_kept(tokenizer_dir, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError) as exc:
        new_model(str(tokenizer_dir), tmp_path / "m")
    assert exc.value.field == "--out" and (tmp_path / "m" / "keep.txt").read_text() == "mine"


def test_the_cli_writes_the_model_and_says_its_size(tokenizer_dir, tmp_path):
    result = CliRunner().invoke(
        app,
        ["student", "new", "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "m"), "--layers", "1"],
    )
    assert result.exit_code == 0, result.output
    assert "llama" in result.output and f"vocab {len(word_tokenizer())}" in result.output
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()
