"""``unikd recipe``: a complete task-stage run config for a teacher, a parameter budget and optionally a latency
target, chosen by the rules of docs/guideline.md.

Each choice carries one line of why, pointing at the guideline section it rests on. The student shape comes from
``student.budget_configs`` (non-embedding parameters, the teacher's head size); the plan is one of

==============  ==================================================================================================
``--plan``      the run config
==============  ==================================================================================================
``two-step``    TinyBERT's two chained steps (``preset: tinybert``: embeddings + hidden + attention-score MSE, then
                the logits) on the labelled rows plus 4 TinyBERT-augmented copies of each (weight 4), 0.5 epochs
                per step: the recipe that beat no-KD and pseudo-labels on SST-2, MRPC, RTE and STS-B
                (guideline, "Knowledge type"); about twice the one-step plan's wall time
``one-step``    ``presets/best-practice.yaml`` (logits KL + labels), 3 epochs: cheaper, cacheable teacher
``auto``        ``two-step`` for sentence(-pair) classification and regression, ``one-step`` otherwise (token
                classification and multi-label data take no transfer rows in this version)
==============  ==================================================================================================

Each step's length is written as ``train.max_steps``, counted from the training rows where they can be read here
(``--data-files``, or a GLUE task in ``--data-dir``/``$GLUE_DIR``), and ``write_recipe`` writes the no-KD twin
beside the config (``recipe.no-kd.yaml``: the same student, data, optimizer and updates, labels only). A teacher
from a unikd fine-tune less than ``guards.WEAK_TEACHER_HEADROOM`` above its trivial baseline gets the weak-teacher
plan (``auto``: ``one-step``; ``two-step``: the labels kept in step 2; docs/guideline.md#weak-teachers).

The config is validated with ``config.load_config``, ``check_student_init`` and every term's shape check against
the teacher's and the student's shapes (configs only: no weight is loaded) before it is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from unikd.config import DataConfig, RunConfig, load_config, load_preset, step_dicts
from unikd.errors import ConfigError
from unikd.families import get_adapter
from unikd.guards import WEAK_TEACHER_HEADROOM
from unikd.initialization import InitConfig, check_student_init
from unikd.identity import no_kd_twin
from unikd.io import atomic_write_text
from unikd.models import auto_class_for, model_config, resolve_model_path
from unikd.recipe_causal import add_causal_plan, causal_reasons, causal_rows
from unikd.recipe_reasons import (
    _BAND,
    _OVER,
    _ONE_STEP_EPOCHS,
    _STEP_EPOCHS,
    GUIDELINE,
    Reason,
    _metric_reason,
    _reasons,
    _steps_reason,
    _teacher_reason,
)
from unikd.student import BudgetRow, budget_configs, count_parameters, read_budget, student_config

#: shapes below (1 - _TOLERANCE) x the budget are not considered: they leave most of it unused
_TOLERANCE = 0.5
#: the learning rate of the teachers and the transfer-run students in docs/study-cpu.md (guideline, "Schedule")
_LR = 1e-4
PLANS = ("auto", "two-step", "one-step")
#: the augmentation of the four-task study: 4 copies of each labelled row, drawn at weight 4 per epoch
_AUGMENT = {"kind": "augment", "method": "tinybert", "copies": 4, "weight": 4}


@dataclass(frozen=True)
class Recipe:
    """The validated run config, the chosen shape (with its exact counts) and the reasons, in print order."""

    config: RunConfig
    data: dict
    shape: BudgetRow
    teacher_non_embedding: int
    latency_ms: float | None
    reasons: list[Reason]

    def twin(self) -> dict:
        """The no-KD twin of the config: the same student, initialization, labelled data, optimizer and number of
        updates, trained on the labels alone (``identity.no_kd_twin``, what every study pairs a KD run with). Where
        the steps are epochs (the rows could not be counted), the twin's epochs give it as many updates as the
        chain's: each KD epoch also draws ``weight`` x the labelled rows of augmented copies."""
        twin, transfer = no_kd_twin(self.data, self.config)
        if not twin["train"].get("max_steps"):
            steps = [self.data["train"], *(step["train"] for step in self.data.get("then", []))]
            draws = 1 + sum(t.get("weight", 1) for t in transfer)
            twin["train"]["epochs"] = sum(t["epochs"] for t in steps) * draws
        twin["output_dir"] = f"{self.data['output_dir']}-no-kd"
        return twin

    def yaml(self) -> str:
        """The config as YAML, headed by the reasons as comments."""
        head = "".join(f"# {r.line()}\n" for r in self.reasons)
        return (
            "# written by `unikd recipe`; run it with `unikd distill <this file>`\n"
            + head
            + yaml.safe_dump(self.data, sort_keys=False)
        )


def budget_fraction(budget: str, field: str = "--budget") -> float:
    """A budget that must be a fraction of the teacher in (0, 1]: ``1/4``, ``0.25``, ``25%``, ``0.25x``."""
    fix = "give a fraction of the teacher's non-embedding parameters in (0, 1], e.g. --budget 1/4 (or 0.25, 25%)"
    try:
        value, relative = read_budget(budget, field)
    except ConfigError as exc:
        raise ConfigError(field, exc.problem, fix) from None
    if not relative or value > 1:
        raise ConfigError(field, f"{budget!r} is not a fraction of the teacher in (0, 1]", fix)
    return value


def parse_data_files(text: str, field: str = "--data-files") -> dict[str, str]:
    """``train=PATH,validation=PATH`` -> ``{"train": PATH, "validation": PATH}`` (data.files); both files exist."""
    fix = "write --data-files train=PATH,validation=PATH (CSV, TSV, JSON/JSONL, Parquet or CoNLL files)"
    files: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        split, sep, path = item.partition("=")
        if not sep or not split.strip() or not path.strip():
            raise ConfigError(field, f"{item!r} is not SPLIT=PATH", fix)
        files[split.strip()] = path.strip()
    missing = [s for s in ("train", "validation") if s not in files]
    if missing:
        raise ConfigError(field, f"no {' and no '.join(missing)} file given", fix)
    for split, path in files.items():
        if not Path(path).expanduser().is_file():
            raise ConfigError(field, f"the {split} file {path!r} does not exist", "check the path")
    return files


def _candidates(teacher_cfg, fraction: float) -> list[tuple[BudgetRow, str]]:
    """Shapes for the budget with their group, in the guideline's order of preference
    (docs/guideline.md#student-shape-for-a-budget): the shapes filling it (1 - _BAND to 1 + _OVER of it), widest
    first and at a width deepest first ("filled"); then the smaller ones, closest first ("closest")."""
    spec = get_adapter(teacher_cfg, field="--teacher").spec(teacher_cfg)
    rows = budget_configs(
        teacher_cfg, fraction, tolerance=_TOLERANCE, head_sizes=[spec.head_dim], count="non_embedding", field="--budget"
    )
    filled = sorted((r for r in rows if -_BAND <= r.deviation <= _OVER), key=lambda r: (-r.hidden_size, -r.num_layers))
    rest = [r for r in rows if r.deviation < -_BAND]  # budget_configs sorts them by closeness already
    return [(r, "filled") for r in filled] + [(r, "closest") for r in rest]


def _model(teacher_cfg, row: BudgetRow | None, meta: bool = False):
    """A random-weight model of ``row``'s shape (None: the teacher's), of the teacher's class; on the meta device
    when it is only counted."""
    import torch

    cfg = teacher_cfg if row is None else student_config(teacher_cfg, row.shape(), field="student.shape")
    cls = auto_class_for(teacher_cfg)
    with torch.device("meta" if meta else "cpu"):
        return cls.from_config(cfg) if hasattr(cls, "from_config") else cls._from_config(cfg)


def _pick_by_latency(
    teacher_cfg, rows: list[tuple[BudgetRow, str]], target_ms: float, seq_len: int, estimate: bool
) -> tuple[tuple[BudgetRow, str], float, list[str]]:
    """The first of ``rows`` whose batch-1 CPU latency is at most ``target_ms``: timed one by one (PyTorch, 1 thread,
    random weights), or, with ``estimate``, the teacher timed once and scaled by each shape's FLOPs."""
    from unikd.latency import flops_per_sequence, torch_latency_ms

    slower: list[tuple[float, str]] = []
    if estimate:
        teacher = _model(teacher_cfg, None)
        teacher_ms, teacher_flops = torch_latency_ms(teacher, seq_len), flops_per_sequence(teacher, seq_len)
        del teacher
    for row, group in rows:
        if estimate:
            ms = teacher_ms * flops_per_sequence(_model(teacher_cfg, row, meta=True), seq_len) / teacher_flops
        else:
            ms = torch_latency_ms(_model(teacher_cfg, row), seq_len, repeats=10)
        if ms <= target_ms:
            return (row, group), ms, [text for _, text in slower]
        slower.append((ms, f"{row.num_layers} x {row.hidden_size} {ms:.1f} ms"))
    raise ConfigError(
        "--latency-ms",
        f"no student within the budget runs in {target_ms:g} ms ({'estimated' if estimate else 'measured'}, batch 1, "
        f"sequence {seq_len}, 1 CPU thread); the fastest: {', '.join(text for _, text in sorted(slower)[:3])}",
        "raise --latency-ms, lower --max-length, or give a smaller --budget",
    )


def _labelled_data(task: str | None, data_files: str | None, max_length: int, data_dir: str | None = None) -> dict:
    """The config's ``data`` section: a known GLUE task (in ``data_dir``, when given) or the existing files, and
    the sequence length."""
    if task is None:
        if data_dir is not None:
            raise ConfigError("--data-dir", "is the folder of a GLUE --task, not of --data-files", "drop --data-dir")
        return {"files": parse_data_files(data_files), "max_length": max_length}
    from unikd.data import resolve_task

    try:
        resolve_task(task)
    except ConfigError as exc:
        raise ConfigError("--task", exc.problem, exc.fix) from None
    return {"task": task, **({"data_dir": data_dir} if data_dir else {}), "max_length": max_length}


def make_recipe(
    teacher: str,
    budget: str,
    *,
    task: str | None = None,
    data_files: str | None = None,
    latency_ms: float | None = None,
    device: str = "cpu",
    latency_estimate: bool = False,
    max_length: int = 128,
    output_dir: str | None = None,
    plan: str = "auto",
    data_dir: str | None = None,
) -> Recipe:
    """The run config the guideline gives for ``teacher`` (hub id, directory or ``pkg:<name>``) at ``budget`` (a
    fraction of its non-embedding parameters) on ``task`` (GLUE) or ``data_files`` (``train=PATH,validation=PATH``),
    with ``plan`` (the module's table); ``data_dir``: the GLUE folder (else ``$GLUE_DIR``). The training rows are
    counted where they can be read, and each step's updates written as ``train.max_steps`` from them, so the no-KD
    twin (``Recipe.twin``) trains as many. A teacher fine-tuned by unikd less than ``WEAK_TEACHER_HEADROOM`` above
    its trivial baseline gets the weak-teacher plan (docs/guideline.md#weak-teachers). Bad input is a
    ``ConfigError`` naming the option (``--budget``, ``--teacher``, ``--task``, ...)."""
    fraction = budget_fraction(budget)
    _check_options(task, data_files, latency_ms, latency_estimate, device, max_length, plan)
    data = _labelled_data(task, data_files, max_length, data_dir)
    causal, causal_train_rows = causal_rows(data) if not task else (False, None)
    task_type, train_rows, uncounted = ("causal-lm", causal_train_rows, "") if causal else _read_data(data)
    metric, headroom = _teacher_run(teacher)
    weak = headroom is not None and headroom < WEAK_TEACHER_HEADROOM
    two_step = _two_step(plan, task_type, weak)

    teacher_cfg = model_config(resolve_model_path(teacher, "--teacher"), "--teacher")
    spec = get_adapter(teacher_cfg, field="--teacher").spec(teacher_cfg)
    teacher_non_emb = count_parameters(teacher_cfg).non_embedding
    rows = _candidates(teacher_cfg, fraction)
    if not rows:
        raise ConfigError(
            "--budget",
            f"no student shape of this teacher ({spec.num_layers} x {spec.hidden_size}, {teacher_non_emb:,} "
            f"non-embedding parameters) fits within {budget}",
            "give a larger --budget (`unikd student budget --non-embedding` lists the shapes near one)",
        )
    measured = None
    slower: list[str] = []
    if latency_ms is None:
        row, group = rows[0]
    else:
        (row, group), measured, slower = _pick_by_latency(teacher_cfg, rows, latency_ms, max_length, latency_estimate)
    full_width = row.hidden_size == spec.hidden_size
    init = InitConfig(strategy="teacher-layers" if full_width else "slice", layers="uniform")

    name = task or "data"
    doc = {
        "stage": "task",
        "teacher": {"path": teacher},
        "student": {
            "shape": row.shape().model_dump(exclude_none=True),
            "init": {"strategy": init.strategy, "layers": init.layers},
        },
        "data": data,
    }
    if causal:  # unikd.recipe_causal: a decoder on prompt/response data
        add_causal_plan(doc, train_rows)
    else:
        _add_plan(doc, two_step, row, spec, data, train_rows, weak)
    if metric:
        doc["eval"] = {"metric": metric}
    doc["output_dir"] = output_dir or f"runs/recipe-{name}-{row.num_layers}x{row.hidden_size}"
    cfg = load_config(base=doc)
    check_student_init(teacher_cfg, cfg.student.shape, cfg.student.init)
    _check_plans(cfg, teacher_cfg)

    reasons = _reasons(cfg, row, group, teacher_non_emb, fraction, latency_ms, measured, slower, latency_estimate)
    if causal:
        reasons = causal_reasons(cfg, reasons[0], train_rows) + [r for r in reasons if r.choice == "latency"]
    reasons.append(_steps_reason(cfg, train_rows, uncounted))
    if headroom is not None:
        reasons.append(_teacher_reason(cfg, headroom, weak, plan))
    if metric:
        reasons.append(_metric_reason(metric))
    return Recipe(cfg, doc, row, teacher_non_emb, measured, reasons)


def _two_step(plan: str, task_type: str, weak: bool) -> bool:
    """Whether the plan is TinyBERT's two steps: asked for (sentence-level data only), or ``auto`` on sentence-level
    data with a teacher that is not weak."""
    sentence_level = task_type in ("classification", "regression")
    if plan == "two-step" and not sentence_level:
        raise ConfigError(
            "--plan",
            f"the two-step plan trains on augmented copies, and this data is {task_type} (transfer rows are for "
            "sentence classification and regression in this version)",
            "use --plan one-step (or auto)",
        )
    return plan == "two-step" or (plan == "auto" and sentence_level and not weak)


def _check_options(task, data_files, latency_ms, latency_estimate, device, max_length, plan) -> None:
    """The options that contradict each other or are out of range, each named."""
    if (task is None) == (data_files is None):
        raise ConfigError(
            "--task",
            "give the labelled data: either --task (a GLUE task) or --data-files, not "
            + ("both" if task else "neither"),
            "add --task sst2, or --data-files train=PATH,validation=PATH",
        )
    if latency_ms is not None and latency_ms <= 0:
        raise ConfigError("--latency-ms", f"must be positive, got {latency_ms:g}", "give a target such as 10")
    if latency_estimate and latency_ms is None:
        raise ConfigError("--latency-estimate", "there is no latency to estimate", "add --latency-ms, or drop it")
    if latency_ms is not None and device != "cpu":
        raise ConfigError(
            "--device",
            f"latency on {device!r} is not measured by unikd (only CPU latency is, {GUIDELINE}#student-shape-for-a-budget)",
            "use --device cpu, or drop --latency-ms",
        )
    if max_length < 8:
        raise ConfigError("--max-length", f"must be at least 8, got {max_length}", "use e.g. 128")
    if plan not in PLANS:
        raise ConfigError("--plan", f"unknown plan {plan!r}", f"use one of {', '.join(PLANS)}")


#: the batch size of the study runs the recipe rests on
_BATCH = 32


def _schedule(epochs: float, train_rows: int | None, draws: float = 1.0) -> dict:
    """One step's length: ``epochs`` over the labelled rows and the copies drawn with them (``draws`` x the rows
    per epoch) as optimizer steps when the rows are known (what the no-KD twin can be given), else as epochs."""
    if train_rows is None:
        return {"epochs": epochs}
    return {"max_steps": max(1, round(epochs * train_rows * draws / _BATCH))}


def _add_plan(doc: dict, two_step: bool, row, spec, data: dict, train_rows: int | None, weak: bool) -> None:
    """The objective and its schedule: TinyBERT's two chained steps on augmented copies, or the best-practice
    one-step plan (logits KD + labels); with a weak teacher the two steps keep the labels in step 2."""
    doc["optim"] = {"lr": _LR}
    if two_step:
        tinybert = load_preset("tinybert")
        terms = [dict(t) for t in tinybert["plan"]["terms"]]
        if row.num_heads != spec.num_heads:  # per-head maps need equal head counts; compare the head means
            terms = [dict(t, head_reduction="mean") if t["knowledge"] == "attention" else t for t in terms]
        doc["data"] = dict(data, transfer=[dict(_AUGMENT)])
        doc["plan"] = dict(tinybert["plan"], terms=terms)
        step = _schedule(_STEP_EPOCHS, train_rows, 1 + _AUGMENT["weight"])
        doc["train"] = {**step, "batch_size": _BATCH}
        second = dict(tinybert["then"][0], train=dict(step))
        if weak:
            second["plan"] = dict(second["plan"], hard_label_weight=1.0)
        doc["then"] = [second]
    else:
        doc["plan"] = load_preset("best-practice")["plan"]
        doc["train"] = {**_schedule(_ONE_STEP_EPOCHS, train_rows), "batch_size": _BATCH}


def _teacher_run(teacher: str) -> tuple[str | None, float | None]:
    """For a teacher written by a unikd fine-tune (a run's ``student/`` directory): the ``eval.metric`` it was
    scored by, and its headroom, its final dev score minus the trivial baseline's in that metric; (None, None)
    for any other teacher."""
    from unikd.config import read_run_config

    run_dir = Path(teacher).expanduser().parent
    if Path(teacher).name != "student" or not (run_dir / "config.yaml").is_file():
        return None, None
    try:
        metric = read_run_config(run_dir).eval.metric
    except ConfigError:
        return None, None
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        headroom = metrics["final"]["score"] - metrics["trivial_baseline"]["score"]
    except (OSError, ValueError, KeyError, TypeError):
        headroom = None
    return metric, headroom


def _read_data(data: dict) -> tuple[str, int | None, str]:
    """The labelled data's task type, its training rows (None where they are not read here) and, then, why not.
    A GLUE task is read from ``data_dir`` or ``$GLUE_DIR`` when one is set (a missing task folder is an error
    there, as at run time); from the hub it is not downloaded here."""
    from unikd.data import check_glue_files, glue_spec, load_task_data

    task = data.get("task")
    if task:
        if not (data.get("data_dir") or os.environ.get("GLUE_DIR")):
            return glue_spec(task).task_type, None, "the GLUE task is read from the hub when the run starts"
        try:
            check_glue_files(task, data.get("data_dir"))
        except ConfigError as exc:
            raise ConfigError("--data-dir", exc.problem, exc.fix) from None
    try:
        read = load_task_data(DataConfig.model_validate(data))
    except ConfigError as exc:
        raise ConfigError("--data-dir" if task else "--data-files", f"{exc.field}: {exc.problem}", exc.fix) from None
    return read.spec.task_type, len(read.train), ""


def _check_plans(cfg: RunConfig, teacher_cfg) -> None:
    """Every step's plan against the teacher's and the student's shapes, as `unikd validate` checks one
    (``DistillationPlan`` from configs: losses, shapes, layer pairs, projections; no weights)."""
    from unikd.families import model_spec
    from unikd.plan import DistillationPlan

    teacher_spec = model_spec(teacher_cfg)
    student_spec = model_spec(student_config(teacher_cfg, cfg.student.shape))
    for i, step in enumerate(step_dicts(cfg)):
        field = "plan" if i == 0 else f"then[{i - 1}].plan"
        DistillationPlan(RunConfig.model_validate(step).plan, teacher_spec, student_spec, field=field)


def twin_path(path: str | Path) -> Path:
    """Where the no-KD twin of the recipe at ``path`` is written: ``recipe.yaml`` -> ``recipe.no-kd.yaml``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.no-kd{path.suffix or '.yaml'}")


def write_recipe(recipe: Recipe, path: str | Path) -> Path:
    """Write ``recipe.yaml()`` to ``path`` and its no-KD twin to ``twin_path(path)``, atomically."""
    atomic_write_text(path, recipe.yaml())
    atomic_write_text(
        twin_path(path),
        f"# the no-KD twin of {Path(path).name} (written by `unikd recipe`): the same student, data, optimizer and\n"
        "# updates on the labels alone; the KD run pays where it scores above this one\n"
        + yaml.safe_dump(recipe.twin(), sort_keys=False),
    )
    return Path(path)


__all__ = [
    "GUIDELINE",
    "Reason",
    "Recipe",
    "budget_fraction",
    "make_recipe",
    "parse_data_files",
    "twin_path",
    "write_recipe",
]
