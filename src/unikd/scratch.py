"""A decoder to train from scratch, for a user without any pre-trained one: ``unikd student new`` writes a randomly
initialized causal LM (config, safetensors weights, the tokenizer) into a model directory, which every stage then
reads like a pre-trained model: ``stage: finetune`` trains it on causal-LM data into a teacher, and a KD run
distils that teacher as any other (docs: README, "Generative decoders").

==========  ================================================================================================
family      the transformers config it writes
==========  ================================================================================================
``llama``   ``LlamaConfig``: RMSNorm, rotary positions, SwiGLU FFN (``ffn_size``, default 8/3 x width rounded
            to 64), grouped KV heads (``num_kv_heads``, default ``num_heads``), tied input/output embeddings
``gpt2``    ``GPT2Config``: learned positions, GELU FFN of 4 x width, tied embeddings
==========  ================================================================================================

The vocabulary is the tokenizer's full size (``len(tokenizer)``, added tokens included), so every id it emits has
a row; BOS/EOS come from the tokenizer (its EOS where it has no BOS). The weights are the family's own
initialization drawn from ``seed``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from unikd.errors import ConfigError

FAMILIES = ("llama", "gpt2")


def _config(family: str, tokenizer, layers: int, width: int, heads: int, kv_heads, ffn, positions: int):
    from transformers import GPT2Config, LlamaConfig

    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    common = dict(vocab_size=len(tokenizer), bos_token_id=bos, eos_token_id=eos, tie_word_embeddings=True)
    if family == "gpt2":
        return GPT2Config(n_layer=layers, n_embd=width, n_head=heads, n_positions=positions, **common)
    ffn = ffn or 64 * max(1, round(8 * width / 3 / 64))
    return LlamaConfig(
        hidden_size=width,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=positions,
        **common,
    )


def _check(family: str, layers: int, width: int, heads: int, kv_heads: int | None, positions: int) -> None:
    if family not in FAMILIES:
        raise ConfigError("--family", f"unknown family {family!r}", f"use one of {', '.join(FAMILIES)}")
    for name, value in {
        "--layers": layers,
        "--hidden-size": width,
        "--heads": heads,
        "--max-positions": positions,
    }.items():
        if value < 1:
            raise ConfigError(name, f"must be >= 1, got {value}", f"give a positive {name}")
    if width % heads:
        raise ConfigError("--heads", f"{heads} heads do not divide the width {width}", "pick a divisor of the width")
    if kv_heads is not None and (kv_heads < 1 or heads % kv_heads):
        raise ConfigError(
            "--kv-heads", f"{kv_heads} KV heads do not divide {heads} attention heads", "pick a divisor of --heads"
        )
    if kv_heads is not None and family == "gpt2":
        raise ConfigError("--kv-heads", "GPT-2 has no grouped KV heads", "drop --kv-heads or use --family llama")


def new_model(
    tokenizer_path: str,
    out: Path,
    *,
    family: str = "llama",
    layers: int = 4,
    hidden_size: int = 256,
    heads: int = 4,
    kv_heads: int | None = None,
    ffn_size: int | None = None,
    max_positions: int = 1024,
    seed: int = 0,
) -> dict:
    """Write the random model and its tokenizer into ``out`` (a temp folder renamed into place, so a killed call
    leaves no half directory); returns {path, family, parameters, vocab_size}."""
    import torch
    from transformers import AutoModelForCausalLM

    from unikd.io import follow_umask
    from unikd.models import load_tokenizer

    _check(family, layers, hidden_size, heads, kv_heads, max_positions)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError("--out", f"{out} exists and is not empty", "pick a new directory or remove it")
    tokenizer = load_tokenizer(tokenizer_path, "--tokenizer")
    if tokenizer.eos_token_id is None:
        raise ConfigError(
            "--tokenizer",
            f"{tokenizer_path} has no EOS token",
            "use a tokenizer with an eos_token (responses end on it)",
        )
    config = _config(family, tokenizer, layers, hidden_size, heads, kv_heads, ffn_size, max_positions)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    follow_umask(tmp)
    if out.exists():
        out.rmdir()  # empty (checked above)
    os.replace(tmp, out)
    return {
        "path": str(out),
        "family": family,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": config.vocab_size,
    }
