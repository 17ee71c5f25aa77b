"""Sequence-level KD (Kim & Rush, 2016): the teacher's generations replace the training responses.

``plan.policy: sequence_kd`` trains on each training prompt followed by the teacher's own response to it, generated
once with ``plan.sampling`` and reused by content: the file is keyed by the teacher's fingerprint (its weight files),
the tokenizer, the training prompts' token ids, the sampling settings and, when sampling (temperature > 0), the seed. ``unikd generate CONFIG --out F``
writes it ahead of time (``plan.generations: F`` then names it); without ``plan.generations`` a run writes it under
``$UNIKD_CACHE/generations/<key>.jsonl`` itself, and every run, seed and study variant on the same prompts with the
same teacher reuses it.

The file is JSON lines: a header ``{"unikd_generations": 1, "key": ..., "teacher": ..., "sampling": ...}``, then one
``{"idx": row, "response_ids": [...]}`` per prompt, appended a batch at a time and flushed: a killed writer resumes
after the last whole line, without duplicating rows (a torn last line is cut off). A file written for another
teacher, tokenizer, prompt set or sampling is refused naming ``plan.generations``.

With ``plan.terms: []`` and ``plan.hard_label_weight: 1`` the same run is the pseudo-label twin: the student trained
on the teacher's generations with next-token cross-entropy and no soft targets.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from unikd.errors import ConfigError
from unikd.generation import SamplingConfig, generate

FORMAT = 1


def generations_key(teacher_path: str, tokenizer, prompts: list[list[int]], sampling: SamplingConfig, seed: int) -> str:
    """The content key of a set of teacher generations (see the module docstring)."""
    from unikd.data.tokenize import _tokenizer_fingerprint
    from unikd.teacher_cache import teacher_fingerprint

    h = hashlib.sha256()
    for part in (teacher_fingerprint(teacher_path), _tokenizer_fingerprint(tokenizer), sampling.model_dump_json()):
        h.update(part.encode() + b"\0")
    h.update(str(seed if sampling.temperature > 0 else "greedy").encode() + b"\0")  # greedy: any seed, one file
    for prompt in prompts:
        h.update(json.dumps(prompt).encode() + b"\n")
    return h.hexdigest()[:24]


def default_path(key: str) -> Path:
    return Path(os.environ.get("UNIKD_CACHE", Path.home() / ".cache" / "unikd")) / "generations" / f"{key}.jsonl"


def _read(path: Path, key: str, field: str) -> dict[int, list[int]]:
    """The rows already written in ``path`` (a torn last line cut off), after checking its header's key."""
    done: dict[int, list[int]] = {}
    with open(path, "rb+") as f:
        data = f.read()
        whole = data[: data.rfind(b"\n") + 1]
        if len(whole) != len(data):
            f.truncate(len(whole))
    lines = whole.decode().splitlines()
    if not lines:
        return done
    header = json.loads(lines[0])
    if header.get("key") != key:
        raise ConfigError(
            field,
            f"{str(path)!r} holds generations of another teacher, tokenizer, prompt set or sampling (teacher "
            f"{header.get('teacher')!r}, sampling {header.get('sampling')})",
            "run unikd generate with this run's config (a new --out file), or drop plan.generations to let the run "
            "write its own",
        )
    for line in lines[1:]:
        row = json.loads(line)
        done[int(row["idx"])] = row["response_ids"]
    return done


def write_generations(
    path: Path,
    teacher,
    tokenizer,
    prompts: list[list[int]],
    sampling: SamplingConfig,
    *,
    key: str,
    teacher_path: str,
    seed: int,
    batch_size: int = 16,
    field: str = "plan.generations",
    log=print,
) -> tuple[dict, dict[int, list[int]]]:
    """Generate the missing rows of ``path`` (all of them for a new file); returns (the record of this call: rows,
    generated now, seconds, tokens/s; every row's generation by row id, the file's whole content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        header = {"unikd_generations": FORMAT, "key": key, "teacher": teacher_path, "sampling": sampling.model_dump()}
        path.write_text(json.dumps(header) + "\n")
    done = _read(path, key, field)
    todo = [i for i in range(len(prompts)) if i not in done]
    had = len(done)
    started, tokens = time.perf_counter(), 0
    with open(path, "a") as f:
        for n in range(0, len(todo), batch_size):
            rows = todo[n : n + batch_size]
            outs = generate(teacher, [prompts[i] for i in rows], tokenizer, sampling, seed=seed * 1_000_003 + rows[0])
            f.write("".join(json.dumps({"idx": i, "response_ids": o}) + "\n" for i, o in zip(rows, outs)))
            f.flush()
            done.update(zip(rows, outs))
            tokens += sum(len(o) for o in outs)
            if log and (n // batch_size) % 10 == 0:
                log(f"unikd generate: {had + n + len(rows)} of {len(prompts)} prompts")
    seconds = time.perf_counter() - started
    record = {
        "rows": len(prompts),
        "generated_now": len(todo),
        "seconds": seconds,
        "tokens_per_s": tokens / max(seconds, 1e-9),
        "path": str(path),
    }
    return record, done


def with_generations(train_rows, generations: dict[int, list[int]], max_length: int, train_on_prompt: bool):
    """The training rows with each response replaced by the teacher's generation (cut to ``max_length``)."""
    import datasets

    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "prompt_length": [], "idx": []}
    for i, row in enumerate(train_rows):
        n = row["prompt_length"]
        prompt = row["input_ids"][:n]
        ids = (prompt + generations[i])[:max_length]
        labels = (list(prompt) if train_on_prompt else [-100] * n) + ids[n:]
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append(labels[: len(ids)])
        out["prompt_length"].append(n)
        out["idx"].append(row["idx"])
    return datasets.Dataset.from_dict(out)


def prompts_of(train_rows, field: str = "plan.policy") -> list[list[int]]:
    """The training rows' prompts; sequence-level KD needs every row to have one."""
    prompts = [r["input_ids"][: r["prompt_length"]] for r in train_rows]
    if any(not p for p in prompts):
        raise ConfigError(
            field,
            "sequence_kd generates a response for every prompt, and some rows have no prompt (plain text rows)",
            "use prompt/response or messages data, or plan.policy=off_policy",
        )
    return prompts


def teacher_responses(cfg, teacher, teacher_path: str, tokenizer, train_rows, log=print):
    """``plan.policy: sequence_kd``: (the training rows on the teacher's generations, the generation record for
    metrics.json)."""
    prompts = prompts_of(train_rows)
    key = generations_key(teacher_path, tokenizer, prompts, cfg.plan.sampling, cfg.seed)
    path = Path(cfg.plan.generations).expanduser() if cfg.plan.generations else default_path(key)
    if cfg.plan.generations and not path.exists():
        raise ConfigError(
            "plan.generations",
            f"{str(path)!r} does not exist",
            f"write it first: unikd generate <this config> --out {path}, or drop plan.generations",
        )
    record, generations = write_generations(
        path, teacher, tokenizer, prompts, cfg.plan.sampling, key=key, teacher_path=teacher_path, seed=cfg.seed, log=log
    )
    return with_generations(train_rows, generations, cfg.data.max_length, cfg.data.train_on_prompt), record
