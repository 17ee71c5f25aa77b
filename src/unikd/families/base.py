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

    def sliding_window(self, config, layer_idx: int) -> int | None:
        """Keys more than this many positions behind the query are masked (causal sliding window).

        ``None`` (the default) means full attention for this layer.
        """
        return None

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

    def attention_module(self, block: nn.Module) -> nn.Module:
        """The module that calls the attention function (``AttentionInterface``) with Q, K, V."""
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

    # ---- student building: sizes, parameter counts, slicing (used by student.py, initialization.py) --
    #: config key of the number of key/value heads (grouped-query attention); None: K/V have ``num_heads``
    kv_heads_key: str | None = None
    #: RoPE rotates the two halves of each head against each other: a narrower head keeps matching halves
    rotary_half_split: bool = False

    def ffn_size(self, config) -> int:
        """The FFN (intermediate) width of a config, with the family's default resolved."""
        return getattr(config, self.config_keys["ffn_size"])

    def parameter_count(self, config, architecture: str | None = None) -> tuple[int, int]:
        """Closed-form ``(embedding, non_embedding)`` parameter counts of ``architecture`` (a class name
        such as ``"BertForSequenceClassification"``; default ``config.architectures[0]``, else the bare
        model) built from ``config``. Embedding = token (+ position, + token-type, + embedding norm)
        tables; a tied LM head is counted once, there; task heads and poolers are non-embedding.
        Raises ``KeyError`` for an architecture the family does not know."""
        raise NotImplementedError

    def block_param_dims(self, config) -> dict[str, tuple[str | None, ...]]:
        """What each axis of each parameter of one block indexes, keyed by the name inside the block.

        Axis kinds: ``"hidden"`` (model width), ``"heads"`` (query heads x head_dim), ``"kv_heads"``
        (key/value heads x head_dim), ``"qkv"`` (a fused [q | k | v] projection, each heads x head_dim),
        ``"ffn"`` (intermediate neurons), ``None`` (not resized). Weights are as stored (GPT-2 Conv1D
        weights are [in, out])."""
        raise NotImplementedError

    def outer_param_dims(self, config) -> dict[str, tuple[str | None, ...] | None]:
        """Like ``block_param_dims`` for parameters outside the blocks (embeddings, final norm, pooler,
        task heads), keyed by a dotted name suffix. ``None`` instead of a tuple: keep the student's own
        values (e.g. fixed sinusoidal tables that depend on the width)."""
        raise NotImplementedError

    def attention_output_module(self, block: nn.Module) -> nn.Module:
        """The attention output projection; its input is the per-head context [B, L, heads x head_dim]."""
        raise NotImplementedError

    def ffn_output_module(self, block: nn.Module) -> nn.Module:
        """The FFN down projection; its input is the intermediate activation [B, L, ffn]."""
        raise NotImplementedError

    @staticmethod
    def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
        return n_in * n_out + (n_out if bias else 0)

    @staticmethod
    def _architecture(config, architecture: str | None) -> str | None:
        if architecture is None:
            archs = getattr(config, "architectures", None) or []
            architecture = archs[0] if archs else None
        return architecture

    @staticmethod
    def _tied(config) -> bool:
        return bool(getattr(config, "tie_word_embeddings", True))
