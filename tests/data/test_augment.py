"""Data augmentation (TinyBERT word replacement, Tang et al.'s masking / n-gram sampling) on real rows."""

from __future__ import annotations

import random

import pytest
import torch
from pydantic import ValidationError

from unikd.data import load_glue
from unikd.data.augment import (
    AugmentConfig,
    Candidates,
    augment_dataset,
    check_mask_token,
    load_mlm,
    replacement_rate,
    split_words,
    tang_copies,
    tinybert_copies,
)
from unikd.errors import ConfigError


@pytest.fixture(scope="module")
def teacher(minilm_path):
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path), AutoModel.from_pretrained(minilm_path).eval()


def _embeddings(model):
    return model.get_input_embeddings().weight


def test_tinybert_replaces_each_candidate_word_with_probability_p():
    words = [f"w{i}" for i in range(25)]
    candidates = {i: [f"c{i}a", f"c{i}b"] for i in range(0, 25, 2)}  # 13 eligible positions
    cfg = AugmentConfig(copies=400, p_replace=0.4)
    copies = tinybert_copies(words, candidates, cfg, random.Random(0))
    assert len(copies) == len(set(copies)) and " ".join(words) not in copies
    assert len(copies) > 390  # duplicates of 13 independent coin flips are rare
    changed = [[c.split()[i] != words[i] for i in candidates] for c in copies]
    rate = sum(map(sum, changed)) / (len(copies) * len(candidates))
    assert abs(rate - 0.4) < 0.03  # binomial sd ~0.007
    assert all(c.split()[i] == words[i] for c in copies for i in range(1, 25, 2))  # non-candidates never change
    assert all(c.split()[i] in (words[i], *candidates[i]) for c in copies for i in candidates)
    assert copies == tinybert_copies(words, candidates, cfg, random.Random(0))  # seeded


def test_tang_masks_with_p_mask_and_samples_short_ngrams():
    words = [f"w{i}" for i in range(30)]
    masked = tang_copies(
        words, AugmentConfig(method="tang", copies=300, p_mask=0.1, p_ngram=0.0), "[MASK]", random.Random(1)
    )
    rate = sum(c.split().count("[MASK]") for c in masked) / (len(masked) * 30)
    assert abs(rate - 0.1) < 0.02
    cut = tang_copies(
        words, AugmentConfig(method="tang", copies=50, p_mask=0.0, p_ngram=1.0), "[MASK]", random.Random(2)
    )
    for c in cut:
        grams = c.split()
        assert 1 <= len(grams) <= 5 and " ".join(grams) in " ".join(words)  # a contiguous n-gram


def test_embedding_neighbours_of_the_teacher_are_related_words(teacher):
    tokenizer, model = teacher
    cands = Candidates.build(tokenizer, _embeddings(model), k=15)
    assert "film" in cands.neighbours("movie") or "films" in cands.neighbours("movie")
    near = cands.neighbours("terrible")
    assert len(near) == 15 and "terrible" not in near and all(w.isalpha() for w in near)
    assert cands.neighbours("unwatchable")  # a multi-piece word gets neighbours from its pieces' mean
    # stop words and punctuation are never candidates
    words = split_words(tokenizer, "The movie is, frankly, terrible.")
    assert words == ["the", "movie", "is", ",", "frankly", ",", "terrible", "."]
    assert set(cands.for_text(words)) == {1, 4, 6}


def test_masked_lm_candidates_are_its_top_predictions(teacher):
    """Single-piece words take the masked LM's top-K at their position (computed again here by hand)."""
    from transformers import BertConfig, BertForMaskedLM

    tokenizer, model = teacher
    torch.manual_seed(0)
    mlm = BertForMaskedLM(
        BertConfig(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    ).eval()
    cands = Candidates.build(tokenizer, _embeddings(model), k=5, mlm=mlm)
    words = split_words(tokenizer, "a gripping and tender film")
    found = cands.for_text(words)
    assert set(found) == {1, 3, 4}  # gripping (multi-piece: neighbours), tender, film
    enc = tokenizer("a gripping and [MASK] film", return_tensors="pt")
    with torch.no_grad():
        logits = mlm(**enc).logits[0, (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0]]
    whole = torch.full_like(logits, float("-inf"))
    whole[cands.word_ids] = 0
    expected = [tokenizer.convert_ids_to_tokens(i) for i in (logits + whole).topk(6).indices.tolist()]
    assert found[3] == [w for w in expected if w != "tender"][:5]
    if len(tokenizer("gripping", add_special_tokens=False)["input_ids"]) > 1:
        assert found[1] == cands.neighbours("gripping")


def test_augmented_rows_keep_labels_pairs_and_replace_at_the_rate(teacher, glue_dir, tmp_path):
    tokenizer, model = teacher
    rows = load_glue("mrpc", "train", glue_dir, limit=12, seed=0)
    cfg = AugmentConfig(copies=6, p_replace=0.4, candidates=8)
    out = augment_dataset(
        rows, tokenizer, cfg, embedding_matrix=_embeddings(model), cache_dir=tmp_path, log=lambda s: None
    )
    assert set(out.column_names) == {"idx", "text_a", "text_b", "label", "copy"}
    by_row = {}
    for r in out:
        by_row.setdefault(r["idx"], []).append(r)
    assert set(by_row) == set(rows["idx"]) and all(1 <= len(v) <= 6 for v in by_row.values())
    cands = Candidates.build(tokenizer, _embeddings(model), k=8)
    changed = eligible = 0
    for original in rows:
        for r in by_row[original["idx"]]:
            assert r["label"] == original["label"]  # labels stay on their row; pairs stay pairs
            for side in ("text_a", "text_b"):
                words = split_words(tokenizer, original[side])
                new = r[side].split()
                assert len(new) == len(words)
                positions = cands.for_text(words)
                changed += sum(new[i] != words[i] for i in positions)
                eligible += len(positions)
                assert all(new[i] == words[i] for i in range(len(words)) if i not in positions)
    assert abs(changed / eligible - 0.4) < 0.06
    again = augment_dataset(
        rows, tokenizer, cfg, embedding_matrix=_embeddings(model), cache_dir=tmp_path, log=lambda s: None
    )
    assert again.to_dict() == out.to_dict()  # deterministic (and served from the cache)
    other = augment_dataset(
        rows,
        tokenizer,
        cfg.model_copy(update={"seed": 1}),
        embedding_matrix=_embeddings(model),
        cache_dir=tmp_path,
        log=lambda s: None,
    )
    assert other["text_a"] != out["text_a"]
    assert replacement_rate("a b c d", "a x c y") == 0.5


def test_bad_augmentation_settings_name_the_field(teacher):
    tokenizer, _ = teacher
    for bad in (
        {"copies": 0},
        {"p_replace": 0.0},
        {"p_replace": 1.5},
        {"candidates": 0},
        {"method": "tang", "p_mask": 0.0, "p_ngram": 0.0},
        {"method": "eda"},
        {"copeis": 3},
    ):
        with pytest.raises(ValidationError):
            AugmentConfig.model_validate(bad)

    class NoMask:
        mask_token = None
        name_or_path = "gpt2-like"

    with pytest.raises(ConfigError) as err:
        check_mask_token(NoMask(), AugmentConfig(method="tang"))
    assert err.value.field == "data.augment.p_mask" and "Fix:" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_mlm("bert-base-uncased", NoMask())
    assert err.value.field == "data.augment.mlm_model"
    with pytest.raises(ConfigError) as err:
        augment_dataset(_no_text(), tokenizer, AugmentConfig(method="tang"))
    assert err.value.field == "data.augment" and "text column" in str(err.value)


def _no_text():
    import datasets

    return datasets.Dataset.from_dict({"idx": [0], "label": [1]})


def test_cli_augment_prints_the_copies_of_the_first_rows(glue_dir, minilm_path, tmp_path):
    import json

    from typer.testing import CliRunner

    from unikd.cli import app

    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"stage: task\nteacher: {{path: {minilm_path}}}\ndata: {{task: sst2, data_dir: {glue_dir}, "
        "train_limit: 50, transfer: [{kind: augment, copies: 4, weight: 4}]}\n"
    )
    result = CliRunner().invoke(app, ["augment", str(cfg), "--rows", "2", "--out", str(tmp_path / "aug.jsonl")])
    assert result.exit_code == 0, result.output
    assert "data.transfer[0] (tinybert)" in result.output and "input-embedding neighbours" in result.output
    records = [json.loads(line) for line in (tmp_path / "aug.jsonl").read_text().splitlines()]
    assert 2 <= len(records) <= 8 and {r["copy"] for r in records} <= {0, 1, 2, 3}
    assert result.output.count("    -> ") == len(records)
    bad = CliRunner().invoke(app, ["augment", str(cfg), "data.transfer=[]"])
    assert bad.exit_code == 3 and "data.transfer: has no augment source" in bad.output  # a data error


def test_flip_rate_is_the_teachers_disagreement_between_copies_and_their_source(glue_dir, minilm_path, tmp_path):
    import json

    from helpers import save_tiny_model, tiny_bert
    from typer.testing import CliRunner

    from unikd.cli import app
    from unikd.config import load_config
    from unikd.data import load_task_data
    from transformers import AutoTokenizer

    from unikd.models import load_model

    # large initial weights: the teacher's class varies with the input
    teacher = save_tiny_model(
        tiny_bert(2, 32, 4, positions=128, seed=3, initializer_range=0.5), tmp_path / "teacher", minilm_path
    )
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(
        f"stage: task\nteacher: {{path: {teacher}}}\ndata: {{task: sst2, data_dir: {glue_dir}, max_length: 64, "
        "train_limit: 80, transfer: [{kind: augment, copies: 3, weight: 3}]}\n"
    )
    out = tmp_path / "rates.json"
    result = CliRunner().invoke(app, ["augment", str(cfg_path), "--flip-rate", "--rows", "30", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rates = json.loads(out.read_text())
    (got,) = rates["sources"].values()
    # the same rows, copies and teacher, one row at a time, unpadded
    cfg = load_config(cfg_path)
    rows = load_task_data(cfg.data, seed=cfg.seed).train.shuffle(seed=cfg.seed).select(range(30))
    model = load_model(str(teacher), "sequence-classification").eval()
    tok = AutoTokenizer.from_pretrained(str(teacher))
    copies = augment_dataset(rows, tok, cfg.data.transfer[0], embedding_matrix=model.get_input_embeddings().weight)

    def label(text):
        with torch.inference_mode():
            return int(model(**tok(text, truncation=True, max_length=64, return_tensors="pt")).logits.argmax())

    source = {r["idx"]: (label(r["text_a"]), r["label"]) for r in rows}
    on_copies = [(label(c["text_a"]), *source[c["idx"]]) for c in copies]
    assert got["copies"] == len(copies) > 30
    assert got["flip_rate"] == pytest.approx(
        sum(c != s for c, s, _ in on_copies) / len(on_copies), abs=1.5 / len(copies)
    )
    assert got["copies_at_gold"] == pytest.approx(
        sum(c == g for c, _, g in on_copies) / len(on_copies), abs=1.5 / len(copies)
    )
    assert rates["teacher_on_sources"] == pytest.approx(sum(p == g for p, g in source.values()) / 30, abs=1.5 / 30)
    assert 0 < got["flip_rate"] < 1 and f"{100 * got['flip_rate']:.1f}% of the copies" in result.output
