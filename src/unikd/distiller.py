"""One knowledge-distillation step, written once: the training loop, evaluation and the benchmark call it.

``Distiller(plan, teacher, student)`` owns the plan, the two feature captures and the per-step layer-pair
draw::

    distiller = Distiller(plan, teacher, student, attention="auto")
    loss, logs = distiller.step(batch, step=step, total_steps=total)   # then loss.backward()
    eval_loss = distiller.evaluate_loss(batch)
    distiller.remove()                                                 # hooks off, models restored

What one ``step`` does, in order:

0. on-policy KD (``policy``, causal-LM data): at its share of the steps the batch's responses become the student's
   own samples (``unikd.generation.OnPolicy``), scored by the teacher, with no hard-label loss;
1. random matching: draw this step's pairs once (from ``(plan.seed, step)``) and point both captures at
   the layers they name;
2. the teacher's features: from ``teacher_cache`` (logits-only plans, after the first epoch) or a capture
   under ``inference_mode`` (optionally autocast to ``teacher_dtype``);
3. the student's features; where attention is captured inline each attention loss is taken the moment its
   student layer has run (``DistillationPlan.inline_consumer``), so the student's maps are never held;
4. ``plan(...)``: the weighted terms plus the hard-label loss, each map released after its last reader.

``plan=None`` is fine-tuning (the no-KD baseline, the teacher itself): the student's own loss. Under DDP
the hooks sit on the bare models and the calls go through the wrapped ones: pass ``wrapped_student`` (the
wrapped student) and ``wrapped_plan`` (the wrapped plan, when it has projections to synchronize).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from unikd.capture import FeatureCapture, Features
from unikd.chunked import fused_linear_cross_entropy
from unikd.plan import DistillationPlan


def hard_label_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    labelled: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    pseudo_labels: bool = False,
) -> torch.Tensor:
    """The student's task loss over the labelled rows of a batch that mixes in transfer rows.

    logits [B, C] ([B, 1]: regression), labels [B], labelled [B] (1/0). With ``pseudo_labels`` the transfer rows
    count too, with the teacher's prediction (argmax; regression: its value) as their label. Mean over the rows
    that count (0 when none does: a batch of transfer rows alone); cross-entropy, or squared error for
    regression, as the model's own loss is on a batch of labelled rows only."""
    weight = labelled.to(torch.float32)
    if pseudo_labels:
        teacher_labels = teacher_logits.squeeze(-1) if logits.shape[-1] == 1 else teacher_logits.argmax(-1)
        labels = torch.where(labelled.bool(), labels, teacher_labels.to(labels.dtype))
        weight = torch.ones_like(weight)
    if logits.shape[-1] == 1:  # regression (STS-B)
        rows = (logits.squeeze(-1).float() - labels.float()) ** 2
    else:
        rows = torch.nn.functional.cross_entropy(logits.float(), labels.long(), reduction="none")
    return (rows * weight).sum() / weight.sum().clamp_min(1)


@contextlib.contextmanager
def output_projection_skipped(model: nn.Module) -> Iterator[nn.Module]:
    """For the forwards inside, ``model``'s output projection (``get_output_embeddings()``, the lm_head) returns its
    input: the model's ``logits`` are its last hidden states [B, L, d] and the [B, L, V] logits are never made.
    Yields the projection (its weight and bias are what the fused losses apply per chunk)."""
    head = getattr(model, "module", model).get_output_embeddings()  # (a DDP-wrapped model: its module's)
    if head is None or not hasattr(head, "weight"):
        raise ValueError("train.fused_output_projection: the student has no output projection (lm_head) to fuse")
    head.forward = _passthrough  # the instance attribute shadows the class's forward
    try:
        yield head
    finally:
        del head.forward


def _passthrough(hidden: torch.Tensor) -> torch.Tensor:
    return hidden


def next_token_loss(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module, chunk: int) -> torch.Tensor:
    """The causal LM's own loss (cross-entropy of position i's prediction to token i + 1, mean over the labelled
    tokens, as HF's ``ForCausalLMLoss``) from the last hidden states [B, L, d] and the output projection, fused."""
    targets = labels[:, 1:]
    keep = targets != -100
    return fused_linear_cross_entropy(hidden[:, :-1][keep], head.weight, head.bias, targets[keep], chunk=chunk)


#: batch columns that describe rows for the loop (teacher-cache row ids, labelled/transfer flags), never model inputs
ROW_COLUMNS = ("idx", "labelled", "prompt_length")


def model_inputs(batch: dict) -> dict:
    """``batch`` without the ROW_COLUMNS: what the teacher and student are called with."""
    return {k: v for k, v in batch.items() if k not in ROW_COLUMNS}


class Distiller:
    """The plan, both captures and the per-step pair draw (see the module docstring)."""

    def __init__(
        self,
        plan: DistillationPlan | None,
        teacher: nn.Module | None,
        student: nn.Module,
        *,
        attention: str = "auto",
        teacher_dtype: torch.dtype | None = None,
        teacher_cache=None,
        wrapped_student: Callable | None = None,
        wrapped_plan: Callable | None = None,
        policy=None,
        fused_chunk: int | None = None,
    ):
        self.plan = plan
        # train.fused_output_projection (decoders): the student's lm_head applied per chunk of this many tokens
        # inside the losses (unikd.chunked), so its [tokens, V] logits are never stored
        self.fused_chunk = fused_chunk
        self.wrapped_plan = wrapped_plan or plan
        self.student = student
        self.wrapped_student = wrapped_student or student
        self.teacher_dtype = teacher_dtype
        self.cache = teacher_cache
        self.policy = policy  # unikd.generation.OnPolicy: some steps' responses are the student's own samples
        self.teacher_capture = self.student_capture = None
        if plan is not None:
            teacher_req, student_req = plan.requests(0)
            self.teacher_capture = FeatureCapture(teacher, teacher_req, attention=attention)
            self.student_capture = FeatureCapture(student, student_req, attention=attention)
            self.student_capture.forward_fn = self.wrapped_student  # the wrapped model, so gradients synchronize

    # ---- features ---------------------------------------------------------------------------------------
    def _pairs(self, step: int) -> dict | None:
        """This step's pairs under random matching (captures re-pointed), else None (the plan's static pairs)."""
        if not self.plan.is_dynamic:
            return None
        pairs = self.plan.pairs_at(step)
        teacher_req, student_req = self.plan.requests(step, pairs)
        self.teacher_capture.set_request(teacher_req)
        self.student_capture.set_request(student_req)
        return pairs

    def capture_teacher(self, batch: dict, idx: torch.Tensor | None = None) -> Features:
        """The teacher's features for ``batch``: cached rows ``idx`` when every one is stored, else a forward
        (stored for next time; a batch without row ids is never cached)."""
        cache = self.cache if idx is not None else None
        features = cache.lookup(idx, batch) if cache is not None else None
        if features is None:
            features = self._teacher_features(batch)
            if cache is not None:
                cache.store(idx, features, batch)
        return features

    def fill_cache(self, batch: dict, idx: torch.Tensor) -> None:
        """The teacher pass's call (``unikd.teacher_cache.teacher_pass``): the teacher's outputs of rows ``idx``
        into the cache, as inference tensors (nothing here is saved for backward, so they are not copied out)."""
        self.cache.store(idx, self._teacher_features(batch, copy_out=False), batch)

    def _teacher_features(self, batch: dict, copy_out: bool = True) -> Features:
        """The teacher's capture of ``batch`` without its labels: the teacher's own loss is never read, and a
        decoder's costs ~2% of its forward."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.teacher_capture(inputs, teacher=True, autocast_dtype=self.teacher_dtype, copy_out=copy_out)

    def capture_student(
        self, batch: dict, teacher: Features, *, step: int = 0, pairs: dict | None = None
    ) -> tuple[Features, dict | None]:
        """Run the student's capture; ``(features, precomputed)`` for ``plan(..., precomputed=)``.

        Where the capture records attention inline, each attention loss is taken while its student layer runs
        (``plan.inline_consumer`` on ``capture.on_inline``); elsewhere ``precomputed`` stays empty."""
        capture = self.student_capture
        if not self.plan.has_attention:
            return capture(batch), None
        capture.on_inline, precomputed = self.plan.inline_consumer(
            teacher, capture.mask_of(batch), capture.causal, capture.sliding_windows, step=step, pairs=pairs
        )
        try:
            return capture(batch), precomputed
        finally:
            capture.on_inline = None

    # ---- the step -----------------------------------------------------------------------------------
    def step(self, batch: dict, *, step: int = 0, total_steps: int = 1) -> tuple[torch.Tensor, dict]:
        """The loss to back-propagate for ``batch`` at ``step`` and each term's detached value.

        ``batch`` may carry ``idx`` (row ids for the teacher cache) and ``labelled`` (1 = a labelled row,
        0 = a transfer row: no hard-label loss, or the teacher's label with ``plan.pseudo_labels``); neither is
        passed to the models."""
        idx, labelled = batch.get("idx"), batch.get("labelled")
        on_policy = self.policy is not None and self.policy.due(step)
        if on_policy:  # the student's samples replace the responses: nothing to cache, no labels to learn
            batch, idx = self.policy.batch(self.student, batch, step), None
        batch = model_inputs(batch)
        if self.plan is None:  # (an extractive-QA batch's context_mask is for the logits KD only)
            loss = self.wrapped_student(**{k: v for k, v in batch.items() if k != "context_mask"}).loss
            return loss, {"hard": loss.detach(), "total": loss.detach()}
        pairs = self._pairs(step)
        teacher = self.capture_teacher(batch, idx)
        head = None
        if self.fused_chunk:
            student, precomputed, hard, head = self._fused_student(batch, teacher, on_policy, step, pairs)
        else:
            student, precomputed = self.capture_student(batch, teacher, step=step, pairs=pairs)
            hard = None if on_policy else getattr(student.output, "loss", None)
        if labelled is not None and hard is not None and head is None:
            hard = hard_label_loss(
                student.logits, batch["labels"], labelled, teacher.logits, pseudo_labels=self.plan.config.pseudo_labels
            )
        return self.wrapped_plan(
            teacher,
            student,
            labels=batch.get("labels"),
            hard_loss=hard,
            step=step,
            total_steps=total_steps,
            pairs=pairs,
            release_maps=True,
            precomputed=precomputed,
            student_head=None if head is None else (head.weight, head.bias),
        )

    def _fused_student(self, batch: dict, teacher: Features, on_policy: bool, step: int, pairs):
        """The student's side of a step with its output projection fused into the losses: it runs without labels
        and with its lm_head skipped (its ``logits`` are its last hidden states), and the next-token loss applies
        the lm_head per chunk. (features, precomputed, hard-label loss or None, the lm_head)."""
        labels = batch.get("labels")
        student_inputs = {k: v for k, v in batch.items() if k != "labels"}
        with output_projection_skipped(self.student) as head:
            student, precomputed = self.capture_student(student_inputs, teacher, step=step, pairs=pairs)
        hard = None
        if labels is not None and not on_policy:
            hard = next_token_loss(student.logits, labels, head, self.fused_chunk)
        return student, precomputed, hard, head

    @torch.no_grad()
    def evaluate_loss(self, batch: dict) -> torch.Tensor:
        """The objective on a held-out batch (general stage): the plan's total, or the LM loss without a plan."""
        batch = model_inputs(batch)
        if self.plan is None:
            return self.wrapped_student(**batch).loss
        pairs = self._pairs(0)  # random matching: step 0's draw, the same for every evaluation
        teacher = self.teacher_capture(batch, teacher=True, autocast_dtype=self.teacher_dtype)
        student = self.student_capture(batch)
        loss, _ = self.wrapped_plan(
            teacher, student, labels=batch.get("labels"), hard_loss=getattr(student.output, "loss", None), pairs=pairs
        )
        return loss

    def remove(self) -> None:
        """Hooks off, and the models back on their own attention implementation."""
        for capture in (self.teacher_capture, self.student_capture):
            if capture is not None:
                capture.remove()
        self.teacher_capture = self.student_capture = None
