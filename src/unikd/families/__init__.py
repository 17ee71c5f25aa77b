"""Model family adapters, looked up by ``config.model_type``."""

from __future__ import annotations

from unikd.errors import ConfigError
from unikd.families.base import FamilyAdapter, ModelSpec
from unikd.families.bert import BertAdapter
from unikd.families.distilbert import DistilBertAdapter
from unikd.families.gpt2 import GPT2Adapter
from unikd.families.llama import LlamaAdapter

ADAPTERS: dict[str, FamilyAdapter] = {}
for _adapter in (BertAdapter(), DistilBertAdapter(), GPT2Adapter(), LlamaAdapter()):
    for _model_type in _adapter.model_types:
        ADAPTERS[_model_type] = _adapter


def get_adapter(model_or_config, field: str = "model") -> FamilyAdapter:
    """The adapter for a model or config; a clear error for an unsupported family."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise ConfigError(
            field,
            f"model family {model_type!r} is not supported",
            f"use one of {sorted(ADAPTERS)}, or add an adapter file under unikd/families/",
        )
    return ADAPTERS[model_type]


def model_spec(model_or_config) -> ModelSpec:
    config = getattr(model_or_config, "config", model_or_config)
    return get_adapter(config).spec(config)


__all__ = ["ADAPTERS", "FamilyAdapter", "ModelSpec", "get_adapter", "model_spec"]
