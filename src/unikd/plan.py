"""The distillation objective: a typed plan of terms (knowledge, loss, matching, weight, temperature).

A plan is validated against the teacher's and student's shapes when it is built, before any forward
pass, so a bad config fails in milliseconds with an error that names its field. At train time it tells
the capture hooks what to record (`requests`) and turns captured features into one loss (`forward`).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from unikd import losses as L
from unikd.capture import CaptureRequest, FeatureCapture, Features
from unikd.errors import ConfigError
from unikd.families import ModelSpec
from unikd.matching import is_dynamic, resolve_matching

Knowledge = Literal["logits", "embeddings", "hidden", "attention", "value_relation", "relation"]

DEFAULT_LOSS = {
    "logits": "kl",
    "embeddings": "mse",
    "hidden": "mse",
    "attention": "kl",
    "value_relation": "kl",
    "relation": "kl",
}
LOSS_GROUP = {
    "logits": "logits",
    "embeddings": "hidden",
    "hidden": "hidden",
    "attention": "attention",
    "value_relation": "relation",
    "relation": "relation",
}
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
_LAYERED = ("hidden", "attention", "value_relation", "relation")
_RESERVED_LOGS = ("hard", "total")
_MATCHING_SIBLINGS = ("teacher_layer", "student_layer", "k")


class TermConfig(BaseModel):
    """One term of the objective: what knowledge, which loss, between which layers, how much."""

    model_config = ConfigDict(extra="forbid")

    knowledge: Knowledge = Field(description="What is transferred: logits, embeddings, hidden, attention, "
                                 "value_relation (MiniLM) or relation (MiniLMv2 Q-Q/K-K/V-V).")
    loss: str | None = Field(None, description="Loss name; default per knowledge (logits: kl, hidden: mse, "
                             "attention: kl, relations: kl). See unikd.losses.LOSSES.")
    name: str | None = Field(None, description="Label used in logs; default '<knowledge>_<loss>'.")
    weight: float = Field(1.0, ge=0, description="Weight of this term at step 0.")
    weight_end: float | None = Field(None, ge=0, description="Weight at the last step (linear schedule).")
    temperature: float = Field(1.0, gt=0, description="Softmax temperature for logits terms.")
    temperature_end: float | None = Field(None, gt=0, description="Temperature at the last step (linear).")
    t2_scaling: bool = Field(True, description="Multiply soft CE/KL on logits by T² (Hinton et al.).")
    matching: str | list[tuple[int, int]] = Field(
        "uniform", description="Layer matching: first, firstK, last, lastK, uniform/skip, pair, random, "
        "or explicit [[teacher, student], ...] (negative indices allowed).")
    k: int | None = Field(None, ge=1, description="K for firstK / lastK.")
    teacher_layer: int | None = Field(None, description="Teacher layer for matching 'pair' (negative ok).")
    student_layer: int | None = Field(None, description="Student layer for matching 'pair' (negative ok).")
    include_embeddings: bool = Field(False, description="hidden: also match the embedding outputs (0→0).")
    layer_reduction: Literal["mean", "sum"] = Field(
        "mean", description="Combine the per-pair losses by mean or sum (TinyBERT sums).")
    attention_on: Literal["scores", "probs"] = Field("probs", description="attention: pre-softmax scores or probabilities.")
    head_reduction: Literal["per_head", "sum", "mean"] = Field(
        "per_head", description="attention: compare per head (equal head counts), or the maps summed/averaged over heads.")
    relations: list[Literal["qq", "kk", "vv"]] = Field(
        default_factory=lambda: ["qq", "kk", "vv"], description="relation: which self-relations (MiniLMv2).")
    relation_heads: int | None = Field(
        None, ge=1, description="Relation heads A_r (MiniLMv2); default: the student's attention heads.")
    projection: bool = Field(True, description="Learn a linear student→teacher projection where widths differ.")
    projection_activation: Literal["relu", "gelu", "tanh"] | None = Field(None, description="Activation after the projection.")

    @model_validator(mode="after")
    def _defaults(self):
        if self.loss is None:
            self.loss = DEFAULT_LOSS[self.knowledge]
        if self.name is None:
            self.name = f"{self.knowledge}_{self.loss}"
        return self


class PlanConfig(BaseModel):
    """The whole objective: distillation terms plus the hard-label loss."""

    model_config = ConfigDict(extra="forbid")

    terms: list[TermConfig] = Field(default_factory=list, description="Distillation terms, summed with their weights.")
    hard_label_weight: float = Field(1.0, ge=0, description="Weight of the student's own task/LM loss.")
    hard_label_weight_end: float | None = Field(None, ge=0, description="Hard-label weight at the last step (linear).")
    seed: int = Field(0, description="Seed for 'random' layer matching; draws depend on (seed, step) so runs resume exactly.")


def linear_schedule(start: float, end: float | None, step: int, total_steps: int) -> float:
    """Value at ``step`` of a linear ramp from ``start`` (step 0) to ``end`` (last step)."""
    if end is None or total_steps <= 1:
        return start
    frac = min(max(step / (total_steps - 1), 0.0), 1.0)
    return start + (end - start) * frac


def _heads_flat(x: torch.Tensor) -> torch.Tensor:
    """[B, H, L, d] -> [B, L, H·d]: the concatenation of all heads (MiniLMv2)."""
    b, h, l, d = x.shape
    return x.transpose(1, 2).reshape(b, l, h * d)


class DistillationPlan(nn.Module):
    """Validated objective + the learned projections it owns (trained with the student, never exported)."""

    def __init__(self, config: PlanConfig, teacher: ModelSpec, student: ModelSpec, *,
                 token_level_logits: bool = False, field: str = "plan"):
        super().__init__()
        self.config = config
        self.teacher = teacher
        self.student = student
        self.token_level_logits = token_level_logits
        self.field = field
        self.projections = nn.ModuleDict()
        self._static_pairs: dict[int, list[tuple[int, int]]] = {}
        for i, term in enumerate(config.terms):
            self._validate_term(i, term)

    # ---- validation ---------------------------------------------------------------------------
    def _f(self, i: int, name: str) -> str:
        return f"{self.field}.terms[{i}].{name}"

    def _needs_projection(self, term: TermConfig) -> bool:
        if term.knowledge == "embeddings" or term.knowledge == "hidden":
            return term.loss not in L.WIDTH_FREE_HIDDEN_LOSSES
        return False

    def _validate_term(self, i: int, term: TermConfig) -> None:
        t, s = self.teacher, self.student
        L.get_loss(LOSS_GROUP[term.knowledge], term.loss, self._f(i, "loss"))
        if term.name in _RESERVED_LOGS:
            raise ConfigError(self._f(i, "name"), f"{term.name!r} is reserved for the logged {term.name} loss",
                              "choose another name, e.g. '<knowledge>_<loss>'")
        if term.knowledge == "relation" and not term.relations:
            raise ConfigError(self._f(i, "relations"), "no relation is selected, so the term would always be 0",
                              "list at least one of qq, kk, vv (MiniLMv2 uses all three)")
        pairs = self._pairs(i, term, generator=torch.Generator().manual_seed(0))
        if term.knowledge in _LAYERED and not is_dynamic(term.matching):
            self._static_pairs[i] = pairs
        if self._needs_projection(term) and t.hidden_size != s.hidden_size:
            if not term.projection:
                raise ConfigError(
                    self._f(i, "projection"),
                    f"student width {s.hidden_size} differs from teacher width {t.hidden_size} and the "
                    f"{term.knowledge} loss {term.loss!r} compares vectors element-wise",
                    "set projection: true, or use a width-free loss (gram, nst)")
            self._add_projections(i, term, pairs)
        if term.knowledge == "attention":
            if term.head_reduction == "per_head" and t.num_heads != s.num_heads:
                raise ConfigError(
                    self._f(i, "head_reduction"),
                    f"per-head attention transfer needs equal head counts (teacher {t.num_heads}, student {s.num_heads})",
                    "use head_reduction: mean (or sum), or give the student the teacher's head count")
            if term.head_reduction == "sum" and term.attention_on == "probs" and term.loss in ("kl", "ce"):
                raise ConfigError(
                    self._f(i, "head_reduction"),
                    "probabilities summed over heads are not a distribution, so KL/CE is undefined",
                    "use head_reduction: mean, or attention_on: scores")
        if term.knowledge in ("value_relation", "relation"):
            heads = term.relation_heads or s.num_heads
            rels = ["vv"] if term.knowledge == "value_relation" else term.relations
            for side, spec in (("teacher", t), ("student", s)):
                for rel in rels:
                    width = spec.q_width if rel == "qq" else spec.kv_width
                    if width % heads:
                        raise ConfigError(
                            self._f(i, "relation_heads"),
                            f"{heads} relation heads do not divide the {side}'s {rel[0].upper()} width {width}",
                            "choose relation_heads that divides the Q/K/V width of both models")
        if term.knowledge == "logits" and self.token_level_logits and t.vocab_size != s.vocab_size:
            raise ConfigError(
                self._f(i, "knowledge"),
                f"token-level logits need the same vocabulary (teacher {t.vocab_size}, student {s.vocab_size})",
                "build the student from the teacher's config/tokenizer, or drop the logits term")

    def _pairs(self, i: int, term: TermConfig, generator: torch.Generator | None = None) -> list[tuple[int, int]]:
        if term.knowledge not in _LAYERED:
            return []
        if i in self._static_pairs:
            return self._static_pairs[i]
        field = self._f(i, "matching")
        try:
            return resolve_matching(term.matching, self.teacher.num_layers, self.student.num_layers,
                                    k=term.k, teacher_layer=term.teacher_layer, student_layer=term.student_layer,
                                    generator=generator, field=field)
        except ConfigError as e:
            # matching.py names teacher_layer/student_layer/k under the strategy ("...matching.k"); in a
            # TermConfig they are siblings of `matching`, so name the field the user actually writes.
            for sibling in _MATCHING_SIBLINGS:
                if e.field == f"{field}.{sibling}":
                    raise ConfigError(self._f(i, sibling), e.problem, e.fix) from None
            raise

    def _add_projections(self, i: int, term: TermConfig, pairs: list[tuple[int, int]]) -> None:
        # One projection per student layer: with random matching the teacher layer changes per step,
        # the student side does not.
        keys = ["emb"] if term.knowledge == "embeddings" else [str(s) for _, s in pairs]
        if term.knowledge == "hidden" and is_dynamic(term.matching):
            keys = [str(s) for s in range(self.student.num_layers)]
        if term.knowledge == "hidden" and term.include_embeddings:
            keys.append("emb")
        if term.loss == "fsp":  # FSP also projects each block's input (the previous hidden state)
            keys += [str(int(k) - 1) if k not in ("emb", "0") else "emb" for k in keys]
        for key in dict.fromkeys(keys):
            layers: list[nn.Module] = [nn.Linear(self.student.hidden_size, self.teacher.hidden_size)]
            if term.projection_activation:
                layers.append(_ACTIVATIONS[term.projection_activation]())
            self.projections[f"{i}_{key}"] = nn.Sequential(*layers)

    @property
    def is_dynamic(self) -> bool:
        """True when some layer pairs change from step to step (random matching)."""
        return any(t.knowledge in _LAYERED and is_dynamic(t.matching) for t in self.config.terms)

    @property
    def has_attention(self) -> bool:
        """True when some term reads attention maps."""
        return any(t.knowledge == "attention" for t in self.config.terms)

    def _attention_pairs(self, pairs: dict[int, list[tuple[int, int]]]):
        """(term index, term, teacher layer, student layer) of every attention-map pair of this step."""
        for i, term in enumerate(self.config.terms):
            if term.knowledge == "attention":
                for t_l, s_l in pairs[i]:
                    yield i, term, t_l, s_l

    # ---- what to capture ----------------------------------------------------------------------
    def pairs_at(self, step: int) -> dict[int, list[tuple[int, int]]]:
        """Layer pairs for every layered term at ``step`` (random matching re-drawn per step).

        All random-matching terms of a plan see the same draw in a step (one generator state per step):
        hidden-state and attention terms then use one RAIL-KD layer subset, and only those layers are
        captured."""
        out = {}
        for i, term in enumerate(self.config.terms):
            if term.knowledge in _LAYERED:
                gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
                out[i] = self._pairs(i, term, generator=gen)
        return out

    def requests(self, step: int = 0) -> tuple[CaptureRequest, CaptureRequest]:
        """What the teacher and the student must record at ``step``."""
        teacher, student = CaptureRequest(attention_maps=set()), CaptureRequest(attention_maps=set())
        pairs = self.pairs_at(step)
        for i, term in enumerate(self.config.terms):
            for req, idx in ((teacher, 0), (student, 1)):
                layers = {p[idx] for p in pairs.get(i, [])}
                if term.knowledge == "embeddings" or (term.knowledge == "hidden" and term.include_embeddings):
                    req.embeddings = True
                if term.knowledge == "hidden":
                    req.hidden |= layers
                    if term.loss == "fsp":
                        req.hidden |= {l - 1 for l in layers if l > 0}
                        req.embeddings = req.embeddings or 0 in layers
                elif term.knowledge == "attention":
                    req.attention |= layers
                    req.attention_maps.add(term.attention_on)
                elif term.knowledge in ("value_relation", "relation"):
                    req.qkv |= layers
        return teacher, student

    # ---- the objective ------------------------------------------------------------------------
    def _project(self, i: int, key: str, x: torch.Tensor) -> torch.Tensor:
        proj = self.projections[f"{i}_{key}"] if f"{i}_{key}" in self.projections else None
        return proj(x) if proj is not None else x

    def _hidden_pair(self, i, term, tf: Features, sf: Features, t_l, s_l, mask):
        """Loss between teacher layer t_l and student layer s_l ('emb' = embedding output)."""
        def get(f: Features, l):
            return f.embeddings if l == "emb" else f.hidden[l]

        fn = L.get_loss("hidden", term.loss)
        s_key = "emb" if s_l == "emb" else str(s_l)
        if term.loss == "fsp":
            prev = lambda l: "emb" if l in ("emb", 0) else l - 1  # noqa: E731
            s_in_key = "emb" if prev(s_l) == "emb" else str(prev(s_l))
            return fn(self._project(i, s_in_key, get(sf, prev(s_l))), self._project(i, s_key, get(sf, s_l)),
                      get(tf, prev(t_l)), get(tf, t_l), mask)
        return fn(self._project(i, s_key, get(sf, s_l)), get(tf, t_l), mask)

    @staticmethod
    def _window_valid(valid: torch.Tensor, tf: Features, sf: Features, t_l: int, s_l: int) -> torch.Tensor:
        """``valid`` restricted to the keys inside the sliding window of either side's layer (Mistral, Qwen2).

        Keys outside a window hold ``finfo.min`` scores; left in, a head mean turns them into -inf - -inf = NaN.
        """
        windows = [w for w in (getattr(tf, "sliding_windows", {}).get(t_l), getattr(sf, "sliding_windows", {}).get(s_l))
                   if w is not None]
        if not windows:
            return valid
        pos = torch.arange(valid.shape[-1], device=valid.device)
        return valid & (pos[None, :] > pos[:, None] - min(windows))

    def _attention_pair(self, term, tf: Features, sf: Features, t_l, s_l, valid):
        valid = self._window_valid(valid, tf, sf, t_l, s_l)
        # Scores go unmasked: every attention loss (and masked_softmax) selects the valid pairs itself.
        get = (lambda f, l: f.attention_scores(l, masked=False)) if term.attention_on == "scores" \
            else (lambda f, l: f.attention_probs(l))
        s_map = L.reduce_heads(get(sf, s_l), term.head_reduction)
        t_map = L.reduce_heads(get(tf, t_l), term.head_reduction)
        if term.loss == "mse":
            return L.attention_mse(s_map, t_map, valid)
        if term.attention_on == "scores":
            s_map, t_map = L.masked_softmax(s_map, valid), L.masked_softmax(t_map, valid)
        return L.get_loss("attention", term.loss)(s_map, t_map, valid)

    def _relation_pair(self, term, tf: Features, sf: Features, t_l, s_l, mask):
        heads = term.relation_heads or self.student.num_heads
        rels = ["vv"] if term.knowledge == "value_relation" else term.relations
        total = 0.0
        for rel in rels:
            attr = rel[0]
            s_x = _heads_flat(getattr(sf, attr)[s_l])
            t_x = _heads_flat(getattr(tf, attr)[t_l])
            total = total + L.relation_kl(s_x, t_x, heads, mask, causal=sf.causal)
        return total

    def _logits_term(self, i, term, tf: Features, sf: Features, labels, temperature):
        s, t = sf.logits, tf.logits
        if s.shape[-1] != t.shape[-1]:
            raise ConfigError(
                self._f(i, "knowledge"),
                f"teacher logits have {t.shape[-1]} classes but the student's have {s.shape[-1]}",
                "give the student the teacher's num_labels (build it from the teacher's config)")
        mask = None
        if s.dim() == 3:
            if labels is not None and labels.dim() == 2:
                mask = (labels != -100).long()
            else:
                mask = sf.attention_mask
        if term.loss in ("kl", "soft_ce") and s.shape[-1] == 1:
            # A regression head (STS-B) has one output: a softmax over it is constant, so the
            # distribution losses would be identically zero. Match the predicted values instead.
            return L.logits_mse(s, t, mask=mask)
        fn = L.get_loss("logits", term.loss)
        if term.loss in ("kl", "soft_ce"):
            return fn(s, t, temperature=temperature, mask=mask, t2_scaling=term.t2_scaling)
        return fn(s, t, mask=mask)

    def inline_consumer(self, teacher: Features, attention_mask: torch.Tensor, causal: bool,
                        sliding_windows: dict[int, int], *, step: int = 0,
                        pairs: dict[int, list[tuple[int, int]]] | None = None, release_maps: bool = True):
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
            view = Features(None, {}, {}, {}, {}, None, attention_mask, causal, {}, None,
                            sliding_windows={layer: sliding_windows[layer]} if layer in sliding_windows else {},
                            inline_scores={layer: scores}, inline_probs={layer: probs})
            for i, term, t_l in jobs[layer]:
                values[i, t_l, layer] = self._attention_pair(term, teacher, view, t_l, layer, valid)
                teacher_uses[t_l] -= 1
                if release_maps and teacher_uses[t_l] == 0:
                    teacher.release_attention(t_l)
            return True

        return consume, values

    def capture_student(self, capture: FeatureCapture, batch: dict, teacher: Features, *, step: int = 0,
                        pairs: dict[int, list[tuple[int, int]]] | None = None) -> tuple[Features, dict | None]:
        """Run the student's capture for this step; ``(features, precomputed)`` for ``forward``.

        Where the capture records attention inline, each attention loss is taken while its student layer runs
        (``inline_consumer`` on ``capture.on_inline``); elsewhere ``precomputed`` stays empty.
        """
        if not self.has_attention:
            return capture(batch), None
        capture.on_inline, precomputed = self.inline_consumer(
            teacher, capture.mask_of(batch), capture.causal, capture.sliding_windows, step=step, pairs=pairs)
        try:
            return capture(batch), precomputed
        finally:
            capture.on_inline = None

    def forward(self, teacher: Features, student: Features, *, labels: torch.Tensor | None = None,
                hard_loss: torch.Tensor | None = None, step: int = 0, total_steps: int = 1,
                pairs: dict[int, list[tuple[int, int]]] | None = None, release_maps: bool = False,
                precomputed: dict | None = None):
        """Total loss and each term's unweighted value (detached tensors, so logging never syncs a GPU).

        ``pairs`` are the layer pairs used for this step's capture (``pairs_at(step)``); passing them
        avoids a second draw for random matching. ``release_maps=True`` (the trainer's choice) drops each
        layer's attention maps from ``teacher``/``student`` once the last attention loss has read them, so
        that only what backward needs stays alive: a lower peak, and those maps are gone from the Features.
        ``precomputed``: the values an ``inline_consumer`` computed during the student's forward.
        """
        pairs = self.pairs_at(step) if pairs is None else pairs
        uses = {}  # (side, layer) -> attention pairs still to read it
        if release_maps:
            for _, _, t_l, s_l in self._attention_pairs(pairs):
                uses[0, t_l] = uses.get((0, t_l), 0) + 1
                uses[1, s_l] = uses.get((1, s_l), 0) + 1
        mask = student.attention_mask
        valid = L.valid_pairs(mask, student.causal)
        total = torch.zeros((), device=mask.device)
        logs: dict[str, torch.Tensor] = {}
        for i, term in enumerate(self.config.terms):
            weight = linear_schedule(term.weight, term.weight_end, step, total_steps)
            if term.knowledge == "logits":
                temperature = linear_schedule(term.temperature, term.temperature_end, step, total_steps)
                value = self._logits_term(i, term, teacher, student, labels, temperature)
            elif term.knowledge == "embeddings":
                value = self._hidden_pair(i, term, teacher, student, "emb", "emb", mask)
            else:
                term_pairs = list(pairs[i])
                if term.knowledge == "hidden" and term.include_embeddings:
                    term_pairs = [("emb", "emb")] + term_pairs
                values = []
                for t_l, s_l in term_pairs:
                    if term.knowledge == "hidden":
                        values.append(self._hidden_pair(i, term, teacher, student, t_l, s_l, mask))
                    elif term.knowledge == "attention":
                        if precomputed and (i, t_l, s_l) in precomputed:
                            values.append(precomputed.pop((i, t_l, s_l)))
                            continue
                        values.append(self._attention_pair(term, teacher, student, t_l, s_l, valid))
                        for side, features, layer in ((0, teacher, t_l), (1, student, s_l)) if uses else ():
                            uses[side, layer] -= 1
                            if uses[side, layer] == 0:
                                features.release_attention(layer)
                    else:
                        values.append(self._relation_pair(term, teacher, student, t_l, s_l, mask))
                value = torch.stack([torch.as_tensor(v) for v in values]).sum()
                if term.layer_reduction == "mean":
                    value = value / len(values)
            total = total + weight * value
            key = term.name if term.name not in logs else f"{term.name}_{i}"
            logs[key] = value.detach()
        if hard_loss is not None:
            hard_w = linear_schedule(self.config.hard_label_weight, self.config.hard_label_weight_end, step, total_steps)
            if hard_w > 0:
                total = total + hard_w * hard_loss
            logs["hard"] = hard_loss.detach()
        logs["total"] = total.detach()
        return total, logs
