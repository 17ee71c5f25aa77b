"""A saved model directory (``save_pretrained``'s output: a unikd run's ``student/``, an export's ``hf/``): checking
it, loading its model and tokenizer (never its own code), its facts (input names, positions, parameter counts) and
sizes on disk, and ONNX Runtime sessions. ``unikd.export`` and ``unikd.latency`` both read models through here."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch
from torch import nn

from unikd.errors import ConfigError
from unikd.models import NO_REMOTE_CODE, auto_class_for
from unikd.student import count_parameters

WEIGHT_FILES: tuple[str, ...] = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# ---------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------
def check_model_dir(model_dir: str | os.PathLike, field: str = "run_dir") -> Path:
    """``model_dir`` as a Path, or a ConfigError naming ``field`` if it holds no HF model."""
    path = Path(model_dir).expanduser()
    fix = (
        "point it at a directory written by save_pretrained (a unikd run's student/ folder): it must hold "
        "config.json and model.safetensors (or pytorch_model.bin)"
    )
    if not path.is_dir():
        raise ConfigError(field, f"model directory {str(path)!r} does not exist", fix)
    if not (path / "config.json").is_file():
        raise ConfigError(field, f"{str(path)!r} has no config.json, so it is not a Hugging Face model directory", fix)
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(field, f"{str(path)!r} has a config.json but no weights ({', '.join(WEIGHT_FILES)})", fix)
    return path


def read_model_config(model_dir: str | os.PathLike, field: str = "run_dir"):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(model_dir), **NO_REMOTE_CODE)
    except (ValueError, KeyError, OSError) as exc:
        raise ConfigError(
            field,
            f"cannot read the config in {str(model_dir)!r}: {exc}",
            "check config.json (its model_type must be known to transformers)",
        ) from exc


def load_model_dir(model_dir: str | os.PathLike, field: str = "run_dir", config=None) -> tuple[nn.Module, dict]:
    """The fp32 model in eval mode, and HF's loading info (``unexpected_keys`` are dropped weights)."""
    config = config if config is not None else read_model_config(model_dir, field)
    cls = auto_class_for(config)
    try:
        model, info = cls.from_pretrained(
            str(model_dir), config=config, dtype=torch.float32, output_loading_info=True, **NO_REMOTE_CODE
        )
    except (ValueError, OSError, RuntimeError) as exc:
        raise ConfigError(
            field,
            f"cannot load the model in {str(model_dir)!r} with {cls.__name__}: {exc}",
            "check that the weights match config.json",
        ) from exc
    model.eval()
    return model, info


def tokenizer_or_none(model_dir: str | os.PathLike):
    """The tokenizer saved next to the model, or None if there is none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), **NO_REMOTE_CODE)
    except Exception:  # noqa: BLE001 - any failure means "no usable tokenizer"
        return None


# ---------------------------------------------------------------------------------------------------
# model facts
# ---------------------------------------------------------------------------------------------------
def model_input_names(model: nn.Module) -> list[str]:
    """``input_ids``, ``attention_mask`` and ``token_type_ids`` when the model uses segment ids.

    token_type_ids are only an input where ``type_vocab_size >= 2`` (BERT, ELECTRA): RoBERTa's single
    segment is a constant, and GPT-2 would add ``wte[token_type_ids]`` for zeros instead of nothing.
    """
    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params and (getattr(model.config, "type_vocab_size", 0) or 0) >= 2:
        names.append("token_type_ids")
    return names


def max_positions(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total (shared weights counted once), embedding and non-embedding parameters: ``unikd.student.count_parameters``,
    the one counter (the embedding block's tables and its LayerNorm are embedding parameters), so export.json,
    latency.json and a run's metrics.json give the same numbers."""
    counts = count_parameters(model)
    return {"total": counts.total, "embedding": counts.embedding, "non_embedding": counts.non_embedding}


def file_bytes(path: str | os.PathLike) -> int:
    """Size on disk of a file, or of all files under a directory."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def onnx_bytes(path: str | os.PathLike) -> int:
    """Size of an ONNX file plus any external-data files it references."""
    path = Path(path)
    return path.stat().st_size + sum(p.stat().st_size for p in onnx_external_files(path) if p.is_file())


def weights_bytes(model_dir: str | os.PathLike) -> int:
    """Size of the weight file(s) of a HF directory (safetensors preferred)."""
    model_dir = Path(model_dir)
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(model_dir.glob(pattern))
        if files:
            return sum(f.stat().st_size for f in files)
    return 0


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """A CPU ONNX Runtime session; ``threads`` sets intra_op_num_threads (None: ORT's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_external_files(path: Path) -> list[Path]:
    """The external-data files an ONNX file references (none for models under 2 GB)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    names = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    return [path.parent / n for n in sorted(names) if is_within(path.parent / n, path.parent)]


def is_within(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False
