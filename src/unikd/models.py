"""Loading Hugging Face models with the head a stage needs, with clear errors for bad paths."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM,
                          AutoModelForSequenceClassification)

from unikd.errors import ConfigError
from unikd.families import get_adapter

AUTO_CLASSES = {
    "sequence-classification": AutoModelForSequenceClassification,
    "masked-lm": AutoModelForMaskedLM,
    "causal-lm": AutoModelForCausalLM,
    "base": AutoModel,
}


def model_kind_for(stage: str, config) -> str:
    """Which head a stage loads: classification for task stages, the LM head (if the checkpoint has
    one) for the general stage, else the bare model (intermediate knowledge only)."""
    if stage in ("task", "finetune"):
        return "sequence-classification"
    archs = config.architectures or []
    if get_adapter(config, "teacher.path").is_decoder:
        return "causal-lm" if any("LMHead" in a or "CausalLM" in a for a in archs) else "base"
    return "masked-lm" if any("MaskedLM" in a or "ForPreTraining" in a for a in archs) else "base"


def load_model(path: str, kind: str, num_labels: int | None = None, field: str = "model"):
    """Load ``path`` (hub id or directory) with the head ``kind``; a corrupt file names the field."""
    kwargs = {}
    if kind == "sequence-classification" and num_labels is not None:
        config = AutoConfig.from_pretrained(path)
        if config.num_labels != num_labels:
            kwargs["num_labels"] = num_labels
        kwargs["ignore_mismatched_sizes"] = True
    try:
        model = AUTO_CLASSES[kind].from_pretrained(path, **kwargs)
    except Exception as exc:  # safetensors, torch and HF each raise their own types for a bad file
        if Path(path).is_dir():
            raise ConfigError(field, f"could not load the model in {path!r} ({type(exc).__name__}: {exc})",
                              "the weights may be corrupt or incomplete: re-export them with save_pretrained") from exc
        raise
    if kind == "sequence-classification" and num_labels == 1:
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
