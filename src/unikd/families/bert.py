"""BERT-style encoders: BERT (and MiniLM checkpoints, which are BertModels), RoBERTa, ELECTRA."""

from __future__ import annotations

from torch import nn

from unikd.families.base import FamilyAdapter


class BertAdapter(FamilyAdapter):
    model_types = ("bert", "roberta", "electra")

    def embedding_module(self, model: nn.Module) -> nn.Module:
        base = self.base_model(model)
        # ELECTRA with embedding_size != hidden_size projects the embeddings to hidden_size before the
        # encoder; HF's hidden_states[0] is that projected output.
        project = getattr(base, "embeddings_project", None)
        return project if project is not None else base.embeddings

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return self.base_model(model).encoder.layer

    def qkv_modules(self, block: nn.Module) -> dict[str, nn.Module]:
        attn = block.attention.self
        return {"q": attn.query, "k": attn.key, "v": attn.value}

    def attention_module(self, block: nn.Module) -> nn.Module:
        return block.attention.self

    # ---- student building: sizes, parameter counts, slicing ---------------------------------
    def _embedding_size(self, config) -> int:
        """ELECTRA's embedding width (``embedding_size``); BERT/RoBERTa embed at ``hidden_size``."""
        return getattr(config, "embedding_size", None) or config.hidden_size

    def parameter_count(self, config, architecture: str | None = None) -> tuple[int, int]:
        lin = self._linear
        arch = self._architecture(config, architecture)
        kind = config.model_type
        H, L, F, V = config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size
        E = self._embedding_size(config)
        nl, tied = config.num_labels, self._tied(config)
        emb = (V + config.max_position_embeddings + config.type_vocab_size) * E + 2 * E
        if E != H:  # ELECTRA's embeddings_project
            emb += lin(E, H)
        attention = 4 * lin(H, H) + 2 * H
        block = attention + lin(H, F) + lin(F, H) + 2 * H
        if getattr(config, "add_cross_attention", False):
            block += attention
        pooler = lin(H, H)
        # MLM head: transform dense + LayerNorm, output bias; decoder weight and bias only when untied
        mlm = lin(H, H) + 2 * H + V + (0 if tied else V * H + V)
        if kind == "electra":
            heads = {
                "Model": 0,
                "ForSequenceClassification": lin(H, H) + lin(H, nl),
                "ForTokenClassification": lin(H, nl),
                "ForQuestionAnswering": lin(H, nl),
                "ForPreTraining": lin(H, H) + lin(H, 1),
                "ForMaskedLM": 2 * E + lin(H, E) + V + (0 if tied else V * E),
            }
        elif kind == "roberta":
            heads = {
                "Model": pooler,
                "ForSequenceClassification": lin(H, H) + lin(H, nl),
                "ForMultipleChoice": pooler + lin(H, 1),
                "ForTokenClassification": lin(H, nl),
                "ForQuestionAnswering": lin(H, nl),
                "ForMaskedLM": mlm,
                "ForCausalLM": mlm,
            }
        else:
            heads = {
                "Model": pooler,
                "ForSequenceClassification": pooler + lin(H, nl),
                "ForMultipleChoice": pooler + lin(H, 1),
                "ForTokenClassification": lin(H, nl),
                "ForQuestionAnswering": lin(H, nl),
                "ForMaskedLM": mlm,
                "LMHeadModel": mlm,
                "ForPreTraining": pooler + mlm + lin(H, 2),
                "ForNextSentencePrediction": pooler + lin(H, 2),
            }
        prefix = {"bert": "Bert", "roberta": "Roberta", "electra": "Electra"}.get(kind, "")
        suffix = "Model" if arch is None else arch[len(prefix) :] if arch.startswith(prefix) else arch
        return emb, L * block + heads[suffix]

    def block_param_dims(self, config) -> dict[str, tuple[str | None, ...]]:
        attention = {
            "self.query.weight": ("heads", "hidden"),
            "self.query.bias": ("heads",),
            "self.key.weight": ("heads", "hidden"),
            "self.key.bias": ("heads",),
            "self.value.weight": ("heads", "hidden"),
            "self.value.bias": ("heads",),
            "output.dense.weight": ("hidden", "heads"),
            "output.dense.bias": ("hidden",),
            "output.LayerNorm.weight": ("hidden",),
            "output.LayerNorm.bias": ("hidden",),
        }
        dims = {f"{part}.{name}": d for part in ("attention", "crossattention") for name, d in attention.items()}
        dims.update(
            {
                "intermediate.dense.weight": ("ffn", "hidden"),
                "intermediate.dense.bias": ("ffn",),
                "output.dense.weight": ("hidden", "ffn"),
                "output.dense.bias": ("hidden",),
                "output.LayerNorm.weight": ("hidden",),
                "output.LayerNorm.bias": ("hidden",),
            }
        )
        return dims

    def outer_param_dims(self, config) -> dict[str, tuple[str | None, ...] | None]:
        # ELECTRA with embedding_size != hidden_size keeps its embedding width; otherwise it follows hidden.
        e = "hidden" if self._embedding_size(config) == config.hidden_size else None
        return {
            "embeddings.word_embeddings.weight": (None, e),
            "embeddings.position_embeddings.weight": (None, e),
            "embeddings.token_type_embeddings.weight": (None, e),
            "embeddings.LayerNorm.weight": (e,),
            "embeddings.LayerNorm.bias": (e,),
            "embeddings_project.weight": ("hidden", None),
            "embeddings_project.bias": ("hidden",),
            "pooler.dense.weight": ("hidden", "hidden"),
            "pooler.dense.bias": ("hidden",),
            "classifier.weight": (None, "hidden"),
            "classifier.bias": (None,),
            "classifier.dense.weight": ("hidden", "hidden"),
            "classifier.dense.bias": ("hidden",),
            "classifier.out_proj.weight": (None, "hidden"),
            "classifier.out_proj.bias": (None,),
            "qa_outputs.weight": (None, "hidden"),
            "qa_outputs.bias": (None,),
            "predictions.transform.dense.weight": ("hidden", "hidden"),
            "predictions.transform.dense.bias": ("hidden",),
            "predictions.transform.LayerNorm.weight": ("hidden",),
            "predictions.transform.LayerNorm.bias": ("hidden",),
            "predictions.bias": (None,),
            "predictions.decoder.weight": (None, "hidden"),
            "predictions.decoder.bias": (None,),
            "seq_relationship.weight": (None, "hidden"),
            "seq_relationship.bias": (None,),
            "lm_head.dense.weight": ("hidden", "hidden"),
            "lm_head.dense.bias": ("hidden",),
            "lm_head.layer_norm.weight": ("hidden",),
            "lm_head.layer_norm.bias": ("hidden",),
            "lm_head.decoder.weight": (None, "hidden"),
            "lm_head.decoder.bias": (None,),
            "lm_head.bias": (None,),
            "generator_predictions.LayerNorm.weight": (e,),
            "generator_predictions.LayerNorm.bias": (e,),
            "generator_predictions.dense.weight": (e, "hidden"),
            "generator_predictions.dense.bias": (e,),
            "generator_lm_head.weight": (None, e),
            "generator_lm_head.bias": (None,),
            "discriminator_predictions.dense.weight": ("hidden", "hidden"),
            "discriminator_predictions.dense.bias": ("hidden",),
            "discriminator_predictions.dense_prediction.weight": (None, "hidden"),
            "discriminator_predictions.dense_prediction.bias": (None,),
        }

    def attention_output_module(self, block: nn.Module) -> nn.Module:
        return block.attention.output.dense

    def ffn_output_module(self, block: nn.Module) -> nn.Module:
        return block.output.dense
