"""Embeddings and hidden states: the embedding output and block outputs [B, L, D] (TinyBERT, PKD, DistilBERT).

Where the widths differ and the loss compares vectors element-wise, the student side goes through a learned
linear projection to the teacher's width (one per student layer; the plan owns and names them). Width-free
losses (gram, nst/mmd: ``LossSpec.width_free``) compare the two widths as they are. FSP
(``LossSpec.needs_block_input``) also reads each block's input: the previous block's output, or the
embeddings for block 0.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from torch import Tensor

from unikd.capture import CaptureRequest, Features
from unikd.errors import ConfigError
from unikd.families import ModelSpec
from unikd.knowledge.base import LayeredTerm, Pairs, StepContext, Term

EMB = "emb"  # the embedding output in a pair and in a projection key


def _get(features: Features, layer) -> Tensor:
    return features.embeddings if layer == EMB else features.hidden[layer]


def _block_input(layer):
    """The input of block ``layer``: the output of the block below, the embeddings for block 0."""
    return EMB if layer in (EMB, 0) else layer - 1


class _Projected(Term):
    """Fields and checks of the terms that may project the student to the teacher's width."""

    projection: bool = Field(True, description="Learn a linear student→teacher projection where widths differ.")
    projection_activation: Literal["relu", "gelu", "tanh"] | None = Field(
        None, description="Activation after the projection."
    )

    def needs_projection(self, teacher: ModelSpec, student: ModelSpec) -> bool:
        return teacher.hidden_size != student.hidden_size and not self.spec.width_free

    def validate_shapes(
        self, teacher: ModelSpec, student: ModelSpec, field: str, *, token_level_logits: bool = False
    ) -> None:
        super().validate_shapes(teacher, student, field, token_level_logits=token_level_logits)
        if self.needs_projection(teacher, student) and not self.projection:
            raise ConfigError(
                f"{field}.projection",
                f"student width {student.hidden_size} differs from teacher width {teacher.hidden_size} and the "
                f"{self.knowledge} loss {self.loss!r} compares vectors element-wise",
                "set projection: true, or use a width-free loss (gram, nst)",
            )

    def _keys(self, student_keys: list) -> list[str]:
        keys = [str(k) for k in student_keys]
        if self.spec.needs_block_input:  # FSP also projects each block's input
            keys += [str(_block_input(int(k))) if k not in (EMB, "0") else EMB for k in keys]
        return list(dict.fromkeys(keys))

    def pair_value(self, ctx: StepContext, t_layer, s_layer) -> Tensor:
        """The loss between teacher layer ``t_layer`` and student layer ``s_layer`` ('emb' = embeddings)."""
        tf, sf, spec = ctx.teacher, ctx.student, self.spec
        s_out = ctx.project(str(s_layer), _get(sf, s_layer))
        if spec.needs_block_input:
            s_in = ctx.project(str(_block_input(s_layer)), _get(sf, _block_input(s_layer)))
            return spec.fn(s_in, s_out, _get(tf, _block_input(t_layer)), _get(tf, t_layer), ctx.mask)
        return spec.fn(s_out, _get(tf, t_layer), ctx.mask)


class EmbeddingsTerm(_Projected):
    """The embedding layer's output (TinyBERT's embedding loss)."""

    group: ClassVar[str] = "hidden"
    default_loss: ClassVar[str] = "mse"

    knowledge: Literal["embeddings"] = Field(description="What is transferred: the embedding output [B, L, D].")
    loss: str | None = Field(None, description="mse (default), cosine, pkd, gram, nst/mmd.")

    def validate_shapes(
        self, teacher: ModelSpec, student: ModelSpec, field: str, *, token_level_logits: bool = False
    ) -> None:
        super().validate_shapes(teacher, student, field, token_level_logits=token_level_logits)
        if self.spec.needs_block_input:
            raise ConfigError(
                f"{field}.loss",
                f"{self.loss!r} compares a block's input and output, and the embeddings are no block",
                "use it on knowledge: hidden, or use mse/cosine",
            )

    def requests(self, pairs: Pairs, teacher: CaptureRequest, student: CaptureRequest) -> None:
        teacher.embeddings = student.embeddings = True

    def projection_keys(self, teacher: ModelSpec, student: ModelSpec, pairs: Pairs) -> list[str]:
        return [EMB] if self.needs_projection(teacher, student) else []

    def compute(self, ctx: StepContext, pairs: Pairs) -> Tensor:
        return self.pair_value(ctx, EMB, EMB)


class HiddenTerm(_Projected, LayeredTerm):
    """Block outputs between matched layers (TinyBERT, BERT-PKD, DistilBERT's cosine)."""

    group: ClassVar[str] = "hidden"
    default_loss: ClassVar[str] = "mse"

    knowledge: Literal["hidden"] = Field(description="What is transferred: the block outputs [B, L, D].")
    loss: str | None = Field(None, description="mse (default), cosine, pkd, gram, fsp, nst/mmd.")
    include_embeddings: bool = Field(False, description="Also match the embedding outputs (emb -> emb).")

    def requests(self, pairs: Pairs, teacher: CaptureRequest, student: CaptureRequest) -> None:
        for req, side in ((teacher, 0), (student, 1)):
            layers = {p[side] for p in pairs}
            req.embeddings = req.embeddings or self.include_embeddings
            req.hidden |= layers
            if self.spec.needs_block_input:
                req.hidden |= {layer - 1 for layer in layers if layer > 0}
                req.embeddings = req.embeddings or 0 in layers

    def projection_keys(self, teacher: ModelSpec, student: ModelSpec, pairs: Pairs) -> list[str]:
        if not self.needs_projection(teacher, student):
            return []
        # one projection per student layer: with random matching the teacher layer changes per step, the
        # student side does not
        layers = range(student.num_layers) if self.is_dynamic else [s for _, s in pairs]
        return self._keys([*layers, *([EMB] if self.include_embeddings else [])])

    def pair_list(self, pairs: Pairs) -> list:
        return [(EMB, EMB), *pairs] if self.include_embeddings else list(pairs)

    def pair_loss(self, ctx: StepContext, t_layer, s_layer) -> Tensor:
        return self.pair_value(ctx, t_layer, s_layer)
