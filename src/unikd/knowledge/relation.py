"""Self-attention relations: MiniLM's value relation and MiniLMv2's Q-Q / K-K / V-V relations.

Each side's Q (or K, V) of one layer, all heads concatenated [B, L, W], is re-split into ``relation_heads``
heads; the relation is softmax(x_h·x_hᵀ/√(W/A_r)) over the valid keys, compared by KL. Works across widths
and head counts as long as the relation head count divides both sides' widths.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from unikd.capture import CaptureRequest
from unikd.errors import ConfigError
from unikd.families import ModelSpec
from unikd.knowledge.base import LayeredTerm, Pairs, StepContext

Relation = Literal["qq", "kk", "vv"]


def heads_flat(x: Tensor) -> Tensor:
    """[B, H, L, d] -> [B, L, H·d]: the concatenation of all heads (MiniLMv2)."""
    b, h, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, h * d)


class _RelationTerm(LayeredTerm):
    group: ClassVar[str] = "relation"
    default_loss: ClassVar[str] = "kl"

    loss: str | None = Field(None, description="kl (the only relation loss).")
    relation_heads: int | None = Field(
        None, ge=1, description="Relation heads A_r (MiniLMv2 uses 48); default: the student's attention heads."
    )

    def which(self) -> list[str]:
        raise NotImplementedError

    def heads(self, student: ModelSpec) -> int:
        return self.relation_heads or student.num_heads

    def validate_shapes(
        self, teacher: ModelSpec, student: ModelSpec, field: str, *, token_level_logits: bool = False
    ) -> None:
        super().validate_shapes(teacher, student, field, token_level_logits=token_level_logits)
        heads = self.heads(student)
        for side, spec in (("teacher", teacher), ("student", student)):
            for rel in self.which():
                width = spec.q_width if rel == "qq" else spec.kv_width
                if width % heads:
                    raise ConfigError(
                        f"{field}.relation_heads",
                        f"{heads} relation heads do not divide the {side}'s {rel[0].upper()} width {width}",
                        "choose relation_heads that divides the Q/K/V width of both models",
                    )

    def requests(self, pairs: Pairs, teacher: CaptureRequest, student: CaptureRequest) -> None:
        teacher.qkv |= {t for t, _ in pairs}
        student.qkv |= {s for _, s in pairs}

    def pair_loss(self, ctx: StepContext, t_layer, s_layer) -> Tensor:
        heads = self.heads(ctx.student_spec)
        total = 0.0
        for rel in self.which():
            attr = rel[0]
            s_x = heads_flat(getattr(ctx.student, attr)[s_layer])
            t_x = heads_flat(getattr(ctx.teacher, attr)[t_layer])
            total = total + self.spec.fn(s_x, t_x, heads, ctx.mask, causal=ctx.student.causal)
        return torch.as_tensor(total)


class ValueRelationTerm(_RelationTerm):
    """MiniLM's value relation V-V (with A_r = the student's attention heads by default)."""

    knowledge: Literal["value_relation"] = Field(description="What is transferred: the V-V relation (MiniLM).")

    def which(self) -> list[str]:
        return ["vv"]


class RelationTerm(_RelationTerm):
    """MiniLMv2's Q-Q, K-K and V-V relations, summed."""

    knowledge: Literal["relation"] = Field(description="What is transferred: Q-Q/K-K/V-V relations (MiniLMv2).")
    relations: list[Relation] = Field(
        default_factory=lambda: ["qq", "kk", "vv"], description="Which self-relations (MiniLMv2 uses all three)."
    )

    def which(self) -> list[str]:
        return list(self.relations)

    def validate_shapes(
        self, teacher: ModelSpec, student: ModelSpec, field: str, *, token_level_logits: bool = False
    ) -> None:
        if not self.relations:
            raise ConfigError(
                f"{field}.relations",
                "no relation is selected, so the term would always be 0",
                "list at least one of qq, kk, vv (MiniLMv2 uses all three)",
            )
        super().validate_shapes(teacher, student, field, token_level_logits=token_level_logits)
