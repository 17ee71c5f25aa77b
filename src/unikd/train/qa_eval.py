"""Extractive QA scoring: a model's start/end logits over the dev windows, turned into answers per question
(``unikd.data.qa.best_answers``) and scored by SQuAD v1.1's exact match and F1; and the trivial baseline a teacher
must beat (the empty answer: EM 0, F1 0)."""

from __future__ import annotations

import torch

#: batch columns the loop adds for KD and training, never a QA model's inputs at evaluation
_NOT_INPUTS = ("context_mask", "start_positions", "end_positions", "idx", "labels")


@torch.no_grad()
def qa_scores(model, loader, accelerator, qa_task, metric: str | None) -> dict[str, float]:
    """Exact match, F1 and ``score`` (``metric``, default F1) of ``model`` on ``qa_task``'s dev questions."""
    from unikd.data.qa import best_answers, squad_scores

    starts, ends = [], []
    for batch in loader:
        out = model(**{k: v for k, v in batch.items() if k not in _NOT_INPUTS})
        s, e = accelerator.gather_for_metrics((out.start_logits.float(), out.end_logits.float()))
        starts.append(s.cpu())
        ends.append(e.cpu())
    start, end = torch.cat(starts).numpy(), torch.cat(ends).numpy()
    answers = best_answers(qa_task.validation, qa_task.eval_features, start, end, qa_task.qa)
    scores = squad_scores(answers, qa_task.validation, qa_task.qa)
    return {**scores, "score": scores[metric or "f1"]}


def qa_baseline(metric: str | None) -> dict[str, float]:
    """The empty answer to every question: what a model that finds no span scores."""
    return {"exact_match": 0.0, "f1": 0.0, "score": 0.0}
