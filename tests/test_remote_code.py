"""No code from a model directory: an ``auto_map`` in config.json never makes unikd import the directory's Python,
whether the model type is unknown (refused, naming the field) or known (transformers' own classes load it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import save_tiny_model, tiny_bert

#: the directory's Python: importing it (transformers copies it to HF_MODULES_CACHE first) writes MARKER_PATH
EVIL = """
from pathlib import Path
Path(MARKER_PATH).write_text("the model directory's code ran")
from transformers import BertConfig, BertForSequenceClassification
class EvilConfig(BertConfig):
    model_type = "evilnet"
class EvilModel(BertForSequenceClassification):
    config_class = EvilConfig
"""
AUTO_MAP = {
    "AutoConfig": "evil.EvilConfig",
    "AutoModel": "evil.EvilModel",
    "AutoModelForSequenceClassification": "evil.EvilModel",
    "AutoModelForMaskedLM": "evil.EvilModel",
}


def _model_dir(root: Path, model_type: str, minilm_path: Path) -> Path:
    out = save_tiny_model(tiny_bert(2, 32, 4, num_labels=2), root / f"teacher-{model_type}", minilm_path)
    cfg = json.loads((out / "config.json").read_text())
    cfg["model_type"], cfg["auto_map"] = model_type, AUTO_MAP
    (out / "config.json").write_text(json.dumps(cfg))
    tok = json.loads((out / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (out / "tokenizer_config.json").write_text(json.dumps(tok))
    (out / "evil.py").write_text(EVIL.replace("MARKER_PATH", repr(str(out / "MARKER"))))
    return out


def _validate(tmp_path: Path, teacher: Path) -> subprocess.CompletedProcess:
    """``unikd validate`` on a finetune config with that teacher, ``y`` piped to anything that asks."""
    config = tmp_path / "run.yaml"
    config.write_text(
        f"stage: finetune\nteacher: {{path: {teacher}}}\n"
        f"data: {{files: {{train: {tmp_path / 'd.csv'}, validation: {tmp_path / 'd.csv'}}}}}\n"
        f"output_dir: {tmp_path / 'out'}\n"
    )
    (tmp_path / "d.csv").write_text("text,label\ngood,1\nbad,0\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "hf_modules")}
    return subprocess.run(
        [sys.executable, "-m", "unikd.cli", "validate", str(config)],
        input="y\ny\ny\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_an_unknown_model_type_with_auto_map_is_refused_and_its_code_never_runs(tmp_path, minilm_path):
    teacher = _model_dir(tmp_path, "evilnet", minilm_path)
    result = _validate(tmp_path, teacher)
    assert result.returncode == 2, result.stdout + result.stderr
    assert not (teacher / "MARKER").exists()
    out = result.stdout + result.stderr
    assert "error: teacher.path:" in out and "auto_map" in out and "never runs code" in out
    assert "Traceback" not in out and "[y/N]" not in out


def test_a_known_model_type_loads_with_transformers_classes_and_ignores_its_auto_map(tmp_path, minilm_path):
    from unikd.models import load_model, load_tokenizer, model_config, resolve_model_path

    teacher = _model_dir(tmp_path, "bert", minilm_path)
    result = _validate(tmp_path, teacher)
    assert result.returncode == 0, result.stdout + result.stderr
    path = resolve_model_path(str(teacher))
    config = model_config(path)
    model = load_model(path, "sequence-classification", num_labels=2, field="teacher.path")
    tokenizer = load_tokenizer(path)
    assert type(config).__name__ == "BertConfig" and type(model).__name__ == "BertForSequenceClassification"
    assert type(tokenizer).__module__.startswith("transformers.")
    assert not (teacher / "MARKER").exists()


def test_a_hub_id_that_needs_custom_code_is_a_config_error(monkeypatch):
    """A hub repo (no local config.json to read first): transformers' refusal under trust_remote_code=False
    becomes the same error, naming the field."""
    import transformers

    from unikd.errors import ConfigError
    from unikd.models import model_config

    seen = {}

    def refuse(path, **kwargs):
        seen.update(kwargs)
        raise ValueError(f"The repository {path} contains custom code which must be executed ... trust_remote_code")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)
    with pytest.raises(ConfigError) as err:
        model_config("someone/custom-model", "student.init.source")
    assert seen == {"trust_remote_code": False}
    assert err.value.field == "student.init.source" and "never runs code" in err.value.problem
