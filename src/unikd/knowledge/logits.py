"""Logits: the teacher's soft targets (Hinton et al., 2015), sequence level [B, C] or token level [B, L, V]."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from torch import Tensor

from unikd import losses as L
from unikd.capture import CaptureRequest
from unikd.errors import ConfigError
from unikd.families import ModelSpec
from unikd.knowledge.base import Pairs, StepContext, Term, linear_schedule


class LogitsTerm(Term):
    """Soft targets on the output logits: KL / soft cross-entropy at a temperature, or MSE."""

    group: ClassVar[str] = "logits"
    default_loss: ClassVar[str] = "kl"

    knowledge: Literal["logits"] = Field(description="What is transferred: the output logits.")
    loss: str | None = Field(None, description="kl (default), soft_ce or mse.")
    temperature: float = Field(1.0, gt=0, description="Softmax temperature of kl / soft_ce.")
    temperature_end: float | None = Field(None, gt=0, description="Temperature at the last step (linear).")
    t2_scaling: bool = Field(True, description="Multiply soft CE/KL by T² (Hinton et al.).")

    def validate_shapes(
        self, teacher: ModelSpec, student: ModelSpec, field: str, *, token_level_logits: bool = False
    ) -> None:
        super().validate_shapes(teacher, student, field)
        if token_level_logits and teacher.vocab_size != student.vocab_size:
            raise ConfigError(
                f"{field}.knowledge",
                f"token-level logits need the same vocabulary (teacher {teacher.vocab_size}, student "
                f"{student.vocab_size})",
                "build the student from the teacher's config/tokenizer, or drop the logits term",
            )

    def requests(self, pairs: Pairs, teacher: CaptureRequest, student: CaptureRequest) -> None:
        pass  # logits are part of every model output

    def compute(self, ctx: StepContext, pairs: Pairs) -> Tensor:
        s, t = ctx.student.logits, ctx.teacher.logits
        if s.shape[-1] != t.shape[-1]:
            raise ConfigError(
                f"{ctx.field}.knowledge",
                f"teacher logits have {t.shape[-1]} classes but the student's have {s.shape[-1]}",
                "give the student the teacher's num_labels (build it from the teacher's config)",
            )
        mask = None
        if s.dim() == 3:  # token level: the positions with a label (else the real tokens)
            labels = ctx.labels
            mask = (labels != -100).long() if labels is not None and labels.dim() == 2 else ctx.student.attention_mask
        spec = self.spec
        if spec.distribution and s.shape[-1] == 1:
            # A regression head (STS-B) has one output: a softmax over it is constant, so the
            # distribution losses would be identically zero. Match the predicted values instead.
            return L.logits_mse(s, t, mask=mask)
        if spec.temperature:
            temperature = linear_schedule(self.temperature, self.temperature_end, ctx.step, ctx.total_steps)
            if s.dim() == 2 and ctx.labels is not None and ctx.labels.dim() == 2:
                # multi-hot labels [B, C]: C independent labels, so a softmax over them would be the wrong target
                cross_entropy = spec.fn is L.soft_cross_entropy
                return L.bernoulli_kd(s, t, temperature, t2_scaling=self.t2_scaling, cross_entropy=cross_entropy)
            return spec.fn(s, t, temperature=temperature, mask=mask, t2_scaling=self.t2_scaling)
        return spec.fn(s, t, mask=mask)
