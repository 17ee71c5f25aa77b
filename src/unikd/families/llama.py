"""Llama-style decoders: Llama, Qwen2, Mistral (RoPE, grouped-query attention, final RMSNorm)."""

from __future__ import annotations

import torch
from torch import nn

from unikd.families.base import FamilyAdapter


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class LlamaAdapter(FamilyAdapter):
    model_types = ("llama", "qwen2", "mistral")
    is_decoder = True

    def embedding_module(self, model: nn.Module) -> nn.Module:
        return self.base_model(model).embed_tokens

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return self.base_model(model).layers

    def final_norm(self, model: nn.Module) -> nn.Module | None:
        return self.base_model(model).norm

    def qkv_modules(self, block: nn.Module) -> dict[str, nn.Module]:
        attn = block.self_attn
        return {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj}

    def rotary_module(self, block: nn.Module) -> nn.Module | None:
        return block.self_attn

    def apply_rotary(self, q: torch.Tensor, k: torch.Tensor, attention_kwargs: dict):
        # Same rotation as transformers' apply_rotary_pos_emb; cos/sin come from the model's
        # rotary embedding, passed to every attention module as ``position_embeddings``.
        cos, sin = attention_kwargs["position_embeddings"]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)
