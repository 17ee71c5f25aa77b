"""CPU latency, size on disk and FLOPs of teachers and students in PyTorch and ONNX Runtime.

``bench_latency`` returns one flat row per (model, backend, batch size)::

    {"model", "backend" ("torch" | "onnx" | "int8"), "batch_size", "seq_len", "threads",
     "p50_ms", "p95_ms", "mean_ms", "min_ms", "warmup", "repeats", "sequences_per_s",
     "parameters", "non_embedding_parameters", "flops_per_sequence", "size_bytes", "path"}

``format_latency_table`` renders them as a Markdown table, ``write_latency_json`` saves them (with the
machine they were measured on), ``plot_score_vs_latency`` draws task score against batch-1 latency.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unikd.errors import ConfigError
from unikd.export import export_student
from unikd.io import atomic_path, atomic_write_json
from unikd.model_dir import (
    check_model_dir,
    load_model_dir,
    max_positions,
    model_input_names,
    onnx_bytes,
    onnx_session,
    parameter_counts,
    read_model_config,
    tokenizer_or_none,
    weights_bytes,
)
from unikd.onnx_export import check_onnx_family
from unikd.student import human_count

BACKENDS: tuple[str, ...] = ("torch", "onnx", "int8")
ONNX_FILES: dict[str, str] = {"onnx": "model.onnx", "int8": "model.int8.onnx"}


# ---------------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------------
def flops_per_sequence(model: nn.Module, seq_len: int) -> int:
    """Analytic forward FLOPs for one sequence of ``seq_len`` tokens (no KV cache)::

        FLOPs = 2 * N_nonemb * L  +  n_layers * 4 * L^2 * D

    - ``N_nonemb``: parameters outside the input embedding tables (token, position, segment); an
      output head tied to the token embedding is counted once more, since its matmul runs. Each
      weight does one multiply-add (2 FLOPs) per token.
    - ``4 * L^2 * D`` per layer: Q·Kᵀ (2·L²·D) and softmax·V (2·L²·D), with ``D = num_heads * head_dim``
      (the hidden size for every supported family). Counted in full for causal models too.
    - Softmax, norms, activations, biases-as-adds and masking are ignored (lower order).
    """
    counts = parameter_counts(model)
    n_nonemb = counts["non_embedding"]
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out_emb is not None and getattr(out_emb, "weight", None) is not None:
        tied = any(isinstance(m, nn.Embedding) and m.weight is out_emb.weight for m in model.modules())
        if tied:
            n_nonemb += out_emb.weight.numel()
    config = model.config
    n_layers = int(config.num_hidden_layers)
    width = None
    try:
        from unikd.families import model_spec

        width = model_spec(config).q_width
    except Exception:  # noqa: BLE001 - unknown family: fall back to the hidden size
        width = None
    width = width or int(config.hidden_size)
    return int(2 * n_nonemb * seq_len + n_layers * 4 * seq_len * seq_len * width)


# ---------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------
def _time_ms(fn: Callable[[], object], warmup: int, repeats: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    times = np.empty(repeats, dtype=np.float64)
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        times[i] = (time.perf_counter() - start) * 1000.0
    return times


def _stats(times: np.ndarray, batch_size: int) -> dict:
    p50 = float(np.percentile(times, 50))
    return {
        "p50_ms": p50,
        "p95_ms": float(np.percentile(times, 95)),
        "mean_ms": float(times.mean()),
        "min_ms": float(times.min()),
        "sequences_per_s": batch_size * 1000.0 / p50 if p50 > 0 else float("inf"),
    }


def _inputs(config, input_names: list[str], batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    """Fixed random token ids (seed 0), full attention mask, zero segment ids."""
    rng = np.random.default_rng(0)
    vocab = int(config.vocab_size)
    feeds = {
        "input_ids": rng.integers(min(5, vocab - 1), vocab, size=(batch_size, seq_len), dtype=np.int64),
        "attention_mask": np.ones((batch_size, seq_len), dtype=np.int64),
        "token_type_ids": np.zeros((batch_size, seq_len), dtype=np.int64),
    }
    return {name: feeds[name] for name in input_names}


# ---------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------
def _validate(
    models, batch_sizes, seq_len, threads, backends, warmup, repeats
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    if not isinstance(models, Mapping) or not models:
        raise ConfigError("models", "no models to time", "pass {name: model_dir}, e.g. {'student': 'runs/x/student'}")
    if isinstance(backends, str):
        backends = tuple(backends.split(","))
    backends = tuple(b.strip().lower() for b in backends if b.strip())
    bad = [b for b in backends if b not in BACKENDS]
    if bad or not backends:
        raise ConfigError(
            "backends", f"unknown backend(s) {bad}" if bad else "no backend given", f"use a subset of {list(BACKENDS)}"
        )
    try:
        sizes = tuple(int(b) for b in batch_sizes)
    except (TypeError, ValueError) as exc:
        raise ConfigError("batch_sizes", f"not a list of integers: {batch_sizes!r}", "use e.g. (1, 32)") from exc
    if not sizes or any(b < 1 for b in sizes):
        raise ConfigError("batch_sizes", f"need positive batch sizes, got {batch_sizes!r}", "use e.g. (1, 32)")
    if not isinstance(seq_len, int) or seq_len < 2:
        raise ConfigError("seq_len", f"must be an integer >= 2, got {seq_len!r}", "use e.g. 128")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(
            "threads",
            f"must be a positive integer or None, got {threads!r}",
            "use e.g. 1 or 4, or None for the library default",
        )
    if not isinstance(repeats, int) or repeats < 1:
        raise ConfigError("repeats", f"must be >= 1, got {repeats!r}", "use e.g. 20")
    if not isinstance(warmup, int) or warmup < 0:
        raise ConfigError("warmup", f"must be >= 0, got {warmup!r}", "use e.g. 3")
    return sizes, backends


def _resolve(name: str, path: str, scratch: Path, field: str) -> tuple[Path, dict[str, Path]]:
    """(HF model dir, existing ONNX files) for a model dir, an export dir, or a hub id."""
    p = Path(str(path)).expanduser()
    if p.is_dir() and (p / "hf" / "config.json").is_file() and not (p / "config.json").is_file():
        # an export_student output directory: reuse its ONNX files
        existing = {b: p / f for b, f in ONNX_FILES.items() if (p / f).is_file()}
        return check_model_dir(p / "hf", field), existing
    s = str(path)
    looks_local = s.startswith((".", "/", "~")) or p.exists() or s.count("/") > 1
    if looks_local:
        return check_model_dir(p, field), {}
    # a hub id: materialize it once so sizes on disk and ONNX export work on a local directory
    target = scratch / _dir_name(name) / "hf"
    if not (target / "config.json").is_file():
        try:
            config = read_model_config(s, field)
            model, _ = load_model_dir(s, field, config)
        except ConfigError as exc:
            raise ConfigError(
                field,
                f"{s!r} is neither a local model directory nor a loadable hub id ({exc.problem})",
                "check the path, or the network for hub ids",
            ) from exc
        model.save_pretrained(str(target))
        tokenizer = tokenizer_or_none(s)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(target))
    return check_model_dir(target, field), {}


def _dir_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"


# ---------------------------------------------------------------------------------------------------
# bench_latency
# ---------------------------------------------------------------------------------------------------
def bench_latency(
    models: dict[str, str],
    batch_sizes: Sequence[int] = (1, 32),
    seq_len: int = 128,
    threads: int | None = None,
    backends: Sequence[str] = BACKENDS,
    warmup: int = 3,
    repeats: int = 20,
    work_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """Time each model in each backend at each batch size; one row per (model, backend, batch size).

    ``models`` maps a display name to a HF model directory, an ``export_student`` output directory
    (its ``hf/`` and ONNX files are reused) or a hub id. ONNX / int8 forms that do not exist yet are
    exported with ``export_student`` into ``work_dir/<name>/`` (a temporary directory, removed at the
    end, when ``work_dir`` is None). Inputs are fixed random token ids of length ``seq_len`` with a
    full attention mask. ``threads`` sets ``torch.set_num_threads`` (restored afterwards) and ONNX
    Runtime's ``intra_op_num_threads``; None keeps each library's default.

    p50/p95 are over ``repeats`` timed calls after ``warmup`` untimed ones. ``size_bytes`` is the
    safetensors file(s) for torch and the .onnx file (+ external data) for ONNX. FLOPs per sequence
    follow ``flops_per_sequence``: ``2 * N_nonemb * L + n_layers * 4 * L^2 * D``.
    """
    sizes, backends = _validate(models, batch_sizes, seq_len, threads, backends, warmup, repeats)
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="unikd-latency-")
        scratch = Path(tmp.name)
    else:
        scratch = Path(work_dir).expanduser()
        scratch.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    rows: list[dict] = []
    try:
        plan = _plan(models, seq_len, backends, scratch)  # every model resolved and checked before timing any
        if threads:
            torch.set_num_threads(threads)
        for name, field, hf_dir, existing, config in plan:
            model, _ = load_model_dir(hf_dir, field, config)
            common = {
                "model": name,
                "seq_len": seq_len,
                "threads": threads,
                "warmup": warmup,
                "repeats": repeats,
                **_counts(model, seq_len),
            }
            onnx_paths = _onnx_forms(name, hf_dir, existing, backends, seq_len, scratch)
            for backend in backends:
                rows += _time_backend(model, name, field, hf_dir, config, backend, onnx_paths, sizes, common)
            del model
    finally:
        torch.set_num_threads(old_threads)
        if tmp is not None:
            tmp.cleanup()
    return rows


def _plan(models: dict[str, str], seq_len: int, backends, scratch: Path) -> list[tuple]:
    """(name, field, HF directory, existing ONNX files, config) of every model, each checked: its positions hold
    ``seq_len``, its family exports to ONNX when an ONNX backend is timed."""
    plan = []
    for name, path in models.items():
        field = f"models[{name!r}]"
        hf_dir, existing = _resolve(name, path, scratch, field)
        config = read_model_config(hf_dir, field)
        limit = max_positions(config)
        if limit is not None and seq_len > limit:
            raise ConfigError(
                "seq_len", f"seq_len={seq_len} exceeds {name!r}'s {limit} positions", f"use seq_len <= {limit}"
            )
        if any(b in ONNX_FILES for b in backends):
            check_onnx_family(config, field)
        plan.append((name, field, hf_dir, existing, config))
    return plan


def _counts(model: nn.Module, seq_len: int) -> dict:
    counts = parameter_counts(model)
    return {
        "parameters": counts["total"],
        "non_embedding_parameters": counts["non_embedding"],
        "flops_per_sequence": flops_per_sequence(model, seq_len),
    }


def _onnx_forms(name: str, hf_dir: Path, existing: dict, backends, seq_len: int, scratch: Path) -> dict:
    """backend -> ONNX file: the ones found beside the model, the missing ones exported into ``scratch``."""
    onnx_paths = dict(existing)
    missing = [b for b in backends if b in ONNX_FILES and b not in onnx_paths]
    if missing:
        out = scratch / _dir_name(name)
        formats = ("onnx", "int8") if "int8" in missing else ("onnx",)
        export_student(hf_dir, out, formats=formats, seq_len=min(seq_len, 128))
        for b in missing:
            onnx_paths[b] = out / ONNX_FILES[b]
    return onnx_paths


def _time_backend(model, name, field, hf_dir, config, backend, onnx_paths, sizes, common) -> list[dict]:
    """One row per batch size of ``model`` timed in ``backend``; a model that does not run is named."""
    input_names = model_input_names(model)
    if backend == "torch":
        run, size, path = _torch_runner(model), weights_bytes(hf_dir), hf_dir
    else:
        path = onnx_paths[backend]
        run, size = _onnx_runner(onnx_session(path, common["threads"])), onnx_bytes(path)
    rows = []
    for bs in sizes:
        feeds = _inputs(config, input_names, bs, common["seq_len"])
        try:
            run(feeds)  # also a check that the model runs on these inputs at all
        except Exception as exc:
            raise ConfigError(
                field,
                f"{name!r} ({type(model).__name__}) does not run on "
                f"{input_names} in {backend}: {type(exc).__name__}: {exc}",
                "time encoder-only or decoder-only models",
            ) from exc
        times = _time_ms(lambda run=run, feeds=feeds: run(feeds), common["warmup"], common["repeats"])
        rows.append(
            {
                **common,
                "backend": backend,
                "batch_size": bs,
                **_stats(times, bs),
                "size_bytes": int(size),
                "path": str(path),
            }
        )
    return rows


def torch_latency_ms(
    model: nn.Module, seq_len: int, batch_size: int = 1, threads: int | None = 1, warmup: int = 3, repeats: int = 20
) -> float:
    """p50 latency (ms) of an in-memory PyTorch model on the inputs ``bench_latency`` uses (fixed random ids,
    full mask), with ``threads`` torch threads (restored afterwards; None keeps the current count). Weights do
    not change the time, so a model with random weights times a shape before anything is trained."""
    _validate({"model": model}, (batch_size,), seq_len, threads, ("torch",), warmup, repeats)
    old_threads = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        feeds = _inputs(model.config, model_input_names(model), batch_size, seq_len)
        run = _torch_runner(model)
        return _stats(_time_ms(lambda: run(feeds), warmup, repeats), batch_size)["p50_ms"]
    finally:
        torch.set_num_threads(old_threads)


def _torch_runner(model: nn.Module):
    import inspect

    extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    model.eval()

    def run(feeds: dict[str, np.ndarray]):
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}, **extra)

    return run


def _onnx_runner(session):
    names = [i.name for i in session.get_inputs()]

    def run(feeds: dict[str, np.ndarray]):
        return session.run(None, {n: feeds[n] for n in names})

    return run


# ---------------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------------
def format_latency_table(rows: Sequence[dict]) -> str:
    """A Markdown table (also readable as plain text), one line per row, in the given order."""
    header = [
        "model",
        "backend",
        "batch",
        "seq",
        "p50 ms",
        "p95 ms",
        "seq/s",
        "params",
        "non-emb",
        "size MB",
        "GFLOPs/seq",
    ]
    lines = []
    for r in rows:
        lines.append(
            [
                str(r["model"]),
                str(r["backend"]),
                str(r["batch_size"]),
                str(r["seq_len"]),
                f"{r['p50_ms']:.2f}",
                f"{r['p95_ms']:.2f}",
                f"{r['sequences_per_s']:.1f}",
                human_count(r["parameters"]),
                human_count(r["non_embedding_parameters"]),
                f"{r['size_bytes'] / 1e6:.2f}",
                f"{r['flops_per_sequence'] / 1e9:.3f}",
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    right = set(range(2, len(header)))

    def fmt(cells):
        return (
            "| "
            + " | ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
            + " |"
        )

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(header), sep, *(fmt(line) for line in lines)])


def _environment() -> dict:
    import transformers

    env = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_default_threads": torch.get_num_threads(),
    }
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return env


def write_latency_json(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Atomically write ``{"rows": rows, "environment": {...}}`` (platform, CPU count, versions)."""
    atomic_write_json(path, {"rows": list(rows), "environment": _environment()})


def plot_score_vs_latency(rows: Sequence[dict], scores: Mapping[str, float], path: str | os.PathLike) -> Path:
    """Scatter of task score against p50 latency at batch size 1, one marker per model/backend.

    ``scores`` maps a model name to its score; a key ``"name/backend"`` (e.g. ``"student/int8"``)
    overrides it for that backend. Rows without a score are left out. If batch size 1 was not timed,
    the smallest timed batch size is used (and named on the axis).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise ConfigError("rows", "no latency rows to plot", "run bench_latency first")
    batch = 1 if any(r["batch_size"] == 1 for r in rows) else min(r["batch_size"] for r in rows)
    points = []
    for r in rows:
        if r["batch_size"] != batch:
            continue
        score = scores.get(f"{r['model']}/{r['backend']}", scores.get(r["model"]))
        if score is None:
            continue
        points.append((r["model"], r["backend"], float(r["p50_ms"]), float(score)))
    if not points:
        raise ConfigError(
            "scores",
            f"no score for any timed model ({sorted({r['model'] for r in rows})})",
            "pass scores keyed by the model names given to bench_latency",
        )

    fig = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    markers = {"torch": "o", "onnx": "s", "int8": "^"}
    model_names = list(dict.fromkeys(p[0] for p in points))
    colors = {m: f"C{i % 10}" for i, m in enumerate(model_names)}
    for model, backend, latency, score in points:
        ax.scatter(
            latency, score, marker=markers.get(backend, "x"), color=colors[model], s=60, label=f"{model} ({backend})"
        )
        ax.annotate(f"{model}/{backend}", (latency, score), textcoords="offset points", xytext=(5, 4), fontsize=8)
    latencies = [p[2] for p in points]
    if min(latencies) > 0 and max(latencies) / min(latencies) > 10:
        ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency at batch {batch}, seq {rows[0]['seq_len']} (ms)")
    ax.set_ylabel("score")
    ax.set_title("score vs CPU latency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), dpi=120)
    return path


__all__ = [
    "BACKENDS",
    "bench_latency",
    "flops_per_sequence",
    "format_latency_table",
    "plot_score_vs_latency",
    "torch_latency_ms",
    "write_latency_json",
]
