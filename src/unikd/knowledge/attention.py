"""Attention maps: pre-softmax scores or probabilities [B, H, L, L] of matched layers (TinyBERT, MiniLM).

Compared per head (equal head counts) or reduced over heads first (``sum`` / ``mean``). Distribution losses
(``LossSpec.distribution``: kl, ce) on scores take a masked softmax of each side first; on maps summed over
heads they are undefined and refused. Under inline capture the plan takes each pair's value while the
student's layer runs (``DistillationPlan.inline_consumer``); ``compute`` then only collects it.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from unikd import losses as L
from unikd.capture import CaptureRequest, Features
from unikd.errors import ConfigError
from unikd.families import ModelSpec
from unikd.knowledge.base import LayeredTerm, Pairs, StepContext

TEACHER, STUDENT = 0, 1


def window_valid(valid: Tensor, tf: Features, sf: Features, t_layer: int, s_layer: int) -> Tensor:
    """``valid`` restricted to the keys inside the sliding window of either side's layer (Mistral, Qwen2).

    Keys outside a window hold ``finfo.min`` scores; left in, a head mean turns them into -inf - -inf = NaN.
    """
    windows = [
        w
        for w in (getattr(tf, "sliding_windows", {}).get(t_layer), getattr(sf, "sliding_windows", {}).get(s_layer))
        if w is not None
    ]
    if not windows:
        return valid
    pos = torch.arange(valid.shape[-1], device=valid.device)
    return valid & (pos[None, :] > pos[:, None] - min(windows))


class AttentionTerm(LayeredTerm):
    """Attention scores or probabilities between matched layers."""

    group: ClassVar[str] = "attention"
    default_loss: ClassVar[str] = "kl"

    knowledge: Literal["attention"] = Field(description="What is transferred: attention maps [B, H, L, L].")
    loss: str | None = Field(None, description="kl (default), ce or mse.")
    attention_on: Literal["scores", "probs"] = Field("probs", description="Pre-softmax scores or probabilities.")
    head_reduction: Literal["per_head", "sum", "mean"] = Field(
        "per_head", description="Compare per head (equal head counts), or the maps summed/averaged over heads."
    )

    def validate_shapes(
        self, teacher: ModelSpec, student: ModelSpec, field: str, *, token_level_logits: bool = False
    ) -> None:
        super().validate_shapes(teacher, student, field, token_level_logits=token_level_logits)
        if self.head_reduction == "per_head" and teacher.num_heads != student.num_heads:
            raise ConfigError(
                f"{field}.head_reduction",
                f"per-head attention transfer needs equal head counts (teacher {teacher.num_heads}, student "
                f"{student.num_heads})",
                "use head_reduction: mean (or sum), or give the student the teacher's head count",
            )
        if self.head_reduction == "sum" and self.attention_on == "probs" and self.spec.distribution:
            raise ConfigError(
                f"{field}.head_reduction",
                "probabilities summed over heads are not a distribution, so KL/CE is undefined",
                "use head_reduction: mean, or attention_on: scores",
            )

    def requests(self, pairs: Pairs, teacher: CaptureRequest, student: CaptureRequest) -> None:
        for req, side in ((teacher, TEACHER), (student, STUDENT)):
            req.attention |= {p[side] for p in pairs}
            req.attention_maps.add(self.attention_on)

    def pair_value(self, tf: Features, sf: Features, t_layer: int, s_layer: int, valid: Tensor) -> Tensor:
        """The loss between teacher layer ``t_layer``'s maps and student layer ``s_layer``'s."""
        valid = window_valid(valid, tf, sf, t_layer, s_layer)
        # Scores go unmasked: every attention loss (and masked_softmax) selects the valid pairs itself.
        if self.attention_on == "scores":
            s_map, t_map = sf.attention_scores(s_layer, masked=False), tf.attention_scores(t_layer, masked=False)
        else:
            s_map, t_map = sf.attention_probs(s_layer), tf.attention_probs(t_layer)
        s_map, t_map = L.reduce_heads(s_map, self.head_reduction), L.reduce_heads(t_map, self.head_reduction)
        spec = self.spec
        if spec.distribution and self.attention_on == "scores":
            s_map, t_map = L.masked_softmax(s_map, valid), L.masked_softmax(t_map, valid)
        return spec.fn(s_map, t_map, valid)

    def pair_loss(self, ctx: StepContext, t_layer, s_layer) -> Tensor:
        book = ctx.attention
        taken = book.precomputed.pop((ctx.index, t_layer, s_layer), None)
        if taken is not None:  # taken during the student's forward (inline capture)
            return taken
        value = self.pair_value(ctx.teacher, ctx.student, t_layer, s_layer, ctx.valid)
        book.read(ctx.teacher, TEACHER, t_layer)
        book.read(ctx.student, STUDENT, s_layer)
        return value
