"""What every distillation term has, and the per-step context its loss is computed in.

A term is a pydantic model (its fields are the YAML schema of one entry of ``plan.terms``) with four
methods the plan calls, so that no code outside a term's own file branches on its knowledge type:

=====================================================  =================================================
``validate_shapes(teacher, student, field, ...)``      raise ``ConfigError`` naming ``<field>.<name>``
                                                       for a term that cannot work on these two shapes
``pairs(teacher, student, generator, field)``          its ``(teacher layer, student layer)`` pairs
                                                       (``[]`` for unlayered terms)
``requests(pairs, teacher_req, student_req)``          add what it reads to both capture requests
``projection_keys(teacher, student, pairs)``           the student features it projects to the teacher
                                                       width (``[]``: none); the plan owns the modules
``compute(ctx, pairs)``                                its unweighted value for this step
=====================================================  =================================================

(``loss`` is a field - the loss name - so the value is ``compute``.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator
from torch import Tensor

from unikd import losses as L
from unikd.capture import CaptureRequest, Features
from unikd.compat import drop_flat_term_leftovers
from unikd.errors import ConfigError
from unikd.families import ModelSpec
from unikd.matching import is_dynamic, resolve_matching

Pairs = list[tuple[int, int]]
_MATCHING_SIBLINGS = ("teacher_layer", "student_layer", "k")


@dataclass
class AttentionBook:
    """Attention values taken during the student's forward (inline capture), and how many pairs of this step
    still read each layer's maps, so that a map is released from its ``Features`` after its last reader."""

    precomputed: dict[tuple[int, int, int], Tensor] = field(default_factory=dict)
    uses: dict[tuple[int, int], int] = field(default_factory=dict)

    def read(self, features: Features, side: int, layer: int) -> None:
        if not self.uses:
            return
        self.uses[side, layer] -= 1
        if self.uses[side, layer] == 0:
            features.release_attention(layer)


@dataclass
class StepContext:
    """Everything a term's ``compute`` may read for one step. Features of both sides share the batch."""

    teacher: Features
    student: Features
    teacher_spec: ModelSpec
    student_spec: ModelSpec
    labels: Tensor | None
    step: int
    total_steps: int
    index: int  # the term's position in plan.terms (precomputed attention values are keyed by it)
    field: str  # "plan.terms[i]": errors found at run time name it
    project: Callable[[str, Tensor], Tensor]  # (the term's projection key, student tensor) -> projected
    attention: AttentionBook
    logits_chunk: int | None = None  # train.logits_chunk_tokens: token-level divergences chunked (unikd.chunked)
    shared_vocab: int | None = None  # logits cropped to the tokenizer both embeddings pad past (unikd.vocab)
    # train.fused_output_projection: the student's (weight [V, d], bias) - its "logits" are then its last hidden states
    student_head: tuple | None = None
    _valid: Tensor | None = None

    @property
    def mask(self) -> Tensor:
        """[B, L] the student's attention mask (1 = real token)."""
        return self.student.attention_mask

    @property
    def valid(self) -> Tensor:
        """[B, 1, L, L] valid (query, key) pairs: both real tokens and, for decoders, key <= query."""
        if self._valid is None:
            self._valid = L.valid_pairs(self.mask, self.student.causal)
        return self._valid


def linear_schedule(start: float, end: float | None, step: int, total_steps: int) -> float:
    """Value at ``step`` of a linear ramp from ``start`` (step 0) to ``end`` (last step)."""
    if end is None or total_steps <= 1:
        return start
    frac = min(max(step / (total_steps - 1), 0.0), 1.0)
    return start + (end - start) * frac


class Term(BaseModel):
    """Fields every term has: which loss, its name in the logs, its weight (optionally scheduled)."""

    model_config = ConfigDict(extra="forbid")

    #: the registry group of this term's losses (``unikd.losses.REGISTRY``) and its default loss
    group: ClassVar[str]
    default_loss: ClassVar[str]
    layered: ClassVar[bool] = False

    knowledge: str
    loss: str | None = Field(
        None,
        description="Loss name; the default depends on the knowledge type (see "
        "unikd.losses.REGISTRY for every loss of each group).",
    )
    name: str | None = Field(
        None,
        description="Label in the logs, and the key of this term's projections in "
        "checkpoints; default '<knowledge>_<loss>'. Give two terms with projections that "
        "would share a name their own names.",
    )
    weight: float = Field(1.0, ge=0, description="Weight of this term at step 0.")
    weight_end: float | None = Field(None, ge=0, description="Weight at the last step (linear schedule).")

    @model_validator(mode="before")
    @classmethod
    def _stored(cls, data: Any, info: ValidationInfo) -> Any:
        """A stored config written before one class per knowledge type lists every flat field on every term:
        drop the ones this class does not have where they hold the old default (they meant nothing)."""
        if isinstance(data, dict) and (info.context or {}).get("stored_config"):
            data = drop_flat_term_leftovers(data, cls.model_fields)
        return data

    @model_validator(mode="after")
    def _defaults(self):
        if self.loss is None:
            self.loss = self.default_loss
        if self.name is None:
            self.name = f"{self.knowledge}_{self.loss}"
        return self

    # ---- what the plan calls -----------------------------------------------------------------------
    @property
    def spec(self) -> L.LossSpec:
        """The registered loss (raises ConfigError naming ``loss`` when it is unknown)."""
        return L.loss_spec(self.group, self.loss, "loss")

    def check_loss(self, field: str) -> L.LossSpec:
        return L.loss_spec(self.group, self.loss, f"{field}.loss")

    def validate_shapes(
        self, teacher: ModelSpec, student: ModelSpec, field: str, *, token_level_logits: bool = False
    ) -> None:
        """Raise ``ConfigError`` naming ``<field>.<name>`` if this term cannot work on these shapes."""
        self.check_loss(field)

    @property
    def is_dynamic(self) -> bool:
        """True when the pairs change from step to step (random matching)."""
        return False

    def pairs(self, teacher: ModelSpec, student: ModelSpec, generator: torch.Generator | None, field: str) -> Pairs:
        return []

    def requests(self, pairs: Pairs, teacher: CaptureRequest, student: CaptureRequest) -> None:
        raise NotImplementedError

    def projection_keys(self, teacher: ModelSpec, student: ModelSpec, pairs: Pairs) -> list[str]:
        return []

    def compute(self, ctx: StepContext, pairs: Pairs) -> Tensor:
        raise NotImplementedError


Matching = str | list[tuple[int, int]]


class LayeredTerm(Term):
    """A term between matched layers: the matching fields, and the reduction over the pairs."""

    layered: ClassVar[bool] = True

    matching: Matching = Field(
        "uniform",
        description="Layer matching: first, firstK, last, lastK, uniform/skip, pair, random, "
        "or explicit [[teacher, student], ...] (negative indices allowed).",
    )
    k: int | None = Field(None, ge=1, description="K for firstK / lastK.")
    teacher_layer: int | None = Field(None, description="Teacher layer for matching 'pair' (negative ok).")
    student_layer: int | None = Field(None, description="Student layer for matching 'pair' (negative ok).")
    layer_reduction: Literal["mean", "sum"] = Field(
        "mean", description="Combine the per-pair losses by mean or sum (TinyBERT sums)."
    )

    @property
    def is_dynamic(self) -> bool:
        return is_dynamic(self.matching)

    def pairs(self, teacher: ModelSpec, student: ModelSpec, generator: torch.Generator | None, field: str) -> Pairs:
        where = f"{field}.matching"
        try:
            return resolve_matching(
                self.matching,
                teacher.num_layers,
                student.num_layers,
                k=self.k,
                teacher_layer=self.teacher_layer,
                student_layer=self.student_layer,
                generator=generator,
                field=where,
            )
        except ConfigError as e:
            # matching.py names teacher_layer/student_layer/k under the strategy ("...matching.k"); in a term
            # they are siblings of `matching`, so name the field the user actually writes.
            for sibling in _MATCHING_SIBLINGS:
                if e.field == f"{where}.{sibling}":
                    raise ConfigError(f"{field}.{sibling}", e.problem, e.fix) from None
            raise

    def validate_shapes(
        self, teacher: ModelSpec, student: ModelSpec, field: str, *, token_level_logits: bool = False
    ) -> None:
        super().validate_shapes(teacher, student, field, token_level_logits=token_level_logits)
        self.pairs(teacher, student, torch.Generator().manual_seed(0), field)

    def pair_list(self, pairs: Pairs) -> list:
        """The pairs ``compute`` loops over (hidden states may add the embedding pair)."""
        return list(pairs)

    def pair_loss(self, ctx: StepContext, t_layer, s_layer) -> Tensor:
        raise NotImplementedError

    def compute(self, ctx: StepContext, pairs: Pairs) -> Tensor:
        values = [self.pair_loss(ctx, t_l, s_l) for t_l, s_l in self.pair_list(pairs)]
        value = torch.stack([torch.as_tensor(v) for v in values]).sum()
        return value / len(values) if self.layer_reduction == "mean" else value
