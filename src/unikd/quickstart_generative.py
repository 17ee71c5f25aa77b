"""``unikd quickstart --generative``: a real decoder distilled on prompt/response data, offline on a CPU.

1. the teacher: SmolLM2-135M-Instruct (Llama, 30 layers x 576, vocabulary 49,152), read from the Q4_1 GGUF in
   ``<data-dir>/models/`` and de-quantized once to an fp32 model directory (``unikd.gguf``); without that file, the
   hub's ``HuggingFaceTB/SmolLM2-135M-Instruct``;
2. the KD student: 4 of its 30 layers (uniformly picked, embeddings copied), trained on GSM8K's worked answers
   rendered with the chat template, from the teacher's token distributions (forward KL over the response tokens)
   plus the response cross-entropy;
3. its no-KD twin (``identity.no_kd_twin``): the same student, rows, steps, optimizer and seed, next-token
   cross-entropy on the same responses;
4. a table: held-out response perplexity (token-weighted, the dev rows' answers), the teacher's NLL per token of
   each model's own samples of held-out prompts (GKD's and MiniLLM's generation score), ROUGE-L of those samples
   against the references, parameters, and one sample each. With ``--seeds 1,2,3`` each student row is the mean
   over the seeds and the KD student's per-seed perplexity ratios to its twin get a paired 95% interval.

The run directories are named by their settings (``gsm8k-640rows-4layers-100steps/kd-student``); a finished run of
the same config is reused, so a second call only prints. Measured on 2 CPU cores: see the README's "Generative
decoders" section.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from unikd.config import RunConfig, load_config
from unikd.errors import ConfigError
from unikd.identity import no_kd_twin
from unikd.io import atomic_write_json
from unikd.quickstart import run_once
from unikd.stats import mean_std, paired_stats

#: where the offline teacher and data sit, relative to ``--data-dir`` (the shared data layout)
GGUF = "models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf"
GSM8K = "instruct/gsm8k"
HUB_TEACHER = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_SEED = 42


def _teacher(data_dir: Path) -> str:
    gguf = data_dir / GGUF
    return str(gguf) if gguf.is_file() else HUB_TEACHER


def _gsm8k(data_dir: Path) -> dict[str, str]:
    files = {"train": data_dir / GSM8K / "train.jsonl", "validation": data_dir / GSM8K / "dev.jsonl"}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise ConfigError(
            "--data-dir",
            f"GSM8K question/answer files not found: {', '.join(missing)}",
            "point --data-dir at a folder holding instruct/gsm8k/{train,dev}.jsonl (one {question, answer} object "
            "a line), e.g. the shared data folder",
        )
    return {k: str(v) for k, v in files.items()}


def kd_overrides(
    data_dir: Path,
    out: Path,
    teacher: str,
    *,
    rows: int,
    student_layers: int,
    steps: int,
    eval_rows: int,
    samples: int,
    seed: int,
    max_length: int = 160,
) -> list[str]:
    """The KD student's config, as overrides (its twin is derived from it)."""
    files = _gsm8k(data_dir)
    return [
        "stage=task",
        f"teacher.path={teacher}",
        f"student.shape.num_layers={student_layers}",
        "student.init.strategy=teacher-layers",
        "student.init.layers=uniform",
        f"data.files={{train: {files['train']}, validation: {files['validation']}}}",
        "data.columns={prompt: question, response: answer}",
        "data.render=chat",
        # the truncation keeps each answer's beginning: at 160 tokens 79% of the 640 answers are cut (56% of 800
        # at 192), and a KD step costs 3.1 s (about 7.7 s at 192 tokens and batch 8), so 100 steps fit the
        # 15 minutes with the twin, the teacher's samples and the de-quantization
        f"data.max_length={max_length}",
        f"data.train_limit={rows}",
        f"data.eval_limit={eval_rows}",
        "plan.terms=[{knowledge: logits, loss: kl, temperature: 1.0}]",
        "plan.hard_label_weight=1.0",
        "optim.lr=3e-4",
        "optim.warmup_ratio=0.05",
        f"train.max_steps={steps}",
        "train.batch_size=4",
        f"train.eval_every={steps}",
        f"train.log_every={max(1, steps // 10)}",
        f"eval.generation={{rows: {samples}, max_new_tokens: 64, show: 1}}",
        f"seed={seed}",
        f"output_dir={out}",
    ]


def run_generative_quickstart(
    out: Path,
    *,
    data_dir: Path = Path("../shared/data"),
    rows: int = 640,
    student_layers: int = 4,
    steps: int = 100,
    eval_rows: int = 100,
    samples: int = 16,
    seeds: Sequence[int] = (DEFAULT_SEED,),
    teacher: str | None = None,
    max_length: int = 160,
) -> dict:
    """Teacher (de-quantized once), KD student and no-KD twin per seed; returns and writes the summary.
    ``teacher``: another decoder (default: the GGUF under ``data_dir``, else the hub's SmolLM2)."""
    for name, value in {"--rows": rows, "--student-layers": student_layers, "--steps": steps}.items():
        if value < 1:
            raise ConfigError(name, f"must be >= 1, got {value}", f"give a positive {name}")
    data_dir, out = Path(data_dir), Path(out)
    where = out / f"gsm8k-{rows}rows-{student_layers}layers-{steps}steps"
    dirs: dict[str, list[Path]] = {"KD student": [], "no-KD student": []}
    for seed in seeds:
        folder = where if seed == DEFAULT_SEED else where / f"seed-{seed}"
        kd = load_config(
            None,
            kd_overrides(
                data_dir,
                folder / "kd-student",
                teacher or _teacher(data_dir),
                rows=rows,
                student_layers=student_layers,
                steps=steps,
                eval_rows=eval_rows,
                samples=samples,
                seed=seed,
                max_length=max_length,
            ),
        )
        twin, _ = no_kd_twin(kd.model_dump(mode="json"), kd)
        twin_cfg = RunConfig.model_validate(twin | {"output_dir": str(folder / "no-kd-student")})
        dirs["KD student"].append(run_once(kd))
        dirs["no-KD student"].append(run_once(twin_cfg))
    teacher = teacher_row(kd, where / "teacher-generation.json")
    rows_out = [teacher] + [_student_row(name, d) for name, d in dirs.items()]
    paired = _paired(rows_out)
    summary = {"seeds": list(seeds), "rows": rows_out, "paired": paired}
    atomic_write_json(where / "summary.json", summary)
    _print(rows_out, paired, list(seeds), where)
    return summary


def teacher_row(kd: RunConfig, cache: Path) -> dict:
    """The teacher's row: its dev perplexity (the KD run's ``teacher_dev``) and its own samples of the same
    held-out prompts, scored by itself; kept in ``cache`` with the settings it was made with."""
    metrics = json.loads((Path(kd.output_dir) / "metrics.json").read_text())
    key = {"teacher": kd.teacher.path, "data": kd.data.model_dump(mode="json"), "eval": kd.eval.model_dump(mode="json")}
    if cache.is_file() and (held := json.loads(cache.read_text())).get("key") == key:
        generation, parameters = held["generation"], held["parameters"]
    else:
        generation, parameters = _teacher_generation(kd)
        atomic_write_json(cache, {"key": key, "generation": generation, "parameters": parameters})
    return {
        "model": f"teacher ({Path(kd.teacher.path).name.split('.')[0]})",
        "steps": None,
        "perplexity": metrics["teacher_dev"]["perplexity"],
        "per_seed": None,
        "generation": generation,
        "parameters": parameters,
        "unigram_perplexity": metrics["trivial_baseline"]["perplexity"],
    }


def _teacher_generation(kd: RunConfig) -> tuple[dict, int]:
    from unikd.data.causal import load_causal_task
    from unikd.generation import evaluate_generation
    from unikd.models import load_model, load_tokenizer, resolve_model_path

    path = resolve_model_path(kd.teacher.path, "teacher.path", kd.teacher.gguf_file)
    tokenizer = load_tokenizer(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    task = load_causal_task(kd.data.model_copy(update={"task_type": "causal-lm"}), tokenizer, kd.seed)
    teacher = load_model(path, "causal-lm", field="teacher.path").eval()
    generation = evaluate_generation(teacher, teacher, tokenizer, task.validation.rows, kd.eval.generation, kd.seed)
    return generation, sum(p.numel() for p in teacher.parameters())


def _student_row(name: str, dirs: list[Path]) -> dict:
    metrics = [json.loads((d / "metrics.json").read_text()) for d in dirs]
    ppl = [m["final"]["perplexity"] for m in metrics]
    nll = [m["generation"].get("teacher_nll") for m in metrics]
    rouge = [m["generation"]["rouge_l"] for m in metrics]
    return {
        "model": name,
        "steps": metrics[0]["steps"],
        "perplexity": mean_std(ppl)[0],
        "perplexity_std": mean_std(ppl)[1] if len(ppl) > 1 else None,
        "per_seed": ppl,
        "teacher_nll_per_seed": nll,
        "generation": {
            "teacher_nll": mean_std(nll)[0],
            "rouge_l": mean_std(rouge)[0],
            "samples": metrics[0]["generation"]["samples"],
        },
        "parameters": metrics[0]["parameters"],
        "path": str(dirs[0] / "student"),
    }


def _paired(rows: list[dict]) -> dict:
    """The KD student's per-seed log perplexity ratio to its twin (the relative change, as 100 * (exp(d) - 1)) and
    the per-seed difference of the teacher's NLL of their samples, each with a paired 95% interval."""
    kd, twin = rows[1], rows[2]
    log_ratio = [math.log(a / b) for a, b in zip(kd["per_seed"], twin["per_seed"])]
    nll = [a - b for a, b in zip(kd["teacher_nll_per_seed"], twin["teacher_nll_per_seed"])]
    return {
        "log_perplexity_ratio": dict(paired_stats(log_ratio), per_seed=log_ratio),
        "teacher_nll_difference": dict(paired_stats(nll), per_seed=nll),
    }


def _pct(log_ratio: float) -> str:
    return f"{100 * math.expm1(log_ratio):+.1f}%"


def _print(rows: list[dict], paired: dict, seeds: list[int], where: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    several = len(seeds) > 1
    title = "GSM8K dev answers (response perplexity); samples of held-out prompts, scored by the teacher"
    if several:
        title += f"; students: mean over seeds {', '.join(map(str, seeds))}"
    table = Table(title=title)
    for col in ["model", "steps", "dev perplexity", "teacher NLL of samples", "ROUGE-L", "parameters", "a sample"]:
        table.add_column(col)
    for r in rows:
        ppl = f"{r['perplexity']:.2f}"
        if several and r.get("perplexity_std") is not None:
            ppl += f" ± {r['perplexity_std']:.2f}"
        gen = r["generation"]
        sample = gen["samples"][0]["sample"] if gen["samples"] else ""
        table.add_row(
            r["model"],
            str(r["steps"]) if r["steps"] is not None else "-",
            ppl,
            f"{gen['teacher_nll']:.3f}",
            f"{gen['rouge_l']:.1f}",
            f"{r['parameters'] / 1e6:.1f}M",
            " ".join(sample.split())[:120],
        )
    console = Console()
    console = Console(width=max(console.width, 160))
    console.print(table)
    console.print(f"unigram baseline (the training answers' token frequencies): {rows[0]['unigram_perplexity']:.1f}")
    ratio, nll = paired["log_perplexity_ratio"], paired["teacher_nll_difference"]
    line = f"KD student vs no-KD student: perplexity {_pct(ratio['diff_mean'])}"
    if ratio["ci_low"] is not None:
        line += f" (paired 95% [{_pct(ratio['ci_low'])}, {_pct(ratio['ci_high'])}] over {ratio['n']} seeds)"
    line += f"; teacher NLL of samples {nll['diff_mean']:+.3f}"
    if nll["ci_low"] is not None:
        line += f" (paired 95% [{nll['ci_low']:+.3f}, {nll['ci_high']:+.3f}])"
    console.print(line)
    console.print(f"saved under {where}")
