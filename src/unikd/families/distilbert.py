"""DistilBERT: its own module names and config keys (``dim``, ``n_layers``, ``n_heads``)."""

from __future__ import annotations

from torch import nn

from unikd.families.base import FamilyAdapter


class DistilBertAdapter(FamilyAdapter):
    model_types = ("distilbert",)
    config_keys = {"num_layers": "n_layers", "hidden_size": "dim", "num_heads": "n_heads", "ffn_size": "hidden_dim"}

    def embedding_module(self, model: nn.Module) -> nn.Module:
        return self.base_model(model).embeddings

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return self.base_model(model).transformer.layer

    def qkv_modules(self, block: nn.Module) -> dict[str, nn.Module]:
        attn = block.attention
        return {"q": attn.q_lin, "k": attn.k_lin, "v": attn.v_lin}
