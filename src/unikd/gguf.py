"""GGUF teachers: a ``.gguf`` file (llama.cpp's format) becomes a Hugging Face model directory once, then loads as
any other.

``teacher.path: <dir>/<model>.gguf`` (or ``teacher.path: <dir>`` with ``teacher.gguf_file: <model>.gguf``) is read
with transformers' own GGUF loader (``from_pretrained(dir, gguf_file=...)``, which needs ``pip install gguf``): it
de-quantizes the weights to fp32 and builds the config and tokenizer from the file's metadata. The result is saved
with ``save_pretrained`` under ``$UNIKD_CACHE/gguf/<stem>-<key>/`` (key: the file's path, size and modification
time), written to a temporary directory and renamed, so a killed conversion leaves nothing half-written. Every later
run, and every tool that reads the teacher (validate, the student's init, the export), sees that directory:
de-quantizing SmolLM2-135M's Q4_1 file took 13-27 s per load on 2 shared cores; its safetensors copy loads in
about 1 s. The weights are the de-quantized ones, not the original model's (a 4-bit file is an approximation).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from unikd.errors import ConfigError, warn


def cache_root() -> Path:
    return Path(os.environ.get("UNIKD_CACHE", Path.home() / ".cache" / "unikd")) / "gguf"


def gguf_source(path: str, gguf_file: str | None) -> Path | None:
    """The GGUF file a teacher names (a path ending in .gguf, or a directory plus ``teacher.gguf_file``), else None."""
    if gguf_file:
        return Path(path).expanduser() / gguf_file
    if path.lower().endswith(".gguf"):
        return Path(path).expanduser()
    return None


def gguf_model_dir(file: Path, field: str = "teacher.path") -> str:
    """The Hugging Face directory converted from ``file`` (made on first use; see the module docstring)."""
    if not file.is_file():
        raise ConfigError(
            field, f"the GGUF file {str(file)!r} does not exist", "check teacher.path / teacher.gguf_file"
        )
    stat = file.stat()
    key = hashlib.sha256(f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / f"{file.stem}-{key}"
    if (target / "config.json").is_file():
        return str(target)
    try:
        import gguf  # noqa: F401 - transformers needs it to read the file
    except ImportError as exc:
        raise ConfigError(
            field,
            f"{str(file)!r} is a GGUF file, and reading one needs the gguf package",
            "pip install gguf (or pip install 'unikd[gguf]')",
        ) from exc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    warn(f"{field}: de-quantizing {file.name} to an fp32 model directory once, in {target}")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name, trust_remote_code=False)
    except Exception as exc:  # gguf, transformers and torch raise their own types for a file they cannot read
        raise ConfigError(
            field,
            f"transformers could not load the GGUF file {str(file)!r} ({type(exc).__name__}: {exc})",
            "check that the file is a complete GGUF of an architecture transformers reads (llama, qwen2, mistral, "
            "gpt2, ...)",
        ) from exc
    model = _plain_copy(model)
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if (file.parent / "chat_template.jinja").is_file():  # a template shipped beside the file wins over the metadata's
        shutil.copyfile(file.parent / "chat_template.jinja", tmp / "chat_template.jinja")
    if target.exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(target)
    return str(target)


def _plain_copy(model):
    """The de-quantized model as an ordinary one: transformers marks a GGUF-loaded model quantized (its config
    carries a GgufConfig) and refuses to save it, although its weights are plain fp32 tensors; the same
    architecture built from the config without it, holding the same tensors, saves as any model."""
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    tied = set(getattr(plain, "_tied_weights_keys", None) or [])  # a list or a dict of names: its keys either way
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"GGUF copy: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    return plain.eval()
