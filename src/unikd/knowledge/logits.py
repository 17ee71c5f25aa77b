"""Logits: the teacher's soft targets (Hinton et al., 2015), sequence level [B, C] or token level [B, L, V]."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator
from torch import Tensor

from unikd import losses as L
from unikd.capture import CaptureRequest
from unikd.chunked import chunked_divergence, fused_linear_divergence
from unikd.divergences import ROWS, scored_positions, topk_divergence
from unikd.errors import ConfigError
from unikd.families import ModelSpec
from unikd.knowledge.base import Pairs, StepContext, Term, linear_schedule


class LogitsTerm(Term):
    """Soft targets on the output logits: a divergence at a temperature (forward/reverse KL, soft cross-entropy,
    generalized JSD, TVD, skew KL; ``unikd.divergences``' table says which direction each is), or MSE.

    Token-level logits of a decoder are scored where the next token has a label: the distribution at position i
    predicts token i + 1, so position i counts when ``labels[i + 1] != -100`` (the response tokens of causal-LM
    task data; every real token but the last of a general-stage block), the positions the LM loss scores."""

    group: ClassVar[str] = "logits"
    default_loss: ClassVar[str] = "kl"

    knowledge: Literal["logits"] = Field(description="What is transferred: the output logits.")
    loss: str | None = Field(
        None,
        description="kl (default: forward KL(teacher || student)), reverse_kl (KL(student || teacher)), soft_ce, "
        "jsd (with beta), tvd, skew_kl / skew_reverse_kl (with alpha), or mse.",
    )
    temperature: float = Field(1.0, gt=0, description="Softmax temperature of kl / soft_ce.")
    temperature_end: float | None = Field(None, gt=0, description="Temperature at the last step (linear).")
    t2_scaling: bool = Field(True, description="Multiply soft CE/KL by T² (Hinton et al.).")
    beta: float | None = Field(
        None,
        ge=0,
        le=1,
        description="loss jsd: the generalized JSD's beta (default 0.5), TRL's GKD convention: beta = 0 is forward "
        "KL(teacher || student), beta = 1 reverse KL(student || teacher); the mixture is beta*teacher + "
        "(1-beta)*student.",
    )
    alpha: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="loss skew_kl / skew_reverse_kl: the skew (default 0.1, DistiLLM): skew_kl = KL(teacher || "
        "alpha*teacher + (1-alpha)*student), skew_reverse_kl = KL(student || alpha*student + (1-alpha)*teacher).",
    )

    @model_validator(mode="after")
    def _parameter_fits_loss(self):
        wanted = L.REGISTRY["logits"][self.loss].parameter if self.loss in L.REGISTRY["logits"] else None
        for name in ("beta", "alpha"):
            if getattr(self, name) is not None and wanted != name:
                users = sorted(n for n, spec in L.REGISTRY["logits"].items() if spec.parameter == name)
                raise ValueError(
                    f"{name}: the {self.loss} loss has no {name} (it is for {', '.join(users)}); drop {name} or "
                    f"set loss to {users[0]}"
                )
        return self

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
        # getattr: a context built by hand (a user's loop, older callers) may lack the fields added for decoders
        if getattr(ctx.teacher, "topk", None) is not None:  # a token top-k cache's teacher (unikd.token_cache)
            return self._from_topk(ctx)
        if getattr(ctx, "student_head", None) is not None:  # a fused step: the student's logits were never made
            return self._fused(ctx)
        s, t = ctx.student.logits, ctx.teacher.logits
        # rows past a shared tokenizer are padding on either side
        if getattr(ctx, "shared_vocab", None) and s.dim() == 3:
            s, t = s[..., : ctx.shared_vocab], t[..., : ctx.shared_vocab]
        if s.shape[-1] != t.shape[-1]:
            raise ConfigError(
                f"{ctx.field}.knowledge",
                f"teacher logits have {t.shape[-1]} classes but the student's have {s.shape[-1]}",
                "give the student the teacher's num_labels (build it from the teacher's config)",
            )
        mask = None
        if s.dim() == 3:  # token level: the positions with a label (else the real tokens)
            mask = scored_positions(ctx.labels, ctx.student.attention_mask, causal=ctx.student.causal)
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
            extra = {spec.parameter: self.parameter_value} if spec.parameter else {}
            if getattr(ctx, "logits_chunk", None) and mask is not None and self.loss in ROWS:
                keep = mask.to(s.device).bool()
                return chunked_divergence(
                    s[keep],
                    t[keep],
                    self.loss,
                    temperature=temperature,
                    chunk=ctx.logits_chunk,
                    t2_scaling=self.t2_scaling,
                    parameter=extra.get(spec.parameter) if spec.parameter else None,
                )
            return spec.fn(s, t, temperature=temperature, mask=mask, t2_scaling=self.t2_scaling, **extra)
        return spec.fn(s, t, mask=mask)

    def _fused(self, ctx: StepContext) -> Tensor:
        """train.fused_output_projection: ``ctx.student.logits`` are the student's last hidden states [B, L, d]; the
        divergence applies its output projection chunk by chunk over the scored positions."""
        (weight, bias), t = ctx.student_head, ctx.teacher.logits
        if ctx.shared_vocab:
            weight, t = weight[: ctx.shared_vocab], t[..., : ctx.shared_vocab]
            bias = bias[: ctx.shared_vocab] if bias is not None else None
        keep = scored_positions(ctx.labels, ctx.student.attention_mask, causal=ctx.student.causal).bool()
        temperature = linear_schedule(self.temperature, self.temperature_end, ctx.step, ctx.total_steps)
        return fused_linear_divergence(
            ctx.student.logits[keep],
            weight,
            bias,
            t[keep],
            self.loss,
            temperature=temperature,
            chunk=ctx.logits_chunk,
            t2_scaling=self.t2_scaling,
            parameter=self.parameter_value if self.spec.parameter else None,
        )

    def _from_topk(self, ctx: StepContext) -> Tensor:
        s = ctx.student.logits
        if ctx.shared_vocab:
            s = s[..., : ctx.shared_vocab]
        mask = scored_positions(ctx.labels, ctx.student.attention_mask, causal=True).bool()
        spec = self.spec
        return topk_divergence(
            s[mask],
            ctx.teacher.topk,
            self.loss,
            temperature=self.temperature,
            t2_scaling=self.t2_scaling,
            parameter=self.parameter_value if spec.parameter else None,
        )

    @property
    def parameter_value(self) -> float:
        """The value of the loss's shape parameter (beta / alpha), its default where unset."""
        name = self.spec.parameter
        value = getattr(self, name)
        return _PARAMETER_DEFAULTS[name] if value is None else value


#: the shape parameters' defaults: GKD's JSD(0.5), DistiLLM's skew 0.1
_PARAMETER_DEFAULTS = {"beta": 0.5, "alpha": 0.1}
