"""Generation for decoder students: samples on held-out prompts through Hugging Face ``generate`` (KV cache), the
teacher's score of those samples, and ROUGE-L against the references.

``evaluate_generation(student, teacher, tokenizer, rows, settings)`` is what a causal-LM run adds to metrics.json
(``generation``) when ``eval.generation.rows`` > 0:

=======================  =========================================================================================
entry                    definition
=======================  =========================================================================================
``teacher_nll``          mean NLL per generated token under the teacher, Σ over samples / Σ tokens (GKD and
                         MiniLLM report it: how likely the teacher finds what the student writes; lower is better);
                         a fine-tune (the no-KD twin) is scored by the model its student was built from
``rouge_l``              mean ROUGE-L F1 of each sample against its reference response (Google's ``rouge-score``,
                         with stemming), ×100
``generated_tokens``     tokens generated over all samples (EOS included where it came)
``seconds``, ``tokens_per_s``  the generation's own wall time, apart from training time
``samples``              the first ``eval.generation.show`` rows: prompt, reference, the student's continuation
=======================  =========================================================================================

Prompts are the dev rows' tokens before their first scored token (``prompt_length``), left-padded into batches so
that every continuation starts at the same position. Greedy decoding unless ``temperature`` > 0 (then sampling
with ``top_p``, seeded).
"""

from __future__ import annotations

import time

import torch
from pydantic import BaseModel, ConfigDict, Field


class SamplingConfig(BaseModel):
    """How a decoder generates (evaluation samples; on-policy batches use the same fields)."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(64, ge=1, description="Tokens generated per prompt at most (EOS ends one sooner).")
    temperature: float = Field(0.0, ge=0, description="0: greedy decoding; > 0: sampling at this temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Sampling: nucleus probability mass (1 = the full vocabulary).")


class GenerationEvalConfig(SamplingConfig):
    """eval.generation: samples of a causal-LM run's student on its dev prompts, scored after training."""

    rows: int = Field(0, ge=0, description="Dev rows to generate for after training (0 = none: no generation).")
    show: int = Field(5, ge=0, description="How many of them metrics.json shows in full (prompt, reference, sample).")
    batch_size: int = Field(16, ge=1, description="Prompts generated together.")


def padded(rows: list[list[int]], pad_id: int, device, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of token rows padded to the longest with ``pad_id``, on the left (prompts to generate
    from: every continuation starts at the same position) or on the right (training batches)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def generate(model, prompts: list[list[int]], tokenizer, settings: SamplingConfig, seed: int = 0) -> list[list[int]]:
    """The continuation token ids of each prompt (without the prompt; cut after the first EOS)."""
    device = next(model.parameters()).device
    ids, mask = padded(prompts, tokenizer.pad_token_id, device, left=True)
    sample = settings.temperature > 0
    extra = {"temperature": settings.temperature, "top_p": settings.top_p} if sample else {}
    if sample:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=settings.max_new_tokens,
        do_sample=sample,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
        **extra,
    )
    model.train(was_training)
    continuations = []
    for row in out[:, ids.shape[1] :].tolist():
        cut = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
        continuations.append(row[:cut])
    return continuations


@torch.no_grad()
def sequence_nll(model, prompts: list[list[int]], continuations: list[list[int]]) -> tuple[float, int]:
    """(Σ NLL, Σ tokens) of each continuation given its prompt under ``model``, one row at a time (no padding)."""
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for prompt, cont in zip(prompts, continuations):
        if not cont:
            continue
        ids = torch.tensor([prompt + cont], device=device)
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
        total += float(torch.nn.functional.cross_entropy(logits, ids[0, len(prompt) :], reduction="sum"))
        tokens += len(cont)
    return total, tokens


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 (×100) with Google's rouge-score (stemming on)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:  # an extra: the error says which
        from unikd.errors import ConfigError

        raise ConfigError(
            "eval.generation.rows",
            "ROUGE-L of the samples needs the rouge-score package",
            "pip install rouge-score (or pip install 'unikd[generative]'), or set eval.generation.rows=0",
        ) from exc
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return 100.0 * sum(scores) / max(len(scores), 1)


def evaluate_generation(student, teacher, tokenizer, rows, settings: GenerationEvalConfig, seed: int = 0) -> dict:
    """The ``generation`` entry of metrics.json (see the module docstring) over the first ``settings.rows`` of
    ``rows`` (tokenized dev rows with ``input_ids``, ``labels`` and ``prompt_length``); rows without a prompt
    (plain text) are skipped."""
    picked = [r for r in rows.select(range(min(settings.rows, len(rows)))) if r["prompt_length"] > 0]
    prompts = [r["input_ids"][: r["prompt_length"]] for r in picked]
    references = [[t for t in r["labels"][r["prompt_length"] :] if t != -100] for r in picked]
    started = time.perf_counter()
    continuations: list[list[int]] = []
    for i in range(0, len(prompts), settings.batch_size):
        continuations += generate(student, prompts[i : i + settings.batch_size], tokenizer, settings, seed + i)
    seconds = time.perf_counter() - started
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in continuations]
    refs = [tokenizer.decode(r, skip_special_tokens=True) for r in references]
    generated = sum(len(c) for c in continuations)
    out = {
        "rows": len(prompts),
        "rouge_l": rouge_l(texts, refs),
        "generated_tokens": generated,
        "seconds": seconds,
        "tokens_per_s": generated / max(seconds, 1e-9),
    }
    if teacher is not None:
        nll, tokens = sequence_nll(teacher, prompts, continuations)
        out["teacher_nll"] = nll / max(tokens, 1)
    out["samples"] = [
        {"prompt": tokenizer.decode(p, skip_special_tokens=True), "reference": ref, "sample": text}
        for p, ref, text in list(zip(prompts, refs, texts))[: settings.show]
    ]
    return out


class OnPolicy:
    """GKD's on-policy batches: at a share ``lam`` of the steps (drawn from ``(seed, step)``, so a resumed run
    draws the same), the batch's responses are replaced by the student's own samples of its prompts, and the
    teacher scores those tokens. ``seconds`` and ``batches`` count the generation, apart from training time."""

    def __init__(self, lam: float, settings: SamplingConfig, tokenizer, seed: int):
        self.lam, self.settings, self.tokenizer, self.seed = lam, settings, tokenizer, seed
        self.seconds, self.batches = 0.0, 0

    def due(self, step: int) -> bool:
        import random

        return self.lam > 0 and random.Random(f"on-policy-{self.seed}-{step}").random() < self.lam

    def batch(self, student, batch: dict, step: int) -> dict:
        """``batch`` (right-padded, with ``prompt_length``) with each row's response replaced by the student's
        sample: prompt + sample, the sample's tokens the labels (-100 elsewhere), padded again on the right."""
        started = time.perf_counter()
        lengths = batch["prompt_length"].tolist()
        prompts = [row[:n] for row, n in zip(batch["input_ids"].tolist(), lengths)]
        samples = generate(student, prompts, self.tokenizer, self.settings, seed=self.seed * 1_000_003 + step)
        rows = [p + s for p, s in zip(prompts, samples)]
        device = batch["input_ids"].device
        ids, mask = padded(rows, self.tokenizer.pad_token_id, device, left=False)
        labels = ids.masked_fill(mask == 0, -100)
        for i, n in enumerate(lengths):
            labels[i, :n] = -100  # the prompt is not scored
        out = {**batch, "input_ids": ids, "attention_mask": mask, "labels": labels}
        self.seconds += time.perf_counter() - started
        self.batches += 1
        return out
