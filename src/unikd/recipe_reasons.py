"""The one line of why behind each choice `unikd recipe` makes, each pointing at the guideline section it rests on
(``Reason.line``); the numbers quoted are the studies' (docs/study-cpu.md), so they live apart from the rules."""

from __future__ import annotations

from dataclasses import dataclass

from unikd.config import RunConfig, step_dicts
from unikd.guards import WEAK_TEACHER_HEADROOM
from unikd.student import BudgetRow

GUIDELINE = "docs/guideline.md"
#: a shape "fills" the budget when it uses at least 1 - _BAND of it ...
_BAND = 0.25
#: ... and at most 1 + _OVER: at 1/2 of all-MiniLM-L6-v2, 3 x 384 is 1.4% over and was the best shape measured,
#: above the 2 x 384 a strict budget leaves (docs/study-cpu.md, "Width versus depth")
_OVER = 0.05

#: each chained step's epochs over the labelled rows + their 4 copies (2.5 passes over the labelled rows), what the
#: four-task runs trained (docs/study-cpu.md, "MRPC, RTE, STS-B at the transfer protocol")
_STEP_EPOCHS = 0.5
#: the one-step plan's epochs over the labelled rows, as in the study
_ONE_STEP_EPOCHS = 3


@dataclass(frozen=True)
class Reason:
    """Why one choice was made, and the guideline section (its anchor) that says so."""

    choice: str
    why: str
    anchor: str

    def line(self) -> str:
        return f"{self.choice}: {self.why} ({GUIDELINE}#{self.anchor})"


#: why a shape of each preference group was taken (``_candidates``)
_GROUP_WHY = {
    "filled": "the widest shape using {band}% to {over}% of the budget, as deep as fits at that width "
    "(fill the budget shallow and wide, not deep and narrow)",
    "closest": "no shape uses {band}% of the budget: the closest one under it",
}


def _reasons(
    cfg: RunConfig,
    row: BudgetRow,
    group: str,
    teacher_non_emb: int,
    fraction: float,
    latency_ms: float | None,
    measured: float | None,
    slower: list[str],
    estimated: bool,
) -> list[Reason]:
    """One reason per choice of ``make_recipe``, in print order (``slower``: the preferred shapes that missed the
    latency target)."""
    why = _GROUP_WHY[group].format(band=round(100 * (1 - _BAND)), over=round(100 * (1 + _OVER)))
    full_width = cfg.student.init.strategy == "teacher-layers"  # make_recipe copies whole layers at full width
    over = f", {100 * row.deviation:.1f}% over it" if row.deviation > 0 else ""
    if slower:
        why += "; the first in this order to meet the latency target"
    reasons = [
        Reason(
            "student.shape",
            f"{row.num_layers} x {row.hidden_size} ({row.num_heads} heads, FFN {row.ffn_size}): "
            f"{row.params.non_embedding:,} non-embedding parameters, "
            f"{100 * row.params.non_embedding / teacher_non_emb:.1f}% of the teacher's {teacher_non_emb:,} "
            f"(budget {100 * fraction:.1f}%{over}); {why}",
            "student-shape-for-a-budget",
        )
    ]
    if latency_ms is not None:
        how = "estimated from the teacher's time by FLOPs" if estimated else "measured"
        reasons.append(
            Reason(
                "latency",
                f"{measured:.1f} ms {how} (PyTorch, CPU, batch 1, sequence {cfg.data.max_length}, 1 thread) <= {latency_ms:g} ms"
                + (f"; {len(slower)} preferred shape(s) were slower: {', '.join(slower[:3])}" if slower else ""),
                "student-shape-for-a-budget",
            )
        )
    reasons.append(
        Reason(
            "student.init",
            f"{cfg.student.init.strategy}, uniform layers, from the teacher itself: "
            + (
                "the width is kept, so whole teacher layers are copied (SST-2 with KD: uniform 78.29, lower "
                "layers 77.75, upper 76.30, random weights 62.58)"
                if full_width
                else "a narrower student keeps the leading channels, heads and neurons of the chosen layers "
                "(SST-2 3 x 192 with KD: slice 76.22, importance ordering 76.30, random weights 50.92)"
            ),
            "initialization",
        )
    )
    if cfg.then:
        reasons += _two_step_reasons(cfg)
    else:
        reasons += _one_step_reasons(cfg)
    reasons += [
        Reason(
            "stage",
            "task distillation only, from the teacher's layers: a general stage is not measured in unikd",
            "stages-general-and-task",
        ),
        _data_reason(cfg),
        Reason(
            "optim, train",
            f"lr {cfg.optim.lr:g}, batch {cfg.train.batch_size}, "
            + (
                f"{_STEP_EPOCHS:g} epochs per step over the labelled rows and their copies (2.5 passes over "
                "the labelled rows each; the four-task study's 300 + 300 steps on MRPC were 0.52 epochs each)"
                if cfg.then
                else f"{_ONE_STEP_EPOCHS:g} epochs, as in the study"
            )
            + "; too few steps left students at the majority class",
            "schedule",
        ),
    ]
    return reasons


def _steps_reason(cfg: RunConfig, train_rows: int | None, uncounted: str) -> Reason:
    """How the steps were written: counted from the rows (each step's train.max_steps), or left as epochs."""
    steps = [RunConfig.model_validate(step).train.max_steps for step in step_dicts(cfg)]
    if train_rows is None:
        why = (
            f"written as epochs: the training rows were not counted ({uncounted}; give --data-dir or set GLUE_DIR "
            "to count them); the no-KD twin written beside it trains the same number of updates in epochs"
        )
    else:
        why = (
            f"{' + '.join(str(n) for n in steps)} optimizer steps, counted from the {train_rows:,} training rows, so "
            f"the no-KD twin written beside it trains the same {sum(steps)} updates on the labels alone"
        )
    return Reason("train.max_steps", why, "schedule")


def _teacher_reason(cfg: RunConfig, headroom: float, weak: bool, plan: str) -> Reason:
    """The teacher's headroom over the trivial baseline on its fine-tune's dev set, and what it changed."""
    head = f"the teacher is {100 * headroom:+.2f} points above the trivial baseline on its fine-tune's dev set"
    if not weak:
        return Reason("teacher", head + f" (weak below {100 * WEAK_TEACHER_HEADROOM:g})", "weak-teachers")
    changed = (
        "step 2 keeps the labels (then.0.plan.hard_label_weight 1: its soft targets carry little)"
        if cfg.then
        else "the one-step plan (logits KD + the labels) instead of the two steps, whose step 2 drops the labels"
        + (" (--plan one-step)" if plan == "one-step" else "")
    )
    return Reason(
        "teacher",
        f"{head}, under {100 * WEAK_TEACHER_HEADROOM:g}: a weak teacher, and KD may not pay (on a task no study "
        f"chose, such a teacher's two-step student lost to its no-KD twin on both seeds); {changed}; train the "
        "no-KD twin written beside this config and keep whichever scores higher, or fine-tune a stronger teacher",
        "weak-teachers",
    )


def _one_step_reasons(cfg: RunConfig) -> list[Reason]:
    logits = next(t for t in cfg.plan.terms if t.knowledge == "logits")
    others = sorted({t.knowledge for t in cfg.plan.terms} - {"logits"})
    return [
        Reason(
            "plan",
            "preset best-practice, logits KD plus the hard labels: one step, cacheable teacher, never clearly "
            "below no-KD on SST-2, MRPC and STS-B; TinyBERT's two steps with 4 augmented copies (--plan two-step, "
            "about twice the wall time, sentence-level tasks only) beat it (MRPC +3.82 [+0.60, +7.05], SST-2 on "
            "every seed) and no-KD on SST-2, MRPC, RTE and STS-B",
            "knowledge-type",
        ),
        Reason(
            "plan.terms.0.loss",
            f"{logits.loss} on the logits (MSE for a regression head): nine losses spanned 0.65 points, "
            "none separated from KL (SST-2)",
            "loss",
        ),
        Reason(
            "plan.terms.0.temperature",
            f"{logits.temperature:g}: T = 1 to 8 differed by a third of a seed standard deviation (SST-2)",
            "temperature",
        ),
        Reason(
            "layer matching",
            f"as the preset sets it for {', '.join(others)}" if others else "none: the plan has no intermediate term",
            "layer-matching",
        ),
    ]


def _two_step_reasons(cfg: RunConfig) -> list[Reason]:
    attention = next(t for t in cfg.plan.terms if t.knowledge == "attention")
    heads = (
        "per head"
        if attention.head_reduction == "per_head"
        else "averaged over heads, since the student has fewer heads than the teacher"
    )
    return [
        Reason(
            "plan",
            "TinyBERT's two chained steps (preset tinybert): step 1 embeddings + hidden states + attention scores "
            "(MSE, no label loss), step 2 the logits from step 1's student; with transfer rows (4 augmented copies, "
            "or unlabelled rows) it beat no-KD on SST-2, MRPC, RTE and STS-B (+6.53 on average, 12 of 12 seeds) "
            "and pseudo-labels on all four; chosen on any three of them it is also the best on the fourth (each "
            "leave-one-task-out fold); about 1.5-2x the wall time of --plan one-step (logits KD + labels), "
            "which it beat by +3.82 on SST-2 and MRPC. Out of sample it did not hold: on QNLI, which no choice "
            "saw, it tied its no-KD twin with a 2 x 320 student (-0.23) and lost to it with 2 x 384 (-2.51 on "
            "every seed), and the one-step plan tied (-0.15): train the no-KD twin written beside and keep the "
            "better",
            "knowledge-type",
        ),
        Reason(
            "then.0.plan.terms.0.loss",
            "soft CE at T = 1 on the logits (MSE for a regression head), as the paper's step 2: nine logits losses "
            "spanned 0.65 points, none separated from KL (SST-2)",
            "loss",
        ),
        Reason(
            "layer matching",
            f"uniform for hidden states and attention ({heads}), as the preset sets it: six matching strategies "
            "were within 0.5 points (SST-2)",
            "layer-matching",
        ),
    ]


def _data_reason(cfg: RunConfig) -> Reason:
    source = f"GLUE task {cfg.data.task}" if cfg.data.task else "your files as data.files"
    if cfg.data.transfer:
        aug = cfg.data.transfer[0]
        why = (
            f"; {aug.copies} TinyBERT-augmented copies of each labelled row (weight {aug.weight:g}: words replaced "
            "by the teacher's masked-LM predictions, else its embedding neighbours), computed once and cached; "
            "add a rest_of_train or text source for unlabelled in-domain text"
        )
    else:
        why = "; no transfer set (none given: add data.transfer for unlabelled in-domain text)"
    return Reason("data", source + why, "transfer-data-and-augmentation")


def _metric_reason(metric: str) -> Reason:
    return Reason(
        "eval.metric",
        f"{metric}, the metric the teacher's fine-tune was scored by: the student is ranked, and its teacher "
        "checked against the trivial baseline, in the same metric",
        "how-unikd-recipe-applies-this",
    )
