"""What every model family adapter knows: where the parts of a Hugging Face model live.

An adapter answers structural questions (which module outputs the embeddings, which modules are the
blocks, where Q/K/V are projected, whether RoPE is applied) so that capture, student building and
initialization never branch on ``model_type``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """Shape facts about a model that a distillation plan is validated against."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    is_decoder: bool

    @property
    def q_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim


class FamilyAdapter:
    """Base adapter. Subclasses set ``model_types`` and override the locators."""

    model_types: tuple[str, ...] = ()
    is_decoder: bool = False
    #: names of the config fields for the shape of the model, so students can be built generically
    config_keys: dict[str, str] = {
        "num_layers": "num_hidden_layers",
        "hidden_size": "hidden_size",
        "num_heads": "num_attention_heads",
        "ffn_size": "intermediate_size",
    }

    # ---- shape -------------------------------------------------------------------------------
    def spec(self, config) -> ModelSpec:
        keys = self.config_keys
        hidden = getattr(config, keys["hidden_size"])
        heads = getattr(config, keys["num_heads"])
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        return ModelSpec(
            model_type=config.model_type,
            num_layers=getattr(config, keys["num_layers"]),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            vocab_size=config.vocab_size,
            is_decoder=self.is_decoder,
        )

    def attention_scaling(self, config, layer_idx: int) -> float:
        """The factor the model multiplies Q·Kᵀ by before the softmax."""
        return self.spec(config).head_dim ** -0.5

    # ---- locators ----------------------------------------------------------------------------
    def base_model(self, model: nn.Module) -> nn.Module:
        """The bare encoder/decoder inside a task model (``BertForSequenceClassification.bert``)."""
        return model.base_model

    def embedding_module(self, model: nn.Module) -> nn.Module:
        """The module whose output is the embedding output (HF ``hidden_states[0]``)."""
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        raise NotImplementedError

    def final_norm(self, model: nn.Module) -> nn.Module | None:
        """A norm applied after the last block (decoders); its output is the last hidden state."""
        return None

    def qkv_modules(self, block: nn.Module) -> dict[str, nn.Module]:
        """``{"q": m, "k": m, "v": m}`` projections, or ``{"qkv": m}`` for a fused projection."""
        raise NotImplementedError

    def split_fused_qkv(self, block: nn.Module, output: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Split a fused projection output [B, L, 3W] into q, k, v [B, L, W]."""
        raise NotImplementedError

    def rotary_module(self, block: nn.Module) -> nn.Module | None:
        """The attention module that receives ``position_embeddings`` (RoPE models), else None."""
        return None

    def apply_rotary(self, q: torch.Tensor, k: torch.Tensor, attention_kwargs: dict):
        """Apply the model's RoPE to q, k [B, H, L, d] given the attention module's kwargs."""
        return q, k
