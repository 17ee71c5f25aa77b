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

    def sliding_window(self, config, layer_idx: int) -> int | None:
        window = getattr(config, "sliding_window", None)
        if window is None:
            return None
        if config.model_type == "qwen2":  # Qwen2 slides only on the layers marked "sliding_attention"
            layer_types = getattr(config, "layer_types", None)
            return window if layer_types is not None and layer_types[layer_idx] == "sliding_attention" else None
        return window  # Mistral applies its window on every layer

    def embedding_module(self, model: nn.Module) -> nn.Module:
        return self.base_model(model).embed_tokens

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return self.base_model(model).layers

    def final_norm(self, model: nn.Module) -> nn.Module | None:
        return self.base_model(model).norm

    def qkv_modules(self, block: nn.Module) -> dict[str, nn.Module]:
        attn = block.self_attn
        return {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj}

    def attention_module(self, block: nn.Module) -> nn.Module:
        return block.self_attn

    def rotary_module(self, block: nn.Module) -> nn.Module | None:
        return block.self_attn

    def apply_rotary(self, q: torch.Tensor, k: torch.Tensor, attention_kwargs: dict):
        # Same rotation as transformers' apply_rotary_pos_emb; cos/sin come from the model's
        # rotary embedding, passed to every attention module as ``position_embeddings``.
        cos, sin = attention_kwargs["position_embeddings"]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)

    # ---- student building: sizes, parameter counts, slicing ---------------------------------
    kv_heads_key = "num_key_value_heads"
    rotary_half_split = True

    def _biases(self, config) -> tuple[bool, bool, bool]:
        """(q/k/v bias, o bias, MLP bias): Qwen2 biases q/k/v only, Mistral nothing, Llama per config."""
        if config.model_type == "qwen2":
            return True, False, False
        if config.model_type == "mistral":
            return False, False, False
        attention_bias = bool(getattr(config, "attention_bias", False))
        return attention_bias, attention_bias, bool(getattr(config, "mlp_bias", False))

    def parameter_count(self, config, architecture: str | None = None) -> tuple[int, int]:
        lin = self._linear
        arch = self._architecture(config, architecture)
        H, L, F, V = config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size
        heads_, kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
        d = getattr(config, "head_dim", None) or H // heads_
        qkv_bias, o_bias, mlp_bias = self._biases(config)
        nl, tied = config.num_labels, self._tied(config)
        emb = V * H
        block = (
            lin(H, heads_ * d, qkv_bias)
            + 2 * lin(H, kv * d, qkv_bias)
            + lin(heads_ * d, H, o_bias)
            + 2 * lin(H, F, mlp_bias)
            + lin(F, H, mlp_bias)
            + 2 * H
        )  # + two RMSNorms
        heads = {
            "Model": 0,
            "ForCausalLM": 0 if tied else V * H,
            "ForSequenceClassification": H * nl,
            "ForTokenClassification": lin(H, nl),
            "ForQuestionAnswering": lin(H, 2),
        }
        prefix = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}.get(config.model_type, "")
        suffix = "Model" if arch is None else arch.removeprefix(prefix)
        return emb, L * block + H + heads[suffix]  # + final norm

    def block_param_dims(self, config) -> dict[str, tuple[str | None, ...]]:
        return {
            "self_attn.q_proj.weight": ("heads", "hidden"),
            "self_attn.q_proj.bias": ("heads",),
            "self_attn.k_proj.weight": ("kv_heads", "hidden"),
            "self_attn.k_proj.bias": ("kv_heads",),
            "self_attn.v_proj.weight": ("kv_heads", "hidden"),
            "self_attn.v_proj.bias": ("kv_heads",),
            "self_attn.o_proj.weight": ("hidden", "heads"),
            "self_attn.o_proj.bias": ("hidden",),
            "mlp.gate_proj.weight": ("ffn", "hidden"),
            "mlp.gate_proj.bias": ("ffn",),
            "mlp.up_proj.weight": ("ffn", "hidden"),
            "mlp.up_proj.bias": ("ffn",),
            "mlp.down_proj.weight": ("hidden", "ffn"),
            "mlp.down_proj.bias": ("hidden",),
            "input_layernorm.weight": ("hidden",),
            "post_attention_layernorm.weight": ("hidden",),
        }

    def outer_param_dims(self, config) -> dict[str, tuple[str | None, ...] | None]:
        return {
            "embed_tokens.weight": (None, "hidden"),
            "norm.weight": ("hidden",),
            "lm_head.weight": (None, "hidden"),
            "score.weight": (None, "hidden"),
            "classifier.weight": (None, "hidden"),
            "classifier.bias": (None,),
            "qa_outputs.weight": (None, "hidden"),
            "qa_outputs.bias": (None,),
        }

    def attention_output_module(self, block: nn.Module) -> nn.Module:
        return block.self_attn.o_proj

    def ffn_output_module(self, block: nn.Module) -> nn.Module:
        return block.mlp.down_proj
