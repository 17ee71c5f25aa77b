"""BERT-style encoders: BERT (and MiniLM checkpoints, which are BertModels), RoBERTa, ELECTRA."""

from __future__ import annotations

from torch import nn

from unikd.families.base import FamilyAdapter


class BertAdapter(FamilyAdapter):
    model_types = ("bert", "roberta", "electra")

    def embedding_module(self, model: nn.Module) -> nn.Module:
        return self.base_model(model).embeddings

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return self.base_model(model).encoder.layer

    def qkv_modules(self, block: nn.Module) -> dict[str, nn.Module]:
        attn = block.attention.self
        return {"q": attn.query, "k": attn.key, "v": attn.value}
