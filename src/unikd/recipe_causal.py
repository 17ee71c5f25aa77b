"""``unikd recipe``'s causal-LM branch: a decoder teacher and prompt/response (or conversation, or text) files.

==================  =======================================================================================
choice              what the recipe writes, and the evidence (docs/study-cpu.md, "Generative decoders")
==================  =======================================================================================
student             the budget's shape from the teacher's layers (the encoder rule: widest first), uniformly
                    picked layers
plan                forward KL (temperature 1) + the response cross-entropy, one step: of the four divergences
                    the generative study compared against the no-KD twin, the one that did best (``EVIDENCE``)
optim, train        lr 3e-4, batch 8, one epoch over the training rows written as ``train.max_steps`` (the
                    twin trains as many); the study ran 100 steps of batch 4 on 640 answers
eval                perplexity of the held-out responses; 32 held-out prompts sampled and scored by the teacher
==================  =======================================================================================
"""

from __future__ import annotations

import math

from unikd.config import DataConfig, RunConfig
from unikd.errors import ConfigError
from unikd.recipe_reasons import Reason

LR, BATCH, EPOCHS = 3e-4, 8, 1.0
#: the generative study's numbers the plan's reason quotes (docs/study-cpu.md, cpu-generative-gsm8k): the no-KD
#: twin's and each divergence's mean GSM8K dev response perplexity over the seeds run, and how many seeds
EVIDENCE = {
    "seeds": 3,
    "no-KD": 56.23,
    "forward KL": 52.15,
    "reverse KL": 69.17,
    "JSD (beta 0.5)": 55.81,
    "skew KL (alpha 0.1)": 55.60,
}


def causal_rows(data: dict) -> tuple[bool, int | None]:
    """Whether ``data`` (the recipe's data section) is causal-LM data, and its training rows when it is."""
    from unikd.data.causal import is_causal_lm
    from unikd.data.labelled import read_splits

    cfg = DataConfig.model_validate(data)
    if cfg.task:
        return False, None
    try:
        train = read_splits(cfg)[0]
    except ConfigError as exc:
        raise ConfigError("--data-files", f"{exc.field}: {exc.problem}", exc.fix) from None
    if not is_causal_lm(cfg, train.column_names):
        return False, None
    return True, len(train)


def add_causal_plan(doc: dict, train_rows: int) -> None:
    """The plan, optimizer, schedule and evaluation of the table above, into the recipe's ``doc``."""
    doc["plan"] = {"terms": [{"knowledge": "logits", "loss": "kl", "temperature": 1.0}], "hard_label_weight": 1.0}
    doc["optim"] = {"lr": LR, "warmup_ratio": 0.05}
    doc["train"] = {"max_steps": max(1, math.ceil(EPOCHS * train_rows / BATCH)), "batch_size": BATCH}
    doc["eval"] = {"generation": {"rows": 32, "max_new_tokens": 128}}


def causal_reasons(cfg: RunConfig, shape_reason: Reason, train_rows: int) -> list[Reason]:
    """One line of why per choice (the shape's line comes from the encoder rule it shares)."""
    e = EVIDENCE
    seeds = f"{e['seeds']} seed" + ("s" if e["seeds"] > 1 else "")
    others = ", ".join(f"{k} {v:.2f}" for k, v in e.items() if k not in ("seeds", "no-KD", "forward KL"))
    return [
        shape_reason,
        Reason(
            "student.init",
            "teacher-layers, uniform: whole layers of the teacher, embeddings and LM head copied (the generative "
            "study's students)",
            "generative-models",
        ),
        Reason(
            "plan",
            f"forward KL + response cross-entropy: GSM8K dev response perplexity {e['forward KL']:.2f} against "
            f"{e['no-KD']:.2f} for the no-KD twin ({others}; SmolLM2-135M -> 4 layers, {seeds}); chosen and "
            "reported on the same dev answers, so not yet tested on data no study used",
            "generative-models",
        ),
        Reason(
            "optim, train",
            f"lr {cfg.optim.lr:g}, batch {cfg.train.batch_size}, {cfg.train.max_steps} steps = {EPOCHS:g} epoch over "
            f"{train_rows} rows (the study: 100 steps of batch 4 on 640 answers, lr 3e-4)",
            "generative-models",
        ),
        Reason(
            "eval",
            "held-out response perplexity (token-weighted) is the score; 32 held-out prompts are sampled after "
            "training and scored by the teacher (eval.metric: teacher_nll ranks by that instead)",
            "generative-models",
        ),
    ]
