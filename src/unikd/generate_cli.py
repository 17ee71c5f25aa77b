"""``unikd generate``: the teacher's generations for a config's training prompts, written once for sequence-level KD
(``unikd.sequence_kd``: the file, its key, resuming a killed run)."""

from __future__ import annotations

from pathlib import Path

from unikd.config import load_config
from unikd.errors import ConfigError
from unikd.models import load_model, load_tokenizer, resolve_model_path


def generate_file(config: Path | None, overrides: list[str], out: Path, batch_size: int = 16) -> str:
    """Write (or complete) ``out`` with the teacher's response to every training prompt; a summary line."""
    from unikd.data.causal import load_causal_task
    from unikd.sequence_kd import generations_key, prompts_of, write_generations

    if config is not None and "=" in str(config) and not config.is_file():
        overrides, config = [str(config), *overrides], None  # `unikd generate key=value ... --out F` without a file
    cfg = load_config(config, overrides)
    if not cfg.teacher.path:
        raise ConfigError("teacher.path", "is required: the teacher writes the generations", "set teacher.path")
    path = resolve_model_path(cfg.teacher.path, "teacher.path", cfg.teacher.gguf_file)
    tokenizer = load_tokenizer(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    task = load_causal_task(cfg.data.model_copy(update={"task_type": "causal-lm"}), tokenizer, cfg.seed)
    prompts = prompts_of(task.train.rows, "data")
    key = generations_key(path, tokenizer, prompts, cfg.plan.sampling, cfg.seed)
    teacher = load_model(path, "causal-lm", field="teacher.path").eval()
    record, _ = write_generations(
        Path(out),
        teacher,
        tokenizer,
        prompts,
        cfg.plan.sampling,
        key=key,
        teacher_path=path,
        seed=cfg.seed,
        batch_size=batch_size,
        field="--out",
    )
    return (
        f"{record['path']}: {record['rows']} prompts, {record['generated_now']} generated now in "
        f"{record['seconds']:.1f} s ({record['tokens_per_s']:.0f} tokens/s); train on them with "
        f"plan.policy=sequence_kd plan.generations={record['path']}"
    )
