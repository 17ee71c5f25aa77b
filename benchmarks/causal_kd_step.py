"""A decoder KD step on prompt/response batches against its limit, and unikd's generation against plain HF generate.

The limit is what no KD tool can avoid (as in benchmarks/kd_step.py): the teacher's inference forward plus the
student's own training step (forward with its next-token loss on the response tokens, backward, AdamW). The unikd
methods run ``Distiller.step`` (the call unikd.train makes) with a token-level logits term masked to the response
tokens, then backward and the step; ``ratio`` is the median over rounds of (method step / limit step in the same
round), rounds in rotating order, process CPU time on a CPU (robust to other jobs) or wall time on CUDA.

Models: a Llama of SmolLM2-135M's shape (30 × 576, 9 heads / 3 KV heads, FFN 1536, vocabulary 49,152, tied
embeddings; random weights unless ``--teacher`` names a directory or a .gguf file) and a student of its first
``--student-layers`` layers. Batches: ``--batch`` rows of ``--seq`` tokens whose second half is the response.

Generation: ``unikd.generation.generate`` (left-padded prompts, KV cache, greedy) against
``model.generate`` called directly on the same prompts, tokens/s of each, same outputs checked.

    python benchmarks/causal_kd_step.py --out docs/benchmarks/causal_kd_step_cpu.json
    python benchmarks/causal_kd_step.py --tiny      # seconds: the test suite runs this
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from unikd.distiller import Distiller
from unikd.families import model_spec
from unikd.generation import SamplingConfig, generate
from unikd.initialization import InitConfig, build_student
from unikd.plan import DistillationPlan, PlanConfig
from unikd.student import StudentShape

LR = 1e-4
METHODS = {
    "unikd-kl": [{"knowledge": "logits", "loss": "kl"}],
    "unikd-jsd": [{"knowledge": "logits", "loss": "jsd", "beta": 0.5}],
    "unikd-kl+hidden": [{"knowledge": "logits", "loss": "kl"}, {"knowledge": "hidden", "matching": "uniform"}],
    # train.fused_output_projection with train.logits_chunk_tokens = FUSED_CHUNK: the student's logits never made
    "unikd-kl-fused": [{"knowledge": "logits", "loss": "kl"}],
}
FUSED_CHUNK = 256


def smollm2_config(tiny: bool) -> LlamaConfig:
    if tiny:
        return LlamaConfig(
            vocab_size=512,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
            tie_word_embeddings=True,
        )
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        intermediate_size=1536,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )


def batch_of(rows: int, seq: int, vocab: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (rows, seq), generator=g)
    labels = ids.clone()
    labels[:, : seq // 2] = -100  # the prompt half is not scored
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _clock(cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def build_methods(teacher, student_layers: int) -> dict:
    def student():
        return build_student(teacher, StudentShape(num_layers=student_layers), InitConfig(strategy="teacher-layers"))

    out = {}
    s = student()
    opt = torch.optim.AdamW(s.parameters(), lr=LR)

    def limit(batch, s=s, opt=opt):
        with torch.inference_mode():
            teacher(**batch)
        s(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    out["limit"] = limit
    for name, terms in METHODS.items():
        s = student()
        plan = DistillationPlan(
            PlanConfig(terms=terms, hard_label_weight=1.0), model_spec(teacher), model_spec(s), token_level_logits=True
        )
        fused = name.endswith("-fused")
        plan.logits_chunk = FUSED_CHUNK if fused else None
        distiller = Distiller(plan, teacher, s, fused_chunk=FUSED_CHUNK if fused else None)
        opt = torch.optim.AdamW(list(s.parameters()) + list(plan.parameters()), lr=LR)

        def step(batch, distiller=distiller, opt=opt):
            loss, _ = distiller.step(batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        out[name] = step
    return out


def time_steps(methods: dict, batch: dict, warmup: int, repeats: int, cuda: bool) -> dict:
    names = list(methods)
    for _ in range(warmup):
        for name in names:
            methods[name](batch)
    times = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = _clock(cuda)
            methods[name](batch)
            times[name].append(_clock(cuda) - t0)
    limit = times["limit"]
    return {
        n: {
            "step_s": statistics.median(t),
            "ratio": statistics.median(a / b for a, b in zip(t, limit)),
        }
        for n, t in times.items()
    }


def time_generation(model, rows: int, prompt: int, new: int, vocab: int) -> dict:
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, vocab, (prompt,), generator=g).tolist() for _ in range(rows)]

    class Tok:  # what generate reads of a tokenizer
        pad_token_id, eos_token_id = 0, -1  # no EOS: every prompt gets `new` tokens

    settings = SamplingConfig(max_new_tokens=new, temperature=0.0)
    generate(model, prompts, Tok, SamplingConfig(max_new_tokens=2, temperature=0.0))  # warm-up, untimed
    t0 = time.perf_counter()
    ours = generate(model, prompts, Tok, settings)
    ours_s = time.perf_counter() - t0
    ids = torch.tensor(prompts)
    t0 = time.perf_counter()
    with torch.no_grad():
        plain = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False, pad_token_id=0
        )
    plain_s = time.perf_counter() - t0
    same = [o == p for o, p in zip(ours, plain[:, prompt:].tolist())]
    return {
        "unikd_tokens_per_s": rows * new / ours_s,
        "hf_generate_tokens_per_s": rows * new / plain_s,
        "ratio": plain_s / ours_s,
        "same_tokens": all(same),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--student-layers", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    config = smollm2_config(args.tiny)
    teacher = LlamaForCausalLM(config).eval().requires_grad_(False)
    batch = batch_of(args.batch, 16 if args.tiny else args.seq, config.vocab_size)
    layers = 2 if args.tiny else args.student_layers
    steps = time_steps(build_methods(teacher, layers), batch, args.warmup, 2 if args.tiny else args.repeats, False)
    gen = time_generation(
        teacher, 2 if args.tiny else 4, 8 if args.tiny else 32, 4 if args.tiny else 32, config.vocab_size
    )
    result = {
        "setup": {
            "teacher": "Llama, SmolLM2-135M shape" if not args.tiny else "tiny Llama",
            "student_layers": layers,
            "batch": args.batch,
            "seq": batch["input_ids"].shape[1],
            "scored": "the second half of each row (the response)",
            "clock": "process CPU time",
            "threads": torch.get_num_threads(),
        },
        "steps": steps,
        "generation": gen,
    }
    write_result(result, args.out)
    return result


def write_result(result: dict, out: Path | None) -> None:
    """Print the result as JSON and, with ``--out``, write it there (the other decoder benchmarks call this)."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
