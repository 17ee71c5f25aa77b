"""Models: where a model path points, which Auto class loads it, loading it with the head a stage needs,
and int8 for a frozen CPU teacher.

``resolve_model_path`` turns ``pkg:<package>``, local directories and hub ids into what ``from_pretrained``
takes; ``auto_class_for`` is the one place that maps a model (or config) to the ``AutoModelFor<task>`` class
that rebuilds it with its head.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from unikd.errors import ConfigError
from unikd.families import get_adapter

AUTO_CLASSES = {
    "sequence-classification": AutoModelForSequenceClassification,
    "token-classification": AutoModelForTokenClassification,
    "masked-lm": AutoModelForMaskedLM,
    "causal-lm": AutoModelForCausalLM,
    "base": AutoModel,
}


# ---- paths ------------------------------------------------------------------------------------------
def resolve_model_path(path: str, field: str = "teacher.path") -> str:
    """Turn 'pkg:<package>' into the model directory it ships; check local paths exist.

    Anything else that is not an existing directory is treated as a hub id (users have internet).
    """
    if path.startswith("pkg:"):
        name = path[4:]
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(
                field,
                f"package {name!r} is not installed",
                f"pip install '{name.replace('_', '-')}' (for the demo teacher: pip install 'unikd[demo]')",
            ) from exc
        getter = getattr(module, "get_model_path", None)
        model_dir = Path(getter()) if getter else Path(module.__file__).parent / "model"
        if not (model_dir / "config.json").is_file():
            raise ConfigError(
                field,
                f"package {name!r} ships no model directory at {model_dir}",
                "reinstall the package, or point to a model directory",
            )
        return str(model_dir)
    p = Path(path).expanduser()
    looks_local = path.startswith((".", "/", "~")) or p.exists() or path.count("/") > 1
    if looks_local:
        if not p.is_dir():
            raise ConfigError(
                field,
                f"local model directory {path!r} does not exist",
                "check the path, or give a hub id such as 'bert-base-uncased'",
            )
        if not (p / "config.json").is_file():
            raise ConfigError(
                field,
                f"{path!r} has no config.json, so it is not a Hugging Face model directory",
                "point to a directory written by save_pretrained (or a unikd run's student/ folder)",
            )
        return str(p)
    return path


# ---- Auto classes -----------------------------------------------------------------------------------
_AUTO_TASKS = (
    ("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
    ("AutoModelForTokenClassification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"),
    ("AutoModelForQuestionAnswering", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"),
    ("AutoModelForMultipleChoice", "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES"),
    ("AutoModelForNextSentencePrediction", "MODEL_FOR_NEXT_SENTENCE_PREDICTION_MAPPING_NAMES"),
    ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
    ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    ("AutoModelForPreTraining", "MODEL_FOR_PRETRAINING_MAPPING_NAMES"),
    ("AutoModel", "MODEL_MAPPING_NAMES"),
)


def _class_name(model_or_config) -> str:
    if isinstance(model_or_config, torch.nn.Module):
        return type(model_or_config).__name__
    archs = list(getattr(model_or_config, "architectures", None) or [])
    return archs[0] if archs else ""


def auto_class_for(model_or_config):
    """The ``AutoModelFor<task>`` class that rebuilds a model (or a config's ``architectures[0]``) with its
    head; for a head no Auto class maps, the exact transformers class if there is one, else ``AutoModel``
    (the bare model)."""
    import transformers
    from transformers.models.auto import modeling_auto

    name = _class_name(model_or_config)
    if name:
        for auto_name, mapping_name in _AUTO_TASKS:
            for value in getattr(modeling_auto, mapping_name).values():
                if name in ((value,) if isinstance(value, str) else tuple(value)):
                    return getattr(transformers, auto_name)
    exact = getattr(transformers, name, None) if name else None
    return exact if isinstance(exact, type) and issubclass(exact, torch.nn.Module) else AutoModel


def model_kind_for(stage: str, config) -> str:
    """Which head a stage loads: classification for task stages, the LM head (if the checkpoint has
    one) for the general stage, else the bare model (intermediate knowledge only)."""
    if stage in ("task", "finetune"):
        return "sequence-classification"
    archs = config.architectures or []
    if get_adapter(config, "teacher.path").is_decoder:
        return "causal-lm" if any("LMHead" in a or "CausalLM" in a for a in archs) else "base"
    return "masked-lm" if any("MaskedLM" in a or "ForPreTraining" in a for a in archs) else "base"


# ---- loading ----------------------------------------------------------------------------------------
def load_model(
    path: str,
    kind: str,
    num_labels: int | None = None,
    field: str = "model",
    label_names: tuple[str, ...] | None = None,
    problem_type: str | None = None,
):
    """Load ``path`` (hub id or directory) with the head ``kind``; a corrupt file names the field.

    ``label_names`` (class or tag names by id) go into the config's ``id2label``/``label2id``, so the saved
    model - and ``pipeline(...)`` on it - names the user's labels; ``problem_type`` is set on the config
    (``multi_label_classification``: BCE on multi-hot labels)."""
    kwargs = {}
    if kind in ("sequence-classification", "token-classification") and num_labels is not None:
        config = AutoConfig.from_pretrained(path)
        if config.num_labels != num_labels:
            kwargs["num_labels"] = num_labels
        kwargs["ignore_mismatched_sizes"] = True
        if label_names and len(label_names) == num_labels:
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {name: i for i, name in enumerate(label_names)}
        if problem_type:
            kwargs["problem_type"] = problem_type
    try:
        model = AUTO_CLASSES[kind].from_pretrained(path, **kwargs)
    except Exception as exc:  # safetensors, torch and HF each raise their own types for a bad file
        if Path(path).is_dir():
            raise ConfigError(
                field,
                f"could not load the model in {path!r} ({type(exc).__name__}: {exc})",
                "the weights may be corrupt or incomplete: re-export them with save_pretrained",
            ) from exc
        raise
    if kind == "sequence-classification" and num_labels == 1 and not problem_type:
        model.config.problem_type = "regression"
    return model


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of every ``nn.Linear`` in ``model``, in place, for CPU inference.

    Weights are quantized once, activations per batch (fbgemm / qnnpack kernels); embeddings and norms
    stay fp32. For a frozen teacher only: the quantized layers have no gradients. Forward hooks and the
    attention interface keep working, so feature capture is unchanged.
    """
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; its dynamic int8 Linear is what runs fastest on CPU
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
