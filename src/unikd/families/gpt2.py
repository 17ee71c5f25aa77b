"""GPT-2: fused ``c_attn`` Conv1D projection, final ``ln_f``, optional per-layer attention scaling."""

from __future__ import annotations

import torch
from torch import nn

from unikd.families.base import FamilyAdapter


class GPT2Adapter(FamilyAdapter):
    model_types = ("gpt2",)
    is_decoder = True
    config_keys = {"num_layers": "n_layer", "hidden_size": "n_embd", "num_heads": "n_head", "ffn_size": "n_inner"}

    def attention_scaling(self, config, layer_idx: int) -> float:
        scale = 1.0
        if config.scale_attn_weights:
            scale /= self.spec(config).head_dim ** 0.5
        if config.scale_attn_by_inverse_layer_idx:
            scale /= float(layer_idx + 1)
        return scale

    def embedding_module(self, model: nn.Module) -> nn.Module:
        # wte + wpe are summed inside GPT2Model.forward; the dropout after them sees the embedding output.
        return self.base_model(model).drop

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return self.base_model(model).h

    def final_norm(self, model: nn.Module) -> nn.Module | None:
        return self.base_model(model).ln_f

    def qkv_modules(self, block: nn.Module) -> dict[str, nn.Module]:
        return {"qkv": block.attn.c_attn}

    def split_fused_qkv(self, block: nn.Module, output: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return output.split(block.attn.split_size, dim=-1)
