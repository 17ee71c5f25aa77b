"""Knowledge types: one class per kind of knowledge a term transfers, chosen by its ``knowledge`` field.

==================  =========================  ==========================================================
knowledge           class                      own fields (besides loss, name, weight, weight_end)
==================  =========================  ==========================================================
logits              ``LogitsTerm``             temperature, temperature_end, t2_scaling
embeddings          ``EmbeddingsTerm``         projection, projection_activation
hidden              ``HiddenTerm``             matching fields, include_embeddings, projection, ...
attention           ``AttentionTerm``          matching fields, attention_on, head_reduction
value_relation      ``ValueRelationTerm``      matching fields, relation_heads
relation            ``RelationTerm``           matching fields, relations, relation_heads
==================  =========================  ==========================================================

Matching fields: matching, k, teacher_layer, student_layer, layer_reduction. A field of another knowledge
type (``temperature`` on a hidden term) is a validation error naming it. ``TermSpec`` is the discriminated
union a plan's ``terms`` list holds; ``term_config(**fields)`` builds the right class from a mapping.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from unikd.knowledge.attention import AttentionTerm
from unikd.compat import STORED
from unikd.knowledge.base import AttentionBook, LayeredTerm, Pairs, StepContext, Term, linear_schedule
from unikd.knowledge.hidden import EmbeddingsTerm, HiddenTerm
from unikd.knowledge.logits import LogitsTerm
from unikd.knowledge.relation import RelationTerm, ValueRelationTerm

TERM_CLASSES: dict[str, type[Term]] = {
    "logits": LogitsTerm,
    "embeddings": EmbeddingsTerm,
    "hidden": HiddenTerm,
    "attention": AttentionTerm,
    "value_relation": ValueRelationTerm,
    "relation": RelationTerm,
}

TermSpec = Annotated[
    Union[LogitsTerm, EmbeddingsTerm, HiddenTerm, AttentionTerm, ValueRelationTerm, RelationTerm],
    Field(discriminator="knowledge"),
]
_ADAPTER = TypeAdapter(TermSpec)


def term_config(**fields: Any) -> Term:
    """The term class of ``fields['knowledge']`` validated from ``fields`` (pydantic ValidationError if bad)."""
    return _ADAPTER.validate_python(fields)


def term_fields(knowledge: str) -> list[str]:
    """The fields a term of this knowledge type takes."""
    return sorted(TERM_CLASSES[knowledge].model_fields)


def owners_of(field: str) -> list[str]:
    """The knowledge types that have ``field``."""
    return [k for k, cls in TERM_CLASSES.items() if field in cls.model_fields]


__all__ = [
    "STORED",
    "TERM_CLASSES",
    "AttentionBook",
    "AttentionTerm",
    "EmbeddingsTerm",
    "HiddenTerm",
    "LayeredTerm",
    "LogitsTerm",
    "Pairs",
    "RelationTerm",
    "StepContext",
    "Term",
    "term_config",
    "TermSpec",
    "ValueRelationTerm",
    "linear_schedule",
    "owners_of",
    "term_fields",
]
