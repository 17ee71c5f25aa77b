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

    def attention_module(self, block: nn.Module) -> nn.Module:
        return block.attn

    def split_fused_qkv(self, block: nn.Module, output: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return output.split(block.attn.split_size, dim=-1)

    # ---- student building: sizes, parameter counts, slicing ---------------------------------
    def ffn_size(self, config) -> int:
        return config.n_inner if config.n_inner is not None else 4 * config.n_embd

    def parameter_count(self, config, architecture: str | None = None) -> tuple[int, int]:
        lin = self._linear
        arch = self._architecture(config, architecture)
        E, L, F, V = config.n_embd, config.n_layer, self.ffn_size(config), config.vocab_size
        nl, tied = config.num_labels, self._tied(config)
        emb = (V + config.n_positions) * E  # wte + wpe
        block = 2 * E + lin(E, 3 * E) + lin(E, E) + 2 * E + lin(E, F) + lin(F, E)
        if getattr(config, "add_cross_attention", False):  # ln_cross_attn + c_attn (k|v) + q_attn + c_proj
            block += 2 * E + lin(E, 2 * E) + 2 * lin(E, E)
        heads = {
            "Model": 0,
            "LMHeadModel": 0 if tied else V * E,
            "ForSequenceClassification": E * nl,
            "ForTokenClassification": lin(E, nl),
            "ForQuestionAnswering": lin(E, 2),
        }
        suffix = "Model" if arch is None else arch.removeprefix("GPT2")
        return emb, L * block + 2 * E + heads[suffix]  # + ln_f

    def block_param_dims(self, config) -> dict[str, tuple[str | None, ...]]:
        # Conv1D weights are stored [in, out]; c_attn's output is the fused [q | k | v].
        return {
            "ln_1.weight": ("hidden",),
            "ln_1.bias": ("hidden",),
            "attn.c_attn.weight": ("hidden", "qkv"),
            "attn.c_attn.bias": ("qkv",),
            "attn.c_proj.weight": ("heads", "hidden"),
            "attn.c_proj.bias": ("hidden",),
            "ln_2.weight": ("hidden",),
            "ln_2.bias": ("hidden",),
            "mlp.c_fc.weight": ("hidden", "ffn"),
            "mlp.c_fc.bias": ("ffn",),
            "mlp.c_proj.weight": ("ffn", "hidden"),
            "mlp.c_proj.bias": ("hidden",),
        }

    def outer_param_dims(self, config) -> dict[str, tuple[str | None, ...] | None]:
        return {
            "wte.weight": (None, "hidden"),
            "wpe.weight": (None, "hidden"),
            "ln_f.weight": ("hidden",),
            "ln_f.bias": ("hidden",),
            "lm_head.weight": (None, "hidden"),
            "score.weight": (None, "hidden"),
            "classifier.weight": (None, "hidden"),
            "classifier.bias": (None,),
            "qa_outputs.weight": (None, "hidden"),
            "qa_outputs.bias": (None,),
        }

    def attention_output_module(self, block: nn.Module) -> nn.Module:
        return block.attn.c_proj

    def ffn_output_module(self, block: nn.Module) -> nn.Module:
        return block.mlp.c_proj
