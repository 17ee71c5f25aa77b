"""A top-k teacher cache for token-level KD on causal-LM data (``train.teacher_cache`` on a decoder task run).

Full teacher distributions are [tokens, vocabulary]: 196 KB per token at SmolLM2's V = 49,152 in fp32. Per scored
token (the positions ``knowledge.logits.scored_positions`` marks: the next token is a response token) this keeps
the teacher's k largest log-probabilities at the run's temperature, their ids and the log of the remaining mass:

==============  =========================  ====================================================================
array           shape, dtype               what
==============  =========================  ====================================================================
``ids.npy``     [positions, k] uint16      the top-k token ids (int32 when V > 65,536)
``logp.npy``    [positions, k] float16     log p of each, p = softmax(teacher logits / T)
``tail.npy``    [positions] float32        log(1 − Σ top-k p): the rest of the vocabulary as one bucket
``filled.npy``  [rows] bool                which rows the teacher pass has stored (a killed pass resumes)
==============  =========================  ====================================================================

so a token costs ``k * (2 + 2) + 4`` bytes (260 at k = 64) with uint16 ids. Rows lie one after another in the
run's row order (``offsets``: each row's first position), positions within a row in order. The directory is named
by a hash of what decides the values: the teacher's weights (``teacher_cache.teacher_fingerprint``), its
tokenizer's vocabulary, precision, k, T and every row's token ids and labels; so runs, seeds and study variants on
the same rows reuse it (``train.teacher_cache_dir``, else the run's own folder).

KD from the cache (``divergences.topk_divergence``) compares the two distributions over k + 1 buckets: the teacher's top-k ids
and the tail. The student's bucket values are its own log-probabilities at those ids and the log of its remaining
mass, so every divergence of ``divergences.ROWS`` applies unchanged; with k = V it is the full-vocabulary loss.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from unikd.capture import Features
from unikd.divergences import LOG_FLOOR, ROWS, scored_positions, topk_divergence  # noqa: F401 - the cache's reader
from unikd.errors import ConfigError
from unikd.io import atomic_write_json

DEFAULT_K = 64
FIELD = "train.teacher_cache_topk"


def scored_counts(labels: list[list[int]]) -> np.ndarray:
    """Per row, how many positions are scored: i with labels[i + 1] != -100 (the LM loss's shift)."""
    return np.asarray([sum(1 for x in row[1:] if x != -100) for row in labels], dtype=np.int64)


def content_hash(rows, tokenizer, extra: dict) -> str:
    """A hash of every row's token ids and labels, the tokenizer's vocabulary and ``extra`` (teacher, k, T, ...)."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    for ids, labels in zip(rows["input_ids"], rows["labels"]):
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        h.update(np.asarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:20]


class TokenTopkCache:
    """The teacher's top-k per scored token of a run's rows; the interface of ``TeacherLogitCache`` (``store``,
    ``lookup``, ``missing``, ``flush``), so ``Distiller`` and ``teacher_pass`` use either."""

    def __init__(self, directory: str | Path, labels: list[list[int]], *, k: int, temperature: float, key: dict):
        self.directory = Path(directory)
        counts = scored_counts(labels)
        self.num_rows = len(counts)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.k, self.temperature = k, temperature
        self.key = {**key, "k": k, "temperature": temperature, "positions": int(self.offsets[-1])}
        self._arrays: dict[str, np.memmap] = {}
        self.vocab: int | None = None
        meta = self.directory / "meta.json"
        if meta.is_file() and json.loads(meta.read_text()).get("key") == self.key:
            self._open(json.loads(meta.read_text())["vocab"], mode="r+")

    @property
    def is_open(self) -> bool:
        return bool(self._arrays)

    @property
    def bytes_per_token(self) -> int:
        return self.k * (np.dtype(self._id_dtype(self.vocab or 0)).itemsize + 2) + 4

    @staticmethod
    def _id_dtype(vocab: int):
        return np.uint16 if vocab <= 65536 else np.int32

    def create(self, num_classes: int) -> None:
        if not self.is_open:
            self._open(num_classes, mode="w+")

    def attach(self) -> None:
        meta = self.directory / "meta.json"
        if meta.is_file() and json.loads(meta.read_text()).get("key") == self.key:
            self._open(json.loads(meta.read_text())["vocab"], mode="r+")

    def _open(self, vocab: int, mode: str) -> None:
        if self.k > vocab:
            raise ConfigError(FIELD, f"k = {self.k} is more than the vocabulary's {vocab} tokens", f"use k <= {vocab}")
        self.directory.mkdir(parents=True, exist_ok=True)
        n = max(int(self.offsets[-1]), 1)  # a memmap needs one row at least
        shapes = {
            "ids": ((n, self.k), self._id_dtype(vocab)),
            "logp": ((n, self.k), np.float16),
            "tail": ((n,), np.float32),
            "filled": ((self.num_rows,), np.bool_),
        }
        for name, (shape, dtype) in shapes.items():
            self._arrays[name] = np.lib.format.open_memmap(
                self.directory / f"{name}.npy", mode=mode, dtype=dtype, shape=shape
            )
        self.vocab = vocab
        if mode == "w+":
            atomic_write_json(self.directory / "meta.json", {"key": self.key, "vocab": vocab})

    # ---- writing ------------------------------------------------------------------------------------------
    def store(self, idx: torch.Tensor, features: Features, batch: dict | None = None) -> None:
        """The top-k of the teacher's token-level logits [B, L, V] at the scored positions of ``batch``'s rows."""
        if batch is None or batch.get("labels") is None:
            raise ConfigError("train.teacher_cache", "a token cache needs the batch's labels", "report this as a bug")
        logits = features.logits
        if not self.is_open:
            self._open(logits.shape[-1], mode="w+")
        mask = scored_positions(batch["labels"], features.attention_mask, causal=True).bool()
        top, ids = self._top_k(logits, mask)
        tail = torch.log(-torch.expm1(torch.logsumexp(top, dim=-1).clamp(max=-1e-7))).clamp(min=LOG_FLOOR)
        top, ids, tail = top.cpu().numpy(), ids.cpu().numpy(), tail.cpu().numpy()
        first = 0
        for row, count in zip(idx.cpu().tolist(), mask.sum(-1).cpu().tolist()):
            start, end = self.offsets[row], self.offsets[row + 1]
            if end - start != count:
                raise ConfigError(
                    "train.teacher_cache",
                    f"row {row} has {count} scored tokens in its batch and {end - start} when the cache was laid out",
                    "report this as a bug (the rows changed after the cache was opened)",
                )
            self._arrays["ids"][start:end] = ids[first : first + count]
            self._arrays["logp"][start:end] = top[first : first + count]
            self._arrays["tail"][start:end] = tail[first : first + count]
            first += count
        self._arrays["filled"][idx.cpu().numpy()] = True

    #: scored positions per chunk of the top-k: [64, V] fp32 at a time (12.6 MB at V = 49,152) instead of the
    #: batch's [positions, V] log-softmax: the store's time fell by about a third on a CPU (2% of the teacher pass)
    TOPK_CHUNK = 64

    def _top_k(self, logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-k log p (at the cache's temperature) and ids at the scored positions of ``logits`` [B, L, V], in
        row-major order: the top-k of the logits less their logsumexp, a chunk of positions at a time."""
        flat = logits.reshape(-1, logits.shape[-1])
        where = mask.reshape(-1).nonzero().squeeze(-1)
        tops, ids = [], []
        for start in range(0, len(where), self.TOPK_CHUNK):
            x = flat[where[start : start + self.TOPK_CHUNK]].float()
            if self.temperature != 1.0:
                x = x / self.temperature
            top, idx = x.topk(self.k, dim=-1)
            tops.append(top - torch.logsumexp(x, dim=-1, keepdim=True))
            ids.append(idx)
        if not tops:
            return logits.new_zeros((0, self.k), dtype=torch.float32), torch.zeros((0, self.k), dtype=torch.long)
        return torch.cat(tops), torch.cat(ids)

    def missing(self, rows: list[int]) -> list[int]:
        if not self.is_open:
            return list(rows)
        filled = np.asarray(self._arrays["filled"])
        return [r for r in rows if not filled[r]]

    def fill_from_shared(self, rows: list[int]) -> int:
        return 0  # the directory itself is the shared store (named by content)

    def flush(self) -> None:
        for array in self._arrays.values():
            array.flush()

    # ---- reading ------------------------------------------------------------------------------------------
    def lookup(self, idx: torch.Tensor, batch: dict) -> Features | None:
        """The rows' stored top-k as ``Features.topk`` = (ids [N, k], log p [N, k], log tail [N]) over the batch's
        scored positions in row-major order, or None when any row is not stored yet."""
        if not self.is_open:
            return None
        rows = idx.cpu().tolist()
        if not bool(self._arrays["filled"][rows].all()):
            return None
        spans = [slice(int(self.offsets[r]), int(self.offsets[r + 1])) for r in rows]
        device = idx.device
        ids = torch.from_numpy(np.concatenate([self._arrays["ids"][s] for s in spans]).astype(np.int64)).to(device)
        logp = torch.from_numpy(np.concatenate([self._arrays["logp"][s] for s in spans]).astype(np.float32))
        tail = torch.from_numpy(np.concatenate([self._arrays["tail"][s] for s in spans]))
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(batch["input_ids"])
        return Features(attention_mask=mask, causal=True, topk=(ids, logp.to(device), tail.to(device)))


def check_token_cache(cfg) -> None:
    """Before anything loads: a token cache holds one temperature's top-k of a logits-only plan whose losses have a
    per-row form (the terms and the teacher cache's other checks: ``teacher_cache.TeacherLogitCache.check_plan``)."""
    terms = [t for t in cfg.plan.terms if t.knowledge == "logits"]
    for i, term in enumerate(cfg.plan.terms):
        if term.knowledge == "logits" and term.loss not in ROWS:
            raise ConfigError(
                f"plan.terms[{i}].loss",
                f"the {term.loss} loss cannot read the top-k token cache",
                f"use one of {', '.join(ROWS)}, or set train.teacher_cache=false",
            )
        if term.knowledge == "logits" and term.temperature_end is not None:
            raise ConfigError(
                f"plan.terms[{i}].temperature_end",
                "the token cache stores the teacher's top-k at one temperature",
                "drop temperature_end, or set train.teacher_cache=false",
            )
    if len({t.temperature for t in terms}) > 1:
        raise ConfigError(
            "plan.terms", "logits terms at different temperatures share one token cache", "give them one temperature"
        )
    if cfg.plan.policy == "on_policy":
        raise ConfigError(
            "train.teacher_cache",
            "on-policy batches hold the student's own samples, which no cache can hold ahead",
            "set train.teacher_cache=false (or plan.policy: off_policy / sequence_kd)",
        )


def open_token_cache(cfg, accelerator, teacher_path: str, train_ds, tokenizer, vocab: int, ensemble: str | None = None):
    """(cache, rows with their ``idx``) for a causal-LM task run with ``train.teacher_cache`` (``ensemble``: the
    ensemble's ``unikd.ensemble.cache_key``, None for one teacher)."""
    from unikd.teacher_cache import _share_among_processes, teacher_fingerprint

    k = cfg.train.teacher_cache_topk or DEFAULT_K
    temperature = next(t.temperature for t in cfg.plan.terms if t.knowledge == "logits")
    extra = {"teacher": teacher_fingerprint(teacher_path), "precision": cfg.teacher.precision, "k": k, "T": temperature}
    if ensemble:  # an ensemble's top-k is its own (unikd.ensemble.cache_key)
        extra["ensemble"] = ensemble
    root = Path(cfg.train.teacher_cache_dir or Path(cfg.output_dir) / "teacher_cache")
    directory = root / f"token-topk-{content_hash(train_ds, tokenizer, extra)}"
    cache = TokenTopkCache(directory, train_ds["labels"], k=k, temperature=temperature, key=extra)
    _share_among_processes(accelerator, cache, vocab)
    if "idx" in train_ds.column_names:  # the causal rows' own index: the cache's row order is the dataset's
        train_ds = train_ds.remove_columns("idx")
    return cache, train_ds.add_column("idx", list(range(len(train_ds))))
