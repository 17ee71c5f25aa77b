"""Several teachers distilled as one (``teacher.ensemble``): the ensemble's output in place of one teacher's logits.

``teacher.path`` is the first member: its hidden states and attention maps feed the intermediate terms, and its
layers initialize the student. ``teacher.ensemble`` lists the others with their weights (``teacher.weight`` is the
first's). A forward hook on the first teacher replaces its output's logits with the ensemble's, so everything that
reads the teacher's logits reads the ensemble's: the logits terms, the teacher pass and its caches (a cached run
costs one teacher's training step), the weak-teacher check and the teacher's dev score in metrics.json.

=================================================  ================================================================
head (task type)                                   the ensemble's logits, weights w_i normalized to sum 1
=================================================  ================================================================
softmax (classification, token classification,     log sum_i w_i softmax(z_i): the log of the mean of the teachers'
causal LM)                                         probabilities (TextBrewer averages logits; a mean of
                                                   probabilities is the ensemble's own distribution)
sigmoid (multi-label)                              logit sum_i w_i sigmoid(z_i), per label
regression                                         sum_i w_i z_i
=================================================  ================================================================

``teacher.ensemble_weighting: confidence`` makes the weights per row (per token for token and causal-LM heads):
w_i(x) proportional to w_i * max_c p_i(c | x), the teachers surer of a row counting more there (regression has no
such confidence: refused). A logits term at temperature T tempers the ensemble's distribution, softmax(log p / T),
as it would one teacher's logits.

Members must share the first teacher's labels (number and names) and tokenizer (the same ids mean the same strings);
each difference is a ``ConfigError`` naming ``teacher.ensemble[i].path``, checked from configs and tokenizers before
any weights load. ``plan.policy: sequence_kd`` is refused: its generations come from one teacher's decoding.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Sequence

import torch
from torch import nn

from unikd.errors import ConfigError

FIELD = "teacher.ensemble"
HEADS = ("softmax", "sigmoid", "regression")
#: probabilities floored here before the log, so a class every teacher gives exactly 0 stays finite
PROB_FLOOR = 1e-30


def head_for(task_type: str | None) -> str:
    """Which combination of the table a task type's logits take."""
    if task_type == "regression":
        return "regression"
    if task_type == "multilabel":
        return "sigmoid"
    return "softmax"


def combine(logits: Sequence[torch.Tensor], weights: Sequence[float], head: str, weighting: str = "fixed"):
    """The ensemble's logits from each teacher's ``logits`` (same shape, [..., C]), per the module's table."""
    w = torch.tensor([float(x) for x in weights], dtype=torch.float32, device=logits[0].device)
    w = w / w.sum()
    z = torch.stack([t.float() for t in logits])  # [N, ..., C]
    shape = (-1,) + (1,) * (z.dim() - 1)
    if head == "regression":
        if weighting == "confidence":
            raise ConfigError("teacher.ensemble_weighting", "a regression head has no confidence", "use fixed")
        return (w.view(shape) * z).sum(0).to(logits[0].dtype)
    probs = torch.sigmoid(z) if head == "sigmoid" else torch.softmax(z, dim=-1)
    if weighting == "confidence":
        top = torch.maximum(probs, 1 - probs) if head == "sigmoid" else probs.amax(-1, keepdim=True)
        per = w.view(shape) * top  # [N, ..., 1] (sigmoid: [N, ..., C], a confidence per label)
        per = per / per.sum(0, keepdim=True)
    else:
        per = w.view(shape)
    mean = (per * probs).sum(0)
    if head == "sigmoid":
        mean = mean.clamp(PROB_FLOOR, 1 - 1e-7)
        return torch.log(mean / (1 - mean)).to(logits[0].dtype)
    return torch.log(mean.clamp_min(PROB_FLOOR)).to(logits[0].dtype)


def weights_of(cfg) -> list[float]:
    """The first teacher's weight, then each member's (``cfg``: a RunConfig with ``teacher.ensemble``)."""
    return [cfg.teacher.weight] + [m.weight for m in cfg.teacher.ensemble]


def member_paths(cfg) -> list[str]:
    """Each member's resolved model directory (``pkg:`` and .gguf paths as ``teacher.path`` resolves them)."""
    from unikd.models import resolve_model_path

    return [resolve_model_path(m.path, f"{FIELD}[{i}].path") for i, m in enumerate(cfg.teacher.ensemble)]


# ---- checks before any weights load -----------------------------------------------------------------------------
def check_ensemble(cfg, teacher_path: str, teacher_config, task_type: str | None) -> list[str]:
    """The members' resolved paths, after every check of the module docstring (configs and tokenizers only)."""
    if not cfg.teacher.ensemble:
        return []
    from unikd.models import load_tokenizer, model_config

    if cfg.stage != "task":
        raise ConfigError(
            FIELD, f"an ensemble distils soft targets, and a {cfg.stage} run has none", "use it on a task run"
        )
    if sum(weights_of(cfg)) <= 0:
        raise ConfigError(
            FIELD,
            f"the weights (teacher.weight and each member's) sum to {sum(weights_of(cfg))}",
            "give at least one teacher a positive weight",
        )
    if cfg.teacher.ensemble_weighting == "confidence" and task_type == "regression":
        raise ConfigError(
            "teacher.ensemble_weighting",
            "confidence weighting reads each teacher's top probability, and a regression head has none",
            "use teacher.ensemble_weighting=fixed",
        )
    if cfg.plan.policy == "sequence_kd":
        raise ConfigError(
            FIELD,
            "plan.policy sequence_kd trains on one teacher's generations, which an ensemble does not decode",
            "use plan.policy off_policy or on_policy with an ensemble, or distil one teacher",
        )
    first_vocab = load_tokenizer(teacher_path, "teacher.path").get_vocab()
    paths = member_paths(cfg)
    for i, (member, path) in enumerate(zip(cfg.teacher.ensemble, paths)):
        field = f"{FIELD}[{i}].path"
        config = model_config(path, field)
        _same_labels(teacher_config, config, cfg.teacher.path, member.path, field, task_type)
        if load_tokenizer(path, field).get_vocab() != first_vocab:
            raise ConfigError(
                field,
                f"its tokenizer is not teacher.path's ({cfg.teacher.path!r}): the teachers' logits would index "
                "different tokens",
                "ensemble teachers fine-tuned from models with one tokenizer",
            )
    return paths


def _same_labels(first, config, first_name: str, name: str, field: str, task_type: str | None) -> None:
    if task_type == "causal-lm":
        if first.vocab_size != config.vocab_size:
            raise ConfigError(
                field,
                f"{name!r} has {config.vocab_size} vocabulary rows and teacher.path {first_name!r} {first.vocab_size}",
                "ensemble decoders whose LM heads have one size",
            )
        return
    if first.num_labels != config.num_labels:
        raise ConfigError(
            field,
            f"{name!r} has {config.num_labels} labels and teacher.path {first_name!r} {first.num_labels}",
            "ensemble teachers of one task (fine-tuned on the same labels)",
        )
    a, b = dict(first.id2label), dict(config.id2label)
    if {int(k): v for k, v in a.items()} != {int(k): v for k, v in b.items()}:
        raise ConfigError(
            field,
            f"its label names {sorted(b.items())} are not teacher.path's {sorted(a.items())}",
            "ensemble teachers fine-tuned on the same labels, in the same order",
        )


def cache_key(cfg) -> str | None:
    """What decides the ensemble's logits beyond the first teacher (each member's weight and config files, the
    weights, the weighting), for the teacher caches' keys; None without an ensemble (one teacher's keys unchanged)."""
    if not cfg.teacher.ensemble:
        return None
    from unikd.teacher_cache import teacher_fingerprint

    parts = [teacher_fingerprint(p) for p in member_paths(cfg)]
    text = json.dumps([parts, weights_of(cfg), cfg.teacher.ensemble_weighting])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- the hook -----------------------------------------------------------------------------------------------------
class Ensemble:
    """The other members and the hook that puts the ensemble's logits in the first teacher's output."""

    def __init__(self, first: nn.Module, members: Sequence[nn.Module], weights, head: str, weighting: str):
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.members = list(members)
        self.accepted = [set(inspect.signature(m.forward).parameters) for m in self.members]
        self.weights, self.head, self.weighting = list(weights), head, weighting
        self.handle = first.register_forward_hook(self._hook, with_kwargs=True)

    def to(self, device) -> Ensemble:
        for m in self.members:
            m.eval().requires_grad_(False).to(device)
        return self

    def _hook(self, module, args, kwargs, output):
        if kwargs.get("past_key_values") is not None:
            raise RuntimeError("an ensemble teacher cannot decode with a KV cache (unikd.ensemble)")
        inputs = dict(kwargs, output_hidden_states=False, output_attentions=False)
        inputs.pop("labels", None)  # the members' own losses would be computed for nothing
        if "use_cache" in inputs or getattr(module.config, "use_cache", False):
            inputs["use_cache"] = False
        with torch.no_grad():  # each member called with the inputs its forward names (BERT's token_type_ids...)
            others = [
                m(*args, **{k: v for k, v in inputs.items() if k in names}).logits
                for m, names in zip(self.members, self.accepted)
            ]
        output.logits = combine([output.logits, *others], self.weights, self.head, self.weighting)
        return output

    def remove(self) -> None:
        self.handle.remove()


def attach(cfg, first: nn.Module, member_paths: Sequence[str], kind: str, task_type: str | None, **labels):
    """Load each member with the first teacher's head ``kind`` and labels, and hook them into ``first``; None
    without an ensemble. The members load on the CPU (``Ensemble.to`` moves them with the teacher)."""
    if not member_paths:
        return None
    from unikd.models import load_model

    members = [
        load_model(path, kind, field=f"{FIELD}[{i}].path", **labels).eval() for i, path in enumerate(member_paths)
    ]
    for m in members:
        if getattr(first.config, "pad_token_id", None) is not None and m.config.pad_token_id is None:
            m.config.pad_token_id = first.config.pad_token_id
    return Ensemble(first, members, weights_of(cfg), head_for(task_type), cfg.teacher.ensemble_weighting)


__all__ = ["Ensemble", "attach", "cache_key", "check_ensemble", "combine", "member_paths", "head_for", "weights_of"]
