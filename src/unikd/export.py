"""Export a trained student for CPU / edge inference: a clean HF directory, ONNX fp32, ONNX int8.

Every exported form is checked against the PyTorch model on real (tokenized) inputs whose batch size
and length differ from the ones used at export time, so a graph that silently baked in a shape or a
data-dependent branch is caught here rather than in production.

Layout of ``out_dir``::

    hf/               save_pretrained: config.json, model.safetensors, tokenizer files
    model.onnx        fp32 ONNX (dynamic batch and sequence axes)
    model.int8.onnx   ONNX Runtime dynamic quantization, QInt8 weights
    export.json       paths, sizes on disk, max abs diffs against PyTorch, settings, parameters

The graphs come from ``unikd.onnx_export`` (the exporter and why it is the TorchScript one), the model
directory's facts from ``unikd.model_dir``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unikd.errors import ConfigError
from unikd.io import atomic_write_json
from unikd.model_dir import (
    check_model_dir,
    file_bytes,
    is_within,
    load_model_dir,
    max_positions,
    model_input_names,
    onnx_bytes,
    onnx_external_files,
    onnx_session,
    parameter_counts,
    read_model_config,
    tokenizer_or_none,
    weights_bytes,
)
from unikd.onnx_export import (
    DEFAULT_OPSET,
    FP32_TOLERANCE,
    ONNX_FAMILIES,
    OnnxWrapper,
    check_onnx_family,
    dummy_inputs,
    export_onnx,
    output_name_of,
    quantize_onnx_int8,
)

FORMATS: tuple[str, ...] = ("hf", "onnx", "int8")
#: sentences used to check exported forms when ``check_inputs`` is not given (lengths vary on purpose).
DEFAULT_CHECK_TEXTS: tuple[str, ...] = (
    "A charming and often affecting journey.",
    "Unflinchingly bleak and desperate.",
    "The film is strictly routine, and the plot never surprises anyone who has seen a movie before.",
    "Great!",
    "It is a well-made, intelligent picture that takes its time and rewards the patience of its audience.",
    "Not funny.",
    "The performances are uniformly excellent, but the script wanders off somewhere in the second hour.",
)
#: batch sizes of the check batches (the export trace uses batch 2 at length ``seq_len``).
CHECK_BATCH_SIZES: tuple[int, ...] = (1, 3, 5)

logger = logging.getLogger(__name__)


class ExportCheckError(RuntimeError):
    """An exported fp32 ONNX graph disagrees with PyTorch beyond ``FP32_TOLERANCE``."""


@dataclass
class EvalSet:
    """A labelled dev set to score each exported form on (``export_student(eval_set=...)``).

    ``metric_fn(logits: np.ndarray [N, C], labels: np.ndarray [N]) -> dict[str, float]``.
    """

    texts_a: Sequence[str]
    labels: Sequence[Any]
    metric_fn: Callable[[np.ndarray, np.ndarray], dict]
    texts_b: Sequence[str] | None = None
    batch_size: int = 32
    max_length: int = 128


# ---------------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------------
def _prepare_tokenizer(tokenizer):
    if tokenizer is None:
        return None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            return None
    return tokenizer


def _check_batches(
    config, input_names: list[str], tokenizer, texts: Sequence[str], seq_len: int
) -> list[dict[str, np.ndarray]]:
    """Batches of sizes CHECK_BATCH_SIZES; tokenized texts if possible, else random ids."""
    texts = list(texts) or list(DEFAULT_CHECK_TEXTS)
    limit = max_positions(config) or seq_len
    batches = []
    for i, size in enumerate(CHECK_BATCH_SIZES):
        if tokenizer is not None:
            chunk = [texts[(i * 2 + j) % len(texts)] for j in range(size)]
            enc = tokenizer(
                chunk, padding="longest", truncation=True, max_length=min(seq_len, limit), return_tensors="np"
            )
            batch = {
                "input_ids": enc["input_ids"].astype(np.int64),
                "attention_mask": enc["attention_mask"].astype(np.int64),
            }
            if "token_type_ids" in input_names:
                tt = enc.get("token_type_ids")
                batch["token_type_ids"] = np.zeros_like(batch["input_ids"]) if tt is None else tt.astype(np.int64)
        else:
            length = max(2, min(limit, 7 + 6 * i))
            t = dummy_inputs(config, input_names, batch=size, length=length, seed=100 + i)
            batch = {k: v.numpy() for k, v in t.items()}
        batches.append({name: batch[name] for name in input_names})
    return batches


def _torch_outputs(model: nn.Module, batch: dict[str, np.ndarray], output_name: str) -> np.ndarray:
    wrapper = OnnxWrapper(model, list(batch), output_name)  # the exported graph's own output (QA: its span pair)
    with torch.inference_mode():
        out = wrapper(*(torch.from_numpy(v) for v in batch.values()))
    return out.float().numpy()


def _max_abs_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Max |a-b|; for per-token outputs only over real (unpadded) positions."""
    diff = np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32))
    if diff.ndim >= 3:
        diff = diff[mask.astype(bool)]
    return float(diff.max()) if diff.size else 0.0


def _min_cosine(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Worst per-example cosine similarity of two outputs (per-token outputs: over real tokens)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim >= 3:
        m = mask.astype(bool)[..., None]
        a, b = a * m, b * m
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norms > 0, (a * b).sum(1) / np.where(norms > 0, norms, 1.0), 1.0)
    return float(cos.min()) if cos.size else 1.0


def _compare_onnx(
    session, model_refs: list[np.ndarray], batches: list[dict[str, np.ndarray]], classification: bool
) -> dict:
    worst = 0.0
    min_cos = 1.0
    agree = total = 0
    for ref, batch in zip(model_refs, batches):
        out = session.run(None, batch)[0]
        worst = max(worst, _max_abs_diff(out, ref, batch["attention_mask"]))
        min_cos = min(min_cos, _min_cosine(out, ref, batch["attention_mask"]))
        if classification:
            agree += int((out.argmax(-1) == ref.argmax(-1)).sum())
            total += ref.shape[0]
    result = {"max_abs_diff": worst, "min_cosine": min_cos}
    if classification and total:
        result["argmax_agreement"] = agree / total
    return result


# ---------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------
def _tokenize_pairs(tokenizer, texts_a, texts_b, max_length: int):
    if texts_b is None:
        return tokenizer(list(texts_a), padding="longest", truncation=True, max_length=max_length, return_tensors="np")
    return tokenizer(
        list(texts_a), list(texts_b), padding="longest", truncation=True, max_length=max_length, return_tensors="np"
    )


def _iter_batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(n, start + batch_size)


def _check_eval_args(texts_a, texts_b, labels, batch_size) -> None:
    if len(texts_a) == 0:
        raise ConfigError("texts_a", "the dev set is empty", "pass at least one example")
    if texts_b is not None and len(texts_b) != len(texts_a):
        raise ConfigError(
            "texts_b",
            f"{len(texts_b)} second sentences for {len(texts_a)} first sentences",
            "pass one texts_b entry per texts_a entry, or texts_b=None",
        )
    if len(labels) != len(texts_a):
        raise ConfigError("labels", f"{len(labels)} labels for {len(texts_a)} examples", "pass one label per example")
    if batch_size < 1:
        raise ConfigError("batch_size", f"must be >= 1, got {batch_size}", "use e.g. 32")


def evaluate_onnx(
    onnx_path: str | os.PathLike,
    tokenizer,
    texts_a: Sequence[str],
    texts_b: Sequence[str] | None,
    labels: Sequence[Any],
    task_metric_fn: Callable[[np.ndarray, np.ndarray], dict],
    batch_size: int = 32,
    max_length: int = 128,
    threads: int | None = None,
) -> dict:
    """Run an exported model over a labelled dev set with ONNX Runtime.

    ``tokenizer`` is a tokenizer or a directory holding one; ``texts_b`` is None for single-sentence
    tasks. ``task_metric_fn(logits [N, C] float32, labels [N]) -> dict``. Inputs the graph declares but
    the tokenizer does not produce (token_type_ids) are fed as zeros.

    Returns ``{"predictions": logits ndarray, "metrics": dict, "num_examples": N, "seconds": float}``.

    Note: a dynamically quantized (int8) graph computes one activation scale per input tensor, i.e.
    per batch, so its predictions depend slightly on ``batch_size`` and on padding; fp32 ones do not.
    Compare int8 and fp32 metrics at the same ``batch_size``.
    """
    _check_eval_args(texts_a, texts_b, labels, batch_size)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ConfigError("onnx_path", f"{str(onnx_path)!r} does not exist", "run export_student first")
    if isinstance(tokenizer, (str, os.PathLike)):
        tok_dir = tokenizer
        tokenizer = tokenizer_or_none(tok_dir)
        if tokenizer is None:
            raise ConfigError("tokenizer", f"no tokenizer in {str(tok_dir)!r}", "pass a tokenizer or its directory")
    tokenizer = _prepare_tokenizer(tokenizer)
    if tokenizer is None:
        raise ConfigError("tokenizer", "the tokenizer has no pad or eos token", "set tokenizer.pad_token")
    session = onnx_session(onnx_path, threads)
    graph_inputs = [i.name for i in session.get_inputs()]
    outputs = []
    start_time = time.perf_counter()
    for lo, hi in _iter_batches(len(texts_a), batch_size):
        enc = _tokenize_pairs(tokenizer, texts_a[lo:hi], None if texts_b is None else texts_b[lo:hi], max_length)
        feed = {}
        for name in graph_inputs:
            value = enc.get(name)
            feed[name] = (np.zeros_like(enc["input_ids"]) if value is None else value).astype(np.int64)
        out = session.run(None, feed)[0]
        if out.ndim == 3:  # per-token output: keep the last real token (decoder classification style)
            last = feed["attention_mask"].sum(1) - 1
            out = out[np.arange(out.shape[0]), last]
        outputs.append(out.astype(np.float32))
    seconds = time.perf_counter() - start_time
    logits = np.concatenate(outputs, 0)
    metrics = task_metric_fn(logits, np.asarray(labels))
    return {"predictions": logits, "metrics": dict(metrics), "num_examples": len(texts_a), "seconds": seconds}


def _evaluate_torch(model: nn.Module, tokenizer, ev: EvalSet, output_name: str = "logits") -> dict:
    input_names = model_input_names(model)
    outputs = []
    for lo, hi in _iter_batches(len(ev.texts_a), ev.batch_size):
        enc = _tokenize_pairs(
            tokenizer, ev.texts_a[lo:hi], None if ev.texts_b is None else ev.texts_b[lo:hi], ev.max_length
        )
        batch = {
            n: (np.zeros_like(enc["input_ids"]) if enc.get(n) is None else enc[n]).astype(np.int64) for n in input_names
        }
        out = _torch_outputs(model, batch, output_name)
        if out.ndim == 3:
            last = batch["attention_mask"].sum(1) - 1
            out = out[np.arange(out.shape[0]), last]
        outputs.append(out)
    logits = np.concatenate(outputs, 0)
    return dict(ev.metric_fn(logits, np.asarray(ev.labels)))


# ---------------------------------------------------------------------------------------------------
# export_student
# ---------------------------------------------------------------------------------------------------
def _normalize_formats(formats) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = formats.split(",")
    out = []
    for f in formats:
        f = str(f).strip().lower()
        if not f:
            continue
        if f not in FORMATS:
            raise ConfigError("formats", f"unknown export format {f!r}", f"use a subset of {list(FORMATS)}")
        if f not in out:
            out.append(f)
    if not out:
        raise ConfigError("formats", "no export format given", f"use a subset of {list(FORMATS)}")
    return tuple(out)


def _write_hf(model: nn.Module, tokenizer, hf_dir: Path) -> list[str]:
    """save_pretrained into a temp dir, check no projection weights, then swap it into place."""
    from safetensors import safe_open

    tmp = hf_dir.parent / f".{hf_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        keys: list[str] = []
        for f in sorted(tmp.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as handle:
                keys.extend(handle.keys())
        leaked = [k for k in keys if "projection" in k.lower()]
        if leaked:
            raise ConfigError(
                "run_dir",
                f"the student's weights contain projection parameters {leaked[:3]}",
                "projections belong to the distillation plan; save only the student model",
            )
        if hf_dir.exists():
            shutil.rmtree(hf_dir)
        os.replace(tmp, hf_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return keys


def _remove_stale_forms(out_dir: Path, formats: Sequence[str]) -> list[str]:
    """Delete the forms an earlier export wrote into ``out_dir`` (as its export.json lists them) that this
    export does not rewrite: they may belong to another model, and out_dir must describe one export.
    They are derived files, reproducible from the run directory; nothing else in out_dir is touched."""
    previous = out_dir / "export.json"
    try:
        files = json.loads(previous.read_text()).get("files", {}) if previous.is_file() else {}
    except (OSError, ValueError):
        return []
    removed = []
    for form, entry in files.items():
        path = Path(entry.get("path", "")) if isinstance(entry, dict) else None
        if form in formats or path is None or not is_within(path, out_dir) or not path.exists():
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            with contextlib.suppress(Exception):  # an unreadable graph: only the file itself goes
                for extra in onnx_external_files(path):
                    extra.unlink(missing_ok=True)
            path.unlink()
        removed.append(str(path))
        logger.info("removed %s, left from an earlier export of other formats", path)
    return removed


def _versions() -> dict[str, str]:
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    for mod in ("onnx", "onnxruntime"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return versions


def export_student(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    formats: Sequence[str] = ("hf", "onnx", "int8"),
    seq_len: int = 128,
    opset: int | None = None,
    check_inputs: Sequence[str] | None = None,
    eval_set: EvalSet | None = None,
) -> dict:
    """Export the student in ``model_dir`` to ``out_dir`` and check each form against PyTorch.

    - ``hf``: ``out_dir/hf`` via save_pretrained (safetensors) + tokenizer; only the student's own
      weights (anything in ``model_dir`` the architecture does not use, e.g. projections, is dropped
      and listed under ``dropped_keys``). Checked by reloading it.
    - ``onnx``: ``out_dir/model.onnx``, traced at batch 2 x ``seq_len`` with one padded row, with
      dynamic batch/sequence axes. Must match PyTorch within ``FP32_TOLERANCE``, else
      ``ExportCheckError`` (export.json is still written, with ``"ok": false``).
    - ``int8``: ``out_dir/model.int8.onnx`` (needs the fp32 ONNX, which is then written too). Its max
      abs diff and argmax agreement are reported, not enforced.

    Checks use ``check_inputs`` (texts; default: ``DEFAULT_CHECK_TEXTS``), tokenized with the saved
    tokenizer into batches of sizes ``CHECK_BATCH_SIZES`` with their natural (padded) lengths; random
    ids when there is no tokenizer. With ``eval_set`` the task metric of PyTorch, ONNX and int8 is
    reported side by side under ``task_metrics``.

    Returns the dict also written to ``out_dir/export.json``.
    """
    formats, model_dir, out_dir, config = _check_export(model_dir, out_dir, formats, seq_len)
    model, info = load_model_dir(model_dir, "run_dir", config)
    tokenizer = tokenizer_or_none(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_forms(out_dir, formats)
    input_names = model_input_names(model)
    check_tok = _prepare_tokenizer(tokenizer_or_none(model_dir)) if tokenizer is not None else None
    batches = _check_batches(config, input_names, check_tok, check_inputs or DEFAULT_CHECK_TEXTS, seq_len)
    result = _header(model_dir, out_dir, config, model, info, formats, seq_len, opset, tokenizer, batches)
    refs, classification = [], False
    if "onnx" in formats or eval_set is not None:
        result["output_name"], _ = output_name_of(model, {k: torch.from_numpy(v) for k, v in batches[0].items()})
        refs = [_torch_outputs(model, b, result["output_name"]) for b in batches]
        classification = result["output_name"] == "logits" and refs[0].ndim == 2
    result["input_names"] = input_names
    failure = None
    if "hf" in formats:
        failure = _export_hf(model, tokenizer, out_dir, result)
    if "onnx" in formats:
        failure = (
            _export_onnx_forms(model, out_dir, formats, seq_len, opset, refs, batches, classification, result)
            or failure
        )
    if eval_set is not None:
        result["task_metrics"] = _evaluate_all(model, check_tok, eval_set, result)
    atomic_write_json(out_dir / "export.json", result)
    if failure:
        raise ExportCheckError(failure)
    return result


def _check_export(model_dir, out_dir, formats, seq_len: int):
    """The formats (int8 brings the fp32 ONNX it is quantized from), the model directory, the output directory
    and the model's config, checked before anything is written: (formats, model_dir, out_dir, config)."""
    formats = _normalize_formats(formats)
    if "int8" in formats and "onnx" not in formats:
        formats = tuple(f for f in FORMATS if f in formats or f == "onnx")
    if not isinstance(seq_len, int) or seq_len < 2:
        raise ConfigError("seq_len", f"must be an integer >= 2, got {seq_len!r}", "use e.g. 128")
    model_dir = check_model_dir(model_dir, "run_dir")
    out_dir = Path(out_dir).expanduser()
    if is_within(model_dir, out_dir / "hf"):
        raise ConfigError(
            "out_dir",
            f"{str(out_dir)!r} would overwrite the model being exported ({model_dir})",
            "choose another output directory",
        )
    config = read_model_config(model_dir, "run_dir")
    if "onnx" in formats:
        check_onnx_family(config, "run_dir")
        limit = max_positions(config)
        if limit is not None and seq_len > limit:
            raise ConfigError(
                "seq_len", f"seq_len={seq_len} exceeds the model's {limit} positions", f"use seq_len <= {limit}"
            )
    return formats, model_dir, out_dir, config


def _header(model_dir, out_dir, config, model, info, formats, seq_len, opset, tokenizer, batches) -> dict[str, Any]:
    """export.json's description of the export: what was exported, with which settings and versions."""
    return {
        "model_dir": str(model_dir),
        "out_dir": str(out_dir),
        "model_type": config.model_type,
        "architecture": type(model).__name__,
        "formats": list(formats),
        "settings": {
            "seq_len": seq_len,
            "opset": opset or DEFAULT_OPSET,
            "exporter": "torch.onnx.export(dynamo=False)",
            "int8": "onnxruntime.quantization.quantize_dynamic(weight_type=QInt8, per_channel=True)",
            "fp32_tolerance": FP32_TOLERANCE,
        },
        "parameters": parameter_counts(model),
        "dropped_keys": sorted(info.get("unexpected_keys", []) or []),
        "tokenizer": tokenizer is not None,
        "versions": _versions(),
        "check_inputs": [
            {"batch_size": int(b["input_ids"].shape[0]), "length": int(b["input_ids"].shape[1])} for b in batches
        ],
        "files": {},
        "checks": {},
        "output_name": None,
    }


def _export_hf(model, tokenizer, out_dir: Path, result: dict) -> str | None:
    """``out_dir/hf``, reloaded and compared tensor by tensor; the failure message, or None."""
    hf_dir = out_dir / "hf"
    _write_hf(model, tokenizer, hf_dir)
    reloaded, _ = load_model_dir(hf_dir, "run_dir")
    result["files"]["hf"] = {"path": str(hf_dir), "bytes": weights_bytes(hf_dir), "dir_bytes": file_bytes(hf_dir)}
    result["checks"]["hf"] = _compare_state(model, reloaded)
    if not result["checks"]["hf"]["ok"]:
        return f"the saved HF directory does not reload to the same weights; see {out_dir / 'export.json'}"
    return None


def _export_onnx_forms(model, out_dir: Path, formats, seq_len, opset, refs, batches, classification, result):
    """``model.onnx`` (checked within ``FP32_TOLERANCE``) and, when asked, ``model.int8.onnx`` (reported); the fp32
    failure message, or None."""
    onnx_path = out_dir / "model.onnx"
    graph = export_onnx(model, onnx_path, seq_len=seq_len, opset=opset, field="run_dir")
    check = _compare_onnx(onnx_session(onnx_path), refs, batches, classification)
    check["tolerance"] = FP32_TOLERANCE
    check["ok"] = check["max_abs_diff"] <= FP32_TOLERANCE
    result["files"]["onnx"] = {"path": str(onnx_path), "bytes": onnx_bytes(onnx_path)}
    result["checks"]["onnx"] = check
    result["settings"]["opset"] = graph["opset"]
    if "int8" in formats:
        int8_path = out_dir / "model.int8.onnx"
        quantize_onnx_int8(onnx_path, int8_path)
        result["checks"]["int8"] = _compare_onnx(onnx_session(int8_path), refs, batches, classification)
        result["files"]["int8"] = {"path": str(int8_path), "bytes": onnx_bytes(int8_path)}
        if result["files"]["onnx"]["bytes"]:
            result["files"]["int8"]["size_ratio_vs_fp32"] = (
                result["files"]["int8"]["bytes"] / result["files"]["onnx"]["bytes"]
            )
    if check["ok"]:
        return None
    return f"ONNX fp32 differs from PyTorch by {check['max_abs_diff']:.3g} (> {FP32_TOLERANCE}); see {out_dir / 'export.json'}"


def _compare_state(model: nn.Module, reloaded: nn.Module) -> dict:
    """The reloaded HF directory must hold exactly the student's tensors (max abs diff 0)."""
    ref, got = model.state_dict(), reloaded.state_dict()
    missing = sorted(set(ref) - set(got))
    worst = 0.0
    for key, value in ref.items():
        if key in got and got[key].shape == value.shape:
            if value.numel():
                worst = max(worst, float((got[key].float() - value.float()).abs().max()))
        elif key in got:
            missing.append(key)
    return {"max_abs_diff": worst, "missing_keys": missing, "ok": worst <= FP32_TOLERANCE and not missing}


def _evaluate_all(model: nn.Module, tokenizer, ev: EvalSet, result: dict) -> dict:
    _check_eval_args(ev.texts_a, ev.texts_b, ev.labels, ev.batch_size)
    tok = tokenizer
    if tok is None:
        raise ConfigError(
            "eval_set",
            "the model directory has no usable tokenizer",
            "save the tokenizer next to the student (tokenizer.save_pretrained)",
        )
    metrics = {"torch": _evaluate_torch(model, tok, ev, result["output_name"])}
    for form in ("onnx", "int8"):
        if form in result["files"]:
            out = evaluate_onnx(
                result["files"][form]["path"],
                tok,
                ev.texts_a,
                ev.texts_b,
                ev.labels,
                ev.metric_fn,
                batch_size=ev.batch_size,
                max_length=ev.max_length,
            )
            metrics[form] = out["metrics"]
    metrics["num_examples"] = len(ev.texts_a)
    return metrics


__all__ = [
    "DEFAULT_OPSET",
    "EvalSet",
    "ExportCheckError",
    "FP32_TOLERANCE",
    "FORMATS",
    "ONNX_FAMILIES",
    "evaluate_onnx",
    "export_onnx",
    "export_student",
    "quantize_onnx_int8",
]
