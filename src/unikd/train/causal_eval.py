"""Scoring causal-LM task runs: held-out perplexity on the scored (response) tokens, and the trivial baseline a
teacher must beat (a unigram model of the training responses).

=====================  ==========================================================================================
metric                 definition
=====================  ==========================================================================================
``loss``               token-weighted mean next-token NLL (nats) over every scored dev token: Σ NLL / Σ tokens
                       across batches and processes (not a mean of batch means)
``perplexity``         exp(loss)
``tokens``             how many dev tokens were scored
``score``              −perplexity (−loss with ``eval.metric: loss``): a run's score is higher-is-better everywhere
=====================  ==========================================================================================

``eval.metric: teacher_nll`` or ``rouge_l`` (``GENERATION_METRICS``) make the final score one of the samples'
scores (``unikd.generation``: −teacher NLL per token, or ROUGE-L), set once after training when the samples are
drawn (``outputs.save_results``); every evaluation during training, the best checkpoint and the teacher and
baseline checks stay on perplexity (sampling at every evaluation would cost more than the training).
"""

from __future__ import annotations

import math

import torch

#: eval.metric values read off the samples after training -> +1 higher is better, -1 lower is better
GENERATION_METRICS = {"teacher_nll": -1.0, "rouge_l": 1.0}


def dev_metric(metric: str | None) -> str:
    """The metric of the evaluations on dev tokens: perplexity for a metric read off the samples."""
    return "perplexity" if metric is None or metric in GENERATION_METRICS else metric


@torch.no_grad()
def response_nll(model, loader, accelerator, metric: str | None = None) -> dict[str, float]:
    """The metrics above of ``model`` over ``loader`` (batches with ``labels``, -100 = not scored)."""
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for batch in loader:
        labels = batch["labels"]
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = out.logits[:, :-1].float()
        target = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
        )
        total += torch.stack([nll.double(), (target != -100).sum().double()])
    if accelerator.num_processes > 1:
        total = accelerator.reduce(total, reduction="sum")
    return metrics_from_sums(float(total[0]), int(total[1]), metric)


def metrics_from_sums(nll_sum: float, tokens: int, metric: str | None = None) -> dict[str, float]:
    """loss, perplexity, tokens and score (−perplexity, or −loss with ``eval.metric: loss``)."""
    loss = nll_sum / max(tokens, 1)
    out = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": tokens}
    return {**out, "score": -out[dev_metric(metric)]}


def unigram_baseline(train_labels, dev_labels, vocab_size: int, metric: str | None = None) -> dict:
    """The perplexity on the dev responses of the training responses' token frequencies (add-one smoothed over the
    vocabulary): what a model knows with no context at all. Labels are lists of ids, -100 = not scored; a dev
    row's first token is not scored by the models (it has no logits before it), so it is skipped here too."""
    counts = torch.ones(vocab_size, dtype=torch.float64)
    for row in train_labels:
        ids = torch.as_tensor([i for i in row if i >= 0], dtype=torch.long)
        counts += torch.bincount(ids, minlength=vocab_size)[:vocab_size].double()
    log_p = (counts / counts.sum()).log()
    nll, tokens = 0.0, 0
    for row in dev_labels:
        ids = [i for i in row[1:] if i >= 0]
        nll -= float(log_p[torch.as_tensor(ids, dtype=torch.long)].sum()) if ids else 0.0
        tokens += len(ids)
    out = metrics_from_sums(nll, tokens, metric)
    return {"predictor": "the training responses' token frequencies (unigram)", **out}
