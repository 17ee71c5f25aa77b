"""The distillation objective: a typed plan of terms, each of one knowledge type (``unikd.knowledge``).

A plan is validated against the teacher's and student's shapes when it is built, before any forward
pass, so a bad config fails in milliseconds with an error that names its field. At train time it tells
the capture hooks what to record (``requests``), draws the step's layer pairs (``pairs_at``) and turns
captured features into one loss (``forward``: the weighted sum of the terms' values, plus the hard-label
loss). It owns the learned projections (student -> teacher width), keyed by the term's name, never by its
position, so inserting a term leaves every other term's projections where a checkpoint has them.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from unikd import losses as L
from unikd.capture import CaptureRequest, Features
from unikd.compat import upgrade_projection_keys
from unikd.errors import ConfigError
from unikd.families import ModelSpec
from unikd.knowledge import (
    STORED,
    AttentionBook,
    AttentionTerm,
    StepContext,
    Term,
    term_config,
    TermSpec,
    linear_schedule,
)
from unikd.generation import SamplingConfig
from unikd.knowledge.base import Pairs

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
_RESERVED_LOGS = ("hard", "total")


class PlanConfig(BaseModel):
    """The whole objective: distillation terms plus the hard-label loss."""

    model_config = ConfigDict(extra="forbid")

    terms: list[TermSpec] = Field(
        default_factory=list,
        description="Distillation terms, summed with their "
        "weights. Each entry's fields depend on its 'knowledge' (see unikd.knowledge).",
    )
    hard_label_weight: float = Field(1.0, ge=0, description="Weight of the student's own task/LM loss.")
    hard_label_weight_end: float | None = Field(None, ge=0, description="Hard-label weight at the last step (linear).")
    seed: int = Field(
        0, description="Seed for 'random' layer matching; draws depend on (seed, step) so runs resume exactly."
    )
    pseudo_labels: bool = Field(
        False,
        description="task stage: train transfer rows (data.transfer) on the teacher's predictions as hard labels "
        "(argmax; regression: its value) - with plan.terms=[] the pseudo-labelling baseline that separates a KD "
        "gain from a more-data gain.",
    )
    policy: Literal["off_policy", "sequence_kd", "on_policy"] = Field(
        "off_policy",
        description="causal-lm data: whose responses the batches hold. off_policy: the dataset's; sequence_kd: the "
        "teacher's generations in their place (made once, reused by content: unikd generate); on_policy: at a share "
        "plan.on_policy_lambda of the steps the student's own samples of the prompts (GKD); the teacher scores "
        "whichever tokens the batch holds.",
    )
    on_policy_lambda: float = Field(
        0.5, ge=0, le=1, description="on_policy: the share of steps whose responses the student samples (GKD's λ)."
    )
    generations: str | None = Field(
        None,
        description="sequence_kd: the teacher's generations written by unikd generate (default: made by the run "
        "itself under $UNIKD_CACHE/generations, keyed by teacher, tokenizer, prompts and sampling).",
    )
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=1.0),
        description="on_policy / sequence_kd: how the student's samples (or the teacher's generations) are drawn.",
    )


def _matching_label(term: Term) -> str:
    """A module-name-safe label of a term's matching (to tell apart two terms of the same name)."""
    m = term.matching
    if isinstance(m, str):
        if m.lower() == "pair":
            return f"pair{term.teacher_layer}to{term.student_layer}"
        return m + (str(term.k) if term.k else "")
    return "pairs" + "_".join(f"{t}to{s}" for t, s in m)


class DistillationPlan(nn.Module):
    """Validated objective + the learned projections it owns (trained with the student, never exported)."""

    def __init__(
        self,
        config: PlanConfig,
        teacher: ModelSpec,
        student: ModelSpec,
        *,
        token_level_logits: bool = False,
        field: str = "plan",
        logits_chunk: int | None = None,
        shared_vocab: int | None = None,
    ):
        super().__init__()
        self.config = config
        self.logits_chunk = logits_chunk  # token-level divergences over chunks of this many rows (unikd.chunked)
        self.shared_vocab = shared_vocab  # padded embeddings over one tokenizer: logits cropped to it (unikd.vocab)
        self.teacher = teacher
        self.student = student
        self.token_level_logits = token_level_logits
        self.field = field
        self.projections = nn.ModuleDict()
        self._static_pairs: dict[int, Pairs] = {}
        self.term_keys = self._term_keys()
        for i, term in enumerate(config.terms):
            self._validate_term(i, term)
        self.register_load_state_dict_pre_hook(self._upgrade_legacy_keys)

    # ---- validation ---------------------------------------------------------------------------
    def _f(self, i: int, name: str | None = None) -> str:
        return f"{self.field}.terms[{i}]" + (f".{name}" if name else "")

    def _term_keys(self) -> list[str]:
        """Each term's projection key: its name; where names repeat, the name and the matching."""
        names = [t.name for t in self.config.terms]
        keys = [
            n if names.count(n) == 1 or not t.layered else f"{n}_{_matching_label(t)}"
            for n, t in zip(names, self.config.terms)
        ]
        return keys

    def _validate_term(self, i: int, term: Term) -> None:
        term.check_loss(self._f(i))
        if term.name in _RESERVED_LOGS:
            raise ConfigError(
                self._f(i, "name"),
                f"{term.name!r} is reserved for the logged {term.name} loss",
                "choose another name, e.g. '<knowledge>_<loss>'",
            )
        term.validate_shapes(
            self.teacher, self.student, self._f(i), token_level_logits=self.token_level_logits and not self.shared_vocab
        )
        pairs = term.pairs(self.teacher, self.student, torch.Generator().manual_seed(0), self._f(i))
        if term.layered and not term.is_dynamic:
            self._static_pairs[i] = pairs
        keys = term.projection_keys(self.teacher, self.student, pairs)
        if keys and self.term_keys.count(self.term_keys[i]) > 1:
            raise ConfigError(
                self._f(i, "name"),
                f"two terms would keep their projections under the name {self.term_keys[i]!r}",
                "give each of these terms its own name:",
            )
        for key in keys:
            layers: list[nn.Module] = [nn.Linear(self.student.hidden_size, self.teacher.hidden_size)]
            if getattr(term, "projection_activation", None):
                layers.append(_ACTIVATIONS[term.projection_activation]())
            self.projections[f"{self.term_keys[i]}:{key}"] = nn.Sequential(*layers)

    def seed_projections(self, seed: int) -> None:
        """Initialize every projection from ``(seed, its key)`` alone, whatever else ran in this process.

        ``nn.Linear`` initializes from the global RNG when the plan is built, so a run's projections used to
        depend on what the process had drawn before (a study running its runs one after another, a test suite):
        the same config gave other numbers as a process's first run and as its second. Per-key seeds also keep
        one projection's start independent of the others (a term added elsewhere changes none of them)."""
        for key, module in self.projections.items():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
                for layer in module:
                    if hasattr(layer, "reset_parameters"):
                        layer.reset_parameters()

    def _upgrade_legacy_keys(self, module, state_dict, prefix, *args) -> None:
        """Projections saved as '<term index>_<layer>' load as '<term key>:<layer>' (``unikd.compat``)."""
        upgrade_projection_keys(state_dict, f"{prefix}projections.", self.term_keys)

    @property
    def is_dynamic(self) -> bool:
        """True when some layer pairs change from step to step (random matching)."""
        return any(t.is_dynamic for t in self.config.terms)

    @property
    def has_attention(self) -> bool:
        """True when some term reads attention maps."""
        return any(isinstance(t, AttentionTerm) for t in self.config.terms)

    def _attention_pairs(self, pairs: dict[int, Pairs]) -> Iterator[tuple[int, AttentionTerm, int, int]]:
        """(term index, term, teacher layer, student layer) of every attention-map pair of this step."""
        for i, term in enumerate(self.config.terms):
            if isinstance(term, AttentionTerm):
                for t_l, s_l in pairs[i]:
                    yield i, term, t_l, s_l

    # ---- what to capture ----------------------------------------------------------------------
    def pairs_at(self, step: int) -> dict[int, Pairs]:
        """Layer pairs for every layered term at ``step`` (random matching re-drawn per step).

        All random-matching terms of a plan see the same draw in a step (one generator state per step):
        hidden-state and attention terms then use one RAIL-KD layer subset, and only those layers are
        captured."""
        out = {}
        for i, term in enumerate(self.config.terms):
            if i in self._static_pairs:
                out[i] = self._static_pairs[i]
            elif term.layered:
                gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
                out[i] = term.pairs(self.teacher, self.student, gen, self._f(i))
        return out

    def requests(self, step: int = 0, pairs: dict[int, Pairs] | None = None) -> tuple[CaptureRequest, CaptureRequest]:
        """What the teacher and the student must record at ``step`` (for ``pairs``, default ``pairs_at(step)``)."""
        teacher, student = CaptureRequest(attention_maps=set()), CaptureRequest(attention_maps=set())
        pairs = self.pairs_at(step) if pairs is None else pairs
        for i, term in enumerate(self.config.terms):
            term.requests(pairs.get(i, []), teacher, student)
        return teacher, student

    # ---- the objective ------------------------------------------------------------------------
    def _projector(self, i: int):
        prefix = f"{self.term_keys[i]}:"

        def project(key: str, x: torch.Tensor) -> torch.Tensor:
            proj = self.projections[prefix + key] if prefix + key in self.projections else None
            return proj(x) if proj is not None else x

        return project

    def inline_consumer(
        self,
        teacher: Features,
        attention_mask: torch.Tensor,
        causal: bool,
        sliding_windows: dict[int, int],
        *,
        step: int = 0,
        pairs: dict[int, Pairs] | None = None,
        release_maps: bool = True,
    ):
        """``(callback, values)`` for a student ``FeatureCapture.on_inline``: each attention pair's loss is
        computed the moment the student's layer has run, from the maps it just made, so the student's
        [B, H, L, L] maps are never held (only what the loss saves for backward). ``values`` fills with
        ``(term index, teacher layer, student layer) -> unweighted loss``; pass it to ``forward(precomputed=)``.
        The teacher's maps are released once the last pair has read them (``release_maps``).
        """
        pairs = self.pairs_at(step) if pairs is None else pairs
        jobs: dict[int, list] = {}
        teacher_uses: dict[int, int] = {}
        for i, term, t_l, s_l in self._attention_pairs(pairs):
            jobs.setdefault(s_l, []).append((i, term, t_l))
            teacher_uses[t_l] = teacher_uses.get(t_l, 0) + 1
        valid = L.valid_pairs(attention_mask, causal)
        values: dict[tuple, torch.Tensor] = {}

        def consume(layer: int, scores: torch.Tensor, probs: torch.Tensor) -> bool:
            if layer not in jobs:
                return False
            view = Features(
                attention_mask=attention_mask,
                causal=causal,
                sliding_windows={layer: sliding_windows[layer]} if layer in sliding_windows else {},
                inline_scores={layer: scores},
                inline_probs={layer: probs},
            )
            for i, term, t_l in jobs[layer]:
                values[i, t_l, layer] = term.pair_value(teacher, view, t_l, layer, valid)
                teacher_uses[t_l] -= 1
                if release_maps and teacher_uses[t_l] == 0:
                    teacher.release_attention(t_l)
            return True

        return consume, values

    def _map_uses(self, pairs: dict[int, Pairs]) -> dict[tuple[int, int], int]:
        uses: dict[tuple[int, int], int] = {}  # (side, layer) -> attention pairs still to read it
        for _, _, t_l, s_l in self._attention_pairs(pairs):
            uses[0, t_l] = uses.get((0, t_l), 0) + 1
            uses[1, s_l] = uses.get((1, s_l), 0) + 1
        return uses

    def forward(
        self,
        teacher: Features,
        student: Features,
        *,
        labels: torch.Tensor | None = None,
        hard_loss: torch.Tensor | None = None,
        step: int = 0,
        total_steps: int = 1,
        pairs: dict[int, Pairs] | None = None,
        release_maps: bool = False,
        precomputed: dict | None = None,
        student_head: tuple | None = None,
    ):
        """Total loss and each term's unweighted value (detached tensors, so logging never syncs a GPU).

        ``pairs`` are the layer pairs used for this step's capture (``pairs_at(step)``); passing them
        avoids a second draw for random matching. ``release_maps=True`` (the trainer's choice) drops each
        layer's attention maps from ``teacher``/``student`` once the last attention loss has read them, so
        that only what backward needs stays alive: a lower peak, and those maps are gone from the Features.
        ``precomputed``: the values an ``inline_consumer`` computed during the student's forward (used up).
        ``student_head``: (weight, bias) of the student's output projection when ``student.logits`` holds its
        last hidden states (a fused step, ``train.fused_output_projection``).
        """
        pairs = self.pairs_at(step) if pairs is None else pairs
        book = AttentionBook(
            precomputed=precomputed if precomputed is not None else {},
            uses=self._map_uses(pairs) if release_maps else {},
        )
        ctx = StepContext(
            teacher=teacher,
            student=student,
            teacher_spec=self.teacher,
            student_spec=self.student,
            labels=labels,
            step=step,
            total_steps=total_steps,
            index=0,
            field="",
            project=self._projector(0) if self.config.terms else None,
            attention=book,
            logits_chunk=self.logits_chunk,
            shared_vocab=self.shared_vocab,
            student_head=student_head,
        )
        total = torch.zeros((), device=student.attention_mask.device)
        logs: dict[str, torch.Tensor] = {}
        for i, term in enumerate(self.config.terms):
            ctx.index, ctx.field, ctx.project = i, self._f(i), self._projector(i)
            value = term.compute(ctx, pairs.get(i, []))
            total = total + linear_schedule(term.weight, term.weight_end, step, total_steps) * value
            logs[term.name if term.name not in logs else f"{term.name}_{i}"] = value.detach()
        if hard_loss is not None:
            hard_w = linear_schedule(
                self.config.hard_label_weight, self.config.hard_label_weight_end, step, total_steps
            )
            if hard_w > 0:
                total = total + hard_w * hard_loss
            logs["hard"] = hard_loss.detach()
        logs["total"] = total.detach()
        return total, logs


__all__ = ["STORED", "DistillationPlan", "PlanConfig", "term_config", "linear_schedule"]
