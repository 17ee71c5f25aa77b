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

    def attention_module(self, block: nn.Module) -> nn.Module:
        return block.attention

    # ---- student building: sizes, parameter counts, slicing ---------------------------------
    def parameter_count(self, config, architecture: str | None = None) -> tuple[int, int]:
        lin = self._linear
        arch = self._architecture(config, architecture)
        D, L, F, V = config.dim, config.n_layers, config.hidden_dim, config.vocab_size
        nl, tied = config.num_labels, self._tied(config)
        # position_embeddings is a parameter even when it holds fixed sinusoids (sinusoidal_pos_embds)
        emb = (V + config.max_position_embeddings) * D + 2 * D
        block = 4 * lin(D, D) + 2 * D + lin(D, F) + lin(F, D) + 2 * D
        heads = {
            "Model": 0,
            "ForSequenceClassification": lin(D, D) + lin(D, nl),
            "ForMultipleChoice": lin(D, D) + lin(D, 1),
            "ForTokenClassification": lin(D, nl),
            "ForQuestionAnswering": lin(D, nl),
            "ForMaskedLM": lin(D, D) + 2 * D + V + (0 if tied else V * D),
        }
        suffix = "Model" if arch is None else arch.removeprefix("DistilBert")
        return emb, L * block + heads[suffix]

    def block_param_dims(self, config) -> dict[str, tuple[str | None, ...]]:
        return {
            "attention.q_lin.weight": ("heads", "hidden"),
            "attention.q_lin.bias": ("heads",),
            "attention.k_lin.weight": ("heads", "hidden"),
            "attention.k_lin.bias": ("heads",),
            "attention.v_lin.weight": ("heads", "hidden"),
            "attention.v_lin.bias": ("heads",),
            "attention.out_lin.weight": ("hidden", "heads"),
            "attention.out_lin.bias": ("hidden",),
            "sa_layer_norm.weight": ("hidden",),
            "sa_layer_norm.bias": ("hidden",),
            "ffn.lin1.weight": ("ffn", "hidden"),
            "ffn.lin1.bias": ("ffn",),
            "ffn.lin2.weight": ("hidden", "ffn"),
            "ffn.lin2.bias": ("hidden",),
            "output_layer_norm.weight": ("hidden",),
            "output_layer_norm.bias": ("hidden",),
        }

    def outer_param_dims(self, config) -> dict[str, tuple[str | None, ...] | None]:
        sinusoidal = bool(getattr(config, "sinusoidal_pos_embds", False))
        return {
            "embeddings.word_embeddings.weight": (None, "hidden"),
            # fixed sinusoids depend on the width: a narrower student keeps its own table
            "embeddings.position_embeddings.weight": None if sinusoidal else (None, "hidden"),
            "embeddings.LayerNorm.weight": ("hidden",),
            "embeddings.LayerNorm.bias": ("hidden",),
            "pre_classifier.weight": ("hidden", "hidden"),
            "pre_classifier.bias": ("hidden",),
            "classifier.weight": (None, "hidden"),
            "classifier.bias": (None,),
            "qa_outputs.weight": (None, "hidden"),
            "qa_outputs.bias": (None,),
            "vocab_transform.weight": ("hidden", "hidden"),
            "vocab_transform.bias": ("hidden",),
            "vocab_layer_norm.weight": ("hidden",),
            "vocab_layer_norm.bias": ("hidden",),
            "vocab_projector.weight": (None, "hidden"),
            "vocab_projector.bias": (None,),
        }

    def attention_output_module(self, block: nn.Module) -> nn.Module:
        return block.attention.out_lin

    def ffn_output_module(self, block: nn.Module) -> nn.Module:
        return block.ffn.lin2
