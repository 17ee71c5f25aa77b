"""How close the top-k token cache's loss comes to the full-vocabulary loss, on a real teacher and student.

For a KD run's config (its teacher, data and logits terms), a student directory and the dev rows, the teacher's and
the student's logits at every scored dev position give the full-vocabulary divergence of each term's loss; the
same positions through the cache's representation (the teacher's top-k log p stored in fp16, the tail as one
bucket: ``unikd.token_cache``) give the bucket divergence at each k. Reported per k: the bucket loss, its ratio to
the full one, the teacher's mean tail mass (what the top-k leaves out) and the cache's bytes per token.

    python benchmarks/topk_fidelity.py CONFIG --student RUN/student --ks 8,32,64 --rows 32 \
        --out docs/benchmarks/topk_fidelity_cpu.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from unikd.config import load_config
from unikd.data.causal import causal_collator, load_causal_task
from unikd.divergences import LOG_FLOOR, scored_positions, topk_divergence
from unikd.losses import REGISTRY
from unikd.models import load_model, load_tokenizer, resolve_model_path


def _logits(model, batch) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--student", required=True)
    ap.add_argument("--ks", default="8,32,64")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    path = resolve_model_path(cfg.teacher.path, "teacher.path", cfg.teacher.gguf_file)
    tokenizer = load_tokenizer(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    task = load_causal_task(cfg.data.model_copy(update={"task_type": "causal-lm"}), tokenizer, cfg.seed)
    rows = task.validation.rows.select(range(min(args.rows, len(task.validation.rows))))
    teacher = load_model(path, "causal-lm", field="teacher.path").eval()
    student = load_model(args.student, "causal-lm", field="--student").eval()
    collate = causal_collator(tokenizer)
    s_all, t_all = [], []
    for i in range(0, len(rows), args.batch):
        batch = collate([rows[j] for j in range(i, min(i + args.batch, len(rows)))])
        mask = scored_positions(batch["labels"], batch["attention_mask"], causal=True).bool()
        s_all.append(_logits(student, batch)[mask])
        t_all.append(_logits(teacher, batch)[mask])
    s, t = torch.cat(s_all), torch.cat(t_all)
    ks = [int(k) for k in args.ks.split(",")]
    result = {"setup": {"config": str(args.config), "student": args.student, "rows": len(rows)}, "positions": len(s)}
    result["terms"] = {}
    for term in (t for t in cfg.plan.terms if t.knowledge == "logits"):
        spec = REGISTRY["logits"][term.loss]
        extra = {spec.parameter: term.parameter_value} if spec.parameter else {}
        full = float(spec.fn(s, t, temperature=term.temperature, t2_scaling=term.t2_scaling, **extra))
        log_p = F.log_softmax(t / term.temperature, dim=-1)
        per_k = {}
        for k in ks:
            top, ids = log_p.topk(k, dim=-1)
            tail_mass = 1 - top.exp().sum(-1)
            tail = torch.log(tail_mass.clamp(min=1e-30)).clamp(min=LOG_FLOOR)
            cached = (ids, top.half().float(), tail)  # what the cache stores: log p in fp16
            value = float(
                topk_divergence(
                    s,
                    cached,
                    term.loss,
                    temperature=term.temperature,
                    t2_scaling=term.t2_scaling,
                    parameter=extra.get(spec.parameter) if spec.parameter else None,
                )  # fmt: skip
            )
            bytes_per_token = k * ((2 if t.shape[-1] <= 65536 else 4) + 2) + 4
            per_k[k] = {
                "loss": value,
                "ratio_to_full": value / full if full else None,
                "teacher_tail_mass": float(tail_mass.mean()),
                "bytes_per_token": bytes_per_token,
            }
        result["terms"][term.name] = {"full_vocabulary_loss": full, "vocabulary": t.shape[-1], "by_k": per_k}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
