"""Teacher-output caching for multi-epoch task distillation.

In the task stage the teacher is frozen, in eval mode, and sees the same rows every epoch, so its
logits are a pure function of the row. The teacher pass before the first step (``teacher_pass``) stores them in a
memory-mapped file (optionally only the top-k logits per row), every row once in length-sorted batches under
``inference_mode``; the training steps read them back and skip the teacher forward pass. A killed pass leaves the
rows it stored (``filled``), and the next start computes only the ``missing`` ones.
Only logits-only plans qualify: intermediate features are far too large to keep per row.

``SharedTeacherOutputs`` (``train.teacher_cache_dir``; a study sets it to ``<output_dir>/teacher_outputs``) keeps
the logits across runs, keyed by content: one directory per teacher (a hash of its weights and config files) and
precision, and in it every row under a hash of its token ids. A run fills its own cache from it before the pass
and adds the rows it computed, so the seeds and objectives of a study label each row once.

A run's cache, from the trainer's side: ``check_plan`` / ``check_task`` refuse what it cannot hold (before anything
loads), ``open_for_run`` opens it for the run's rows (shared by its processes and with the store), ``teacher_pass``
fills it before the first step.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from unikd.capture import Features
from unikd.errors import ConfigError
from unikd.io import atomic_path, atomic_write_json

# Logits outside the stored top-k are filled this far below the k-th largest: their softmax mass is
# ~e^-30 of it, and the value stays finite so KL/CE never see inf - inf.
_TOPK_FILL_MARGIN = 30.0


class TeacherLogitCache:
    """Per-row teacher logits on disk: ``store`` during the first pass, ``lookup`` afterwards."""

    def __init__(self, directory: str | Path, num_rows: int, *, topk: int | None = None, key: dict | None = None):
        self.directory = Path(directory)
        self.num_rows = num_rows
        self.topk = topk
        self.key = {"num_rows": num_rows, "topk": topk, **(key or {})}
        self._values: np.memmap | None = None
        self._indices: np.memmap | None = None
        self._filled: np.memmap | None = None
        self._num_classes: int | None = None
        self._shared: SharedTeacherOutputs | None = None
        self._row_keys: list[bytes] | None = None
        self._new: list[tuple[np.ndarray, np.ndarray]] = []  # (rows, full logits) computed here, for the shared store
        meta = self.directory / "meta.json"
        if meta.is_file():
            stored = json.loads(meta.read_text())
            if stored.get("key") == self.key:
                self._open(stored["num_classes"], mode="r+")

    @property
    def is_open(self) -> bool:
        """Whether the cache files exist and are mapped (created here, or found with a matching key)."""
        return self._filled is not None

    def create(self, num_classes: int) -> None:
        """Create the (empty) cache files now rather than at the first ``store``: under several processes the
        main process creates them before any process stores a row (``open_for_run``)."""
        if not self.is_open:
            self._open(num_classes, mode="w+")

    def attach(self) -> None:
        """Open cache files another process created (``create``), if their key matches this cache's."""
        meta = self.directory / "meta.json"
        if meta.is_file():
            stored = json.loads(meta.read_text())
            if stored.get("key") == self.key:
                self._open(stored["num_classes"], mode="r+")

    @staticmethod
    def check_plan(plan, field: str = "train.teacher_cache") -> None:
        plan = getattr(plan, "module", plan)
        others = [t.knowledge for t in plan.config.terms if t.knowledge != "logits"]
        if others:
            raise ConfigError(
                field,
                f"the teacher cache stores logits only, but the plan also uses {sorted(set(others))}",
                "set train.teacher_cache=false, or use a logits-only plan",
            )

    @staticmethod
    def check_task(spec, field: str = "train.teacher_cache") -> None:
        """The cache keeps one logit vector per row: token classification (one per token) cannot use it."""
        if spec.is_token:
            raise ConfigError(
                field,
                "the teacher cache keeps one logit vector per row, and token classification has one per token",
                "set train.teacher_cache=false",
            )

    def _open(self, num_classes: int, mode: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        width = self.topk or num_classes
        self._num_classes = num_classes
        self._values = np.lib.format.open_memmap(
            self.directory / "values.npy", mode=mode, dtype=np.float32, shape=(self.num_rows, width)
        )
        if self.topk:
            self._indices = np.lib.format.open_memmap(
                self.directory / "indices.npy", mode=mode, dtype=np.int64, shape=(self.num_rows, width)
            )
        self._filled = np.lib.format.open_memmap(
            self.directory / "filled.npy", mode=mode, dtype=np.bool_, shape=(self.num_rows,)
        )
        if mode == "w+":
            atomic_write_json(self.directory / "meta.json", {"key": self.key, "num_classes": num_classes})

    def store(self, idx: torch.Tensor, features: Features, batch: dict | None = None) -> None:
        """Record the teacher logits [B, C] of rows ``idx`` [B] (``batch``: unused, the token cache reads it)."""
        logits = features.logits.detach().float()
        if logits.dim() != 2:
            raise ConfigError(
                "train.teacher_cache",
                "only sequence-level logits [B, C] can be cached",
                "disable the teacher cache for token-level (general-stage) distillation",
            )
        rows = idx.cpu().numpy()
        if self._shared is not None:
            self._new.append((rows.copy(), logits.cpu().numpy()))
        self._write(rows, logits)

    def _write(self, rows: np.ndarray, logits: torch.Tensor) -> None:
        """Logits [B, C] of rows ``rows`` into the memory maps (the top-k only, with ``topk``)."""
        if self._values is None:
            self._open(logits.shape[-1], mode="w+")
        if self.topk:
            values, indices = logits.topk(min(self.topk, logits.shape[-1]), dim=-1)
            self._values[rows] = values.cpu().numpy()
            self._indices[rows] = indices.cpu().numpy()
        else:
            self._values[rows] = logits.cpu().numpy()
        self._filled[rows] = True

    def missing(self, rows: list[int]) -> list[int]:
        """The rows of ``rows`` not stored yet (all of them before the files exist)."""
        if self._filled is None:
            return list(rows)
        filled = np.asarray(self._filled)
        return [r for r in rows if not filled[r]]

    def lookup(self, idx: torch.Tensor, batch: dict) -> Features | None:
        """Cached teacher features for rows ``idx``, or None when any row is not stored yet."""
        if self._filled is None:
            return None
        rows = idx.cpu().numpy()
        if not bool(self._filled[rows].all()):
            return None
        device = idx.device
        values = torch.from_numpy(np.asarray(self._values[rows])).to(device)
        if self.topk:
            indices = torch.from_numpy(np.asarray(self._indices[rows])).to(device)
            fill = values.min(dim=-1, keepdim=True).values - _TOPK_FILL_MARGIN
            logits = fill.expand(-1, self._num_classes).clone().scatter_(-1, indices, values)
        else:
            logits = values
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(batch["input_ids"])
        return Features(logits=logits, attention_mask=mask)

    def share(self, shared: SharedTeacherOutputs, row_keys: list[bytes]) -> None:
        """Read rows from, and add the rows stored here to, ``shared``; ``row_keys[i]`` is row i's content key."""
        if len(row_keys) != self.num_rows:
            raise ValueError(f"{len(row_keys)} row keys for a cache of {self.num_rows} rows")
        self._shared, self._row_keys = shared, row_keys

    def fill_from_shared(self, rows: list[int]) -> int:
        """Store the rows of ``rows`` the shared store has (and this cache lacks); returns how many."""
        if self._shared is None:
            return 0
        known = self._shared.load()
        todo = [r for r in self.missing(rows) if self._row_keys[r] in known]
        if not todo:
            return 0
        logits = torch.from_numpy(np.stack([known[self._row_keys[r]] for r in todo]))
        self._write(np.asarray(todo), logits)  # not store(): these rows are not new to the store
        return len(todo)

    def flush(self) -> None:
        for array in (self._values, self._indices, self._filled):
            if array is not None:
                array.flush()
        if self._shared is not None and self._new:
            rows = np.concatenate([r for r, _ in self._new])
            logits = np.concatenate([v for _, v in self._new])
            self._shared.add([self._row_keys[r] for r in rows], logits)
            self._new = []


def row_key(row: dict) -> bytes:
    """A row's content key: a 16-byte hash of its token ids (and token type ids), what the teacher sees."""
    h = hashlib.blake2b(digest_size=16)
    for name in ("input_ids", "token_type_ids"):
        if row.get(name) is not None:
            h.update(name.encode())
            h.update(np.asarray(row[name], dtype=np.int64).tobytes())
    return h.digest()


@functools.lru_cache(maxsize=16)
def _fingerprint(files: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _, _ in files:
        h.update(Path(name).name.encode())
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]


def teacher_fingerprint(teacher_path: str | os.PathLike) -> str:
    """A hash of the teacher's weights and config files: what decides its logits (not its path: a re-trained
    teacher in the same directory gets a new fingerprint, the same weights elsewhere the same one). Hashing
    all-MiniLM-L6-v2's 90 MB takes about 0.1 s, once per process."""
    root = Path(teacher_path)
    files = sorted(
        p for p in root.iterdir() if p.is_file() and (p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    )
    if not files:
        raise ConfigError("teacher.path", f"no weight files in {root}", "point teacher.path at a saved model directory")
    return _fingerprint(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


class SharedTeacherOutputs:
    """Teacher logits shared by runs: ``<root>/<teacher fingerprint>-<precision>/shard-*.npz``, each shard the
    rows one process of one run computed (``keys`` [N, 16] uint8 row-content hashes, ``logits`` [N, C] float32),
    written atomically under a unique name, so runs side by side never collide and a killed run leaves no half
    shard. Rows in several shards (two runs at once) agree to fp32 rounding; the first read wins."""

    def __init__(
        self,
        root: str | os.PathLike,
        teacher_path: str | os.PathLike,
        precision: str = "fp32",
        ensemble: str | None = None,
    ):
        # an ensemble's outputs (unikd.ensemble.cache_key) live apart from its first teacher's
        name = teacher_fingerprint(teacher_path) + (f"+{ensemble}" if ensemble else "")
        self.directory = Path(root) / f"{name}-{precision}"

    def load(self) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        for shard in sorted(self.directory.glob("shard-*.npz")):
            with np.load(shard) as data:
                for key, logits in zip(data["keys"], data["logits"]):
                    found.setdefault(key.tobytes(), logits)
        return found

    def add(self, keys: list[bytes], logits: np.ndarray) -> Path:
        keys_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 16)
        path = self.directory / f"shard-{uuid.uuid4().hex}.npz"
        with atomic_path(path) as tmp:
            np.savez(tmp, keys=keys_array, logits=np.asarray(logits, dtype=np.float32))
        return path


# ---- a run's cache ------------------------------------------------------------------------------------
def open_for_run(cfg, accelerator, teacher_path: str, train_ds, num_classes: int, ensemble: str | None = None):
    """(cache, rows) for a task run with ``train.teacher_cache`` (the plan was checked by ``check_plan``): the cache
    keyed by what decides the teacher's logits of these rows (``ensemble``: ``unikd.ensemble.cache_key``), its files
    made by the main process and attached by the others, reading and filling ``train.teacher_cache_dir``; the rows
    gain the ``idx`` column the steps look rows up by. (None, rows) otherwise."""
    if not (cfg.train.teacher_cache and cfg.stage == "task"):
        return None, train_ds
    data_key = {} if cfg.data.task else {"data": cfg.data.model_dump(mode="json")}  # GLUE caches keep their key
    cache = TeacherLogitCache(
        Path(cfg.output_dir) / "teacher_cache",
        len(train_ds),
        topk=cfg.train.teacher_cache_topk,
        key={
            "teacher": teacher_path,
            "task": cfg.data.task,
            "seed": cfg.seed,
            "train_limit": cfg.data.train_limit,
            "max_length": cfg.data.max_length,
            **data_key,
            # other precisions give other logits (absent for fp32: older caches stay valid)
            **({"precision": cfg.teacher.precision} if cfg.teacher.precision != "fp32" else {}),
            # without fields added since at their defaults (unikd.compat): caches written before stay valid
            **({"transfer": _transfer_key(cfg.data.transfer)} if cfg.data.transfer else {}),
            **({"ensemble": ensemble} if ensemble else {}),
        },
    )
    _share_among_processes(accelerator, cache, num_classes)
    if cfg.train.teacher_cache_dir:  # rows other runs labelled are read, this run's added, keyed by row content
        shared = SharedTeacherOutputs(cfg.train.teacher_cache_dir, teacher_path, cfg.teacher.precision, ensemble)
        columns = [c for c in ("input_ids", "token_type_ids") if c in train_ds.column_names]
        cache.share(shared, [row_key(dict(zip(columns, row))) for row in zip(*(train_ds[c] for c in columns))])
    return cache, train_ds.add_column("idx", list(range(len(train_ds))))


def _transfer_key(sources) -> list[dict]:
    from unikd.compat import TRANSFER_ADDED_AFTER_HASH_V3

    dumps = [s.model_dump(mode="json") for s in sources]
    for d in dumps:
        for name, default in TRANSFER_ADDED_AFTER_HASH_V3.items():
            if d.get(name, default) == default:
                d.pop(name, None)
    return dumps


def _share_among_processes(accelerator, cache: TeacherLogitCache, num_classes: int) -> None:
    """One cache file set for all processes: the main process creates it before anyone stores a row (two
    processes creating it at once would truncate each other's memory maps), the others then open it.
    Each process writes the rows of its own shard; the files are shared memory maps, so a later epoch finds
    rows another process stored."""
    if accelerator.num_processes == 1:
        return
    # Every process reaches the barrier, whatever it found: a process that opened its cache object after the
    # main process had created the files sees them open already, and skipping the barrier there deadlocked
    # the others in it (seen under load).
    if accelerator.is_main_process and not cache.is_open:
        cache.create(num_classes)
    accelerator.wait_for_everyone()
    if not cache.is_open:
        cache.attach()


@torch.inference_mode()
def teacher_pass(cfg, accelerator, distiller, train_ds, collate) -> dict:
    """The teacher's logits of every training row into the cache before the first step: rows sorted by length
    (little padding), batches of train.eval_batch_size (no gradients, so larger than the training batch), each
    process a share; rows an earlier, killed pass stored are skipped. Returns rows, seconds and rows/s."""
    from unikd.data.sampling import row_lengths
    from unikd.distiller import model_inputs

    lengths = row_lengths(train_ds)
    reused = 0
    if accelerator.is_main_process:  # rows another run labelled (train.teacher_cache_dir); the memory maps are shared
        reused = distiller.cache.fill_from_shared(list(range(len(train_ds))))
        distiller.cache.flush()
    accelerator.wait_for_everyone()
    todo = distiller.cache.missing(sorted(range(len(train_ds)), key=lengths.__getitem__))
    # Every process reads the same list before any writes to the shared memory maps: without this barrier a fast
    # process stored its share while another was still reading, which then split a shorter list, left rows
    # unlabelled (computed again in training) and under-reported the pass (CI saw 16 of 32 rows).
    accelerator.wait_for_everyone()
    mine = todo[accelerator.process_index :: accelerator.num_processes]
    size = max(cfg.train.eval_batch_size, cfg.train.batch_size)
    bar = None
    if cfg.train.progress and accelerator.is_local_main_process and mine:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc="teacher pass", unit="rows", dynamic_ncols=True)
    start = time.perf_counter()
    for first in range(0, len(mine), size):
        rows = mine[first : first + size]
        batch = collate([train_ds[i] for i in rows])
        batch = {k: v.to(accelerator.device) for k, v in model_inputs(batch).items()}
        distiller.fill_cache(batch, torch.tensor(rows, device=accelerator.device))
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    distiller.cache.flush()
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - start
    rate = len(todo) / seconds if todo and seconds > 0 else None
    if todo:
        accelerator.print(f"teacher pass: {len(todo)} rows in {seconds:.1f} s ({rate or 0.0:.0f} rows/s)")
    if reused:
        accelerator.print(f"teacher pass: {reused} rows from {cfg.train.teacher_cache_dir}")
    out = {"rows": len(todo), "seconds": round(seconds, 3), "rows_per_s": round(rate, 1) if rate else None}
    if hasattr(distiller.cache, "bytes_per_token"):  # the token cache: what a scored token costs on disk
        cache = distiller.cache
        tokens = int(sum(cache.offsets[r + 1] - cache.offsets[r] for r in todo))
        out |= {"tokens": tokens, "tokens_per_s": round(tokens / seconds, 1) if todo and seconds > 0 else None}
        out |= {"k": cache.k, "bytes_per_token": cache.bytes_per_token, "directory": str(cache.directory)}
    return {**out, "reused": reused} if cfg.train.teacher_cache_dir else out
