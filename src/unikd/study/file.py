"""The study file: its schema (``StudyConfig``), loading with overrides, and the static checks."""

from __future__ import annotations

import json
import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from unikd.config import RunConfig, format_validation_error, list_presets, read_yaml_mapping
from unikd.overrides import apply_overrides
from unikd.errors import ConfigError

STUDY_DIR = Path(__file__).parent.parent / "studies"
PRESET_AXIS = "preset"
RUNS_AXIS = "variant"  # the axis name of explicit ``runs:`` lists


# ---------------------------------------------------------------------------------------------------
# The study file
# ---------------------------------------------------------------------------------------------------
class LatencySettings(BaseModel):
    """CPU latency of each finished model: p50 per batch size in PyTorch (``unikd.latency.bench_latency``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Measure latency after each run.")
    batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1],
        min_length=1,
        description="Batch sizes timed, e.g. [1, 32]: the first is the latency of the tables and the latency plot, "
        "each other one gets a column of its own (latency b32 (ms)).",
    )
    seq_len: int | None = Field(None, ge=1, description="Sequence length (default: the run's data.max_length).")
    repeats: int = Field(10, ge=1, description="Timed repeats.")
    warmup: int = Field(2, ge=0, description="Untimed warm-up calls.")
    threads: int | None = Field(None, ge=1, description="torch threads while timing (default: the library's).")

    @field_validator("batch_sizes")
    @classmethod
    def _once_each(cls, sizes: list[int]) -> list[int]:
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"each batch size once, got {sizes}; e.g. [1, 32]")
        return sizes


class ScheduleCheck(BaseModel):
    """Steps per objective from a small check (issue 13), not the fine-tuning budget copied to every objective:
    before the study, each variant trains at every ``max_steps`` candidate on one seed and is scored on
    ``holdout`` held-out training rows (``data.holdout``: the dev split is never looked at); the study then trains
    each variant at its best candidate (ties: the fewer steps), and its no-KD and pseudo-label baselines at the
    same steps (paired at an equal budget). Variants that set their own steps (chained steps) keep them."""

    model_config = ConfigDict(extra="forbid")

    max_steps: list[Annotated[int, Field(ge=1)]] = Field(
        min_length=2, description="Candidate train.max_steps budgets, e.g. [141, 282, 564]."
    )
    holdout: int = Field(ge=1, description="Labelled training rows held out to score the check (data.holdout).")
    seed: int | None = Field(None, description="The check's seed (default: the study's first).")

    @field_validator("max_steps")
    @classmethod
    def _once_each(cls, steps: list[int]) -> list[int]:
        if len(set(steps)) != len(steps):
            raise ValueError(f"each budget once, got {steps}")
        return sorted(steps)


class BaselineSearch(BaseModel):
    """The no-KD baselines tuned as hard as KD (issue 35): before the study, each distinct no-KD student of each task
    trains at every point of ``grid`` on one seed, scored on ``holdout`` held-out training rows (``data.holdout``;
    dev is never looked at); the study then adds, per seed, a ``no-KD (tuned)`` student at the best point (ties: the
    earlier point), and the report pairs every KD variant with it as well as with its untuned twin."""

    model_config = ConfigDict(extra="forbid")

    grid: dict[str, list[Any]] = Field(
        min_length=1,
        description="field.path -> values, e.g. {optim.lr: [5.0e-5, 1.0e-4, 2.0e-4], train.max_steps: [300, 600]}: "
        "the product is searched.",
    )
    holdout: int = Field(ge=1, description="Labelled training rows held out to score the search (data.holdout).")
    seed: int | None = Field(None, description="The search's seed (default: the study's first).")
    variants: list[str] | None = Field(
        None,
        min_length=1,
        description="Labels of the KD variants whose no-KD twins are searched (default: every variant's). A "
        "variant left out is paired with its untuned twin alone, e.g. a one-factor diagnostic beside the recipe "
        "(each distinct twin costs a whole grid).",
    )

    @field_validator("grid")
    @classmethod
    def _values(cls, grid: dict) -> dict:
        for key, values in grid.items():
            if not values or len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
                raise ValueError(f"grid.{key}: give distinct values, e.g. [5.0e-5, 1.0e-4]")
        return grid


class StudyConfig(BaseModel):
    """A sweep of distillation runs over one or more axes, several tasks and seeds."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Study name (recorded in every database row).")
    description: str = Field("", description="What the study measures.")
    base: dict[str, Any] = Field(
        default_factory=dict, description="Run-config fragment every KD run starts from (may include 'preset: <name>')."
    )
    teacher_finetune: dict[str, Any] = Field(
        default_factory=dict,
        description="Run-config fragment of the teacher fine-tune (teacher.path = the pre-trained model, epochs, lr), "
        "merged over base's data, optim and train sections (less the students' transfer rows and teacher cache): "
        "where base limits the students' labels (data.train_limit), set data: {train_limit: null} here for a "
        "teacher on every training row.",
    )
    tasks: list[str | dict[str, Any]] = Field(
        min_length=1,
        description="GLUE task names (each run gets data.task), or named data specs: {name: <label in the report>, "
        "files: {train: ..., validation: ...} | dataset: ..., columns: ..., ...}, merged into each run's data.",
    )
    axes: dict[str, list[Any]] = Field(
        default_factory=dict, description="field.path -> values; the special axis 'preset' takes preset names."
    )
    labels: dict[str, list[str]] = Field(
        default_factory=dict, description="axis -> display label per value (default: the value itself)."
    )
    mode: Literal["grid", "list"] = Field(
        "grid", description="grid: product of the axes; list: zip of equal-length axes, or the explicit 'runs'."
    )
    runs: list[dict[str, Any]] | None = Field(
        None, description="mode list: explicit runs, each a mapping {field.path: value, ..., label: name}."
    )
    seeds: list[int] = Field(
        default_factory=lambda: [42], min_length=1, description="Seeds; every KD and no-KD run is repeated per seed."
    )
    output_dir: str = Field(description="Where teachers/, runs/, configs/ and study.sqlite go.")
    latency: LatencySettings = Field(default_factory=LatencySettings, description="Latency measurement.")
    schedule_check: ScheduleCheck | None = Field(
        None, description="Choose train.max_steps per variant by a check on held-out training rows first."
    )
    baseline_search: BaselineSearch | None = Field(
        None, description="Tune the no-KD baselines on held-out training rows first; the study adds the tuned ones."
    )

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
    return {
        p.stem: (yaml.safe_load(p.read_text()) or {}).get("description", "") for p in sorted(STUDY_DIR.glob("*.yaml"))
    }


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


def read_study(source: str | os.PathLike | Mapping | StudyConfig, overrides: list[str] | None = None) -> StudyConfig:
    """A study from a YAML path, a built-in name, a mapping or a ``StudyConfig``, through the static checks
    (``expand.load_study`` also expands it; a caller that expands it anyway, ``run_study``, gets the same
    validation from that one expansion)."""
    if isinstance(source, StudyConfig):
        data = source.model_dump()
    elif isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
    else:
        path = Path(source)
        if (
            not path.is_file()
            and re.fullmatch(r"[A-Za-z0-9_.-]+", str(source))
            and (STUDY_DIR / f"{source}.yaml").is_file()
        ):
            path = STUDY_DIR / f"{source}.yaml"
        if not path.is_file():
            raise ConfigError(
                "study",
                f"file {str(source)!r} does not exist",
                f"pass a study YAML, or a built-in name: {sorted(list_studies())}",
            )
        data = read_yaml_mapping(path, "study", "see unikd/studies/*.yaml")
    if overrides:
        data = apply_study_overrides(data, list(overrides))
    try:
        study = StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("study", format_validation_error(exc), "see unikd/studies/*.yaml for valid fields") from exc
    _check_study(study)
    return study


# ---- static checks ---------------------------------------------------------------------------------
def _unwrap(annotation) -> Any:
    """The next level of a field path: a BaseModel class, ('list', item) for lists, ('union', classes) for a
    choice of models (a plan term: one class per knowledge type), or None (a leaf)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (Union, UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return _unwrap(inner[0])
        if all(isinstance(a, type) and issubclass(a, BaseModel) for a in inner):
            return ("union", tuple(inner))
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
                raise ConfigError(
                    field,
                    f"{path!r}: {part!r} is not a field of {where}",
                    f"use one of {sorted(node.model_fields)} (see `unikd config-schema`)",
                )
            node = _unwrap(node.model_fields[part].annotation)
        elif isinstance(node, tuple) and node[0] == "union":
            owners = [cls for cls in node[1] if part in cls.model_fields]
            if not owners:
                names = sorted({name for cls in node[1] for name in cls.model_fields})
                raise ConfigError(
                    field,
                    f"{path!r}: {part!r} is not a field of {where}",
                    f"use one of {names} (see `unikd config-schema`)",
                )
            node = _unwrap(owners[0].model_fields[part].annotation)
        elif isinstance(node, tuple):
            if not part.isdigit():
                raise ConfigError(
                    field, f"{path!r}: {where} is a list, so {part!r} must be an index", f"write e.g. {where}.0"
                )
            node = node[1]
        else:
            raise ConfigError(field, f"{path!r}: {where} has no sub-fields", f"use {where} as the axis")


def _check_study(study: StudyConfig) -> None:
    """The checks that need no expansion, in this order; the first failing one raises ``ConfigError``."""
    _check_tasks(study)
    presets = set(list_presets())
    _check_reserved_fields(study)
    _check_base_preset(study, presets)
    _check_axes(study, presets)
    _check_labels(study)
    if study.runs is not None:
        _check_runs(study, presets)
    elif study.mode == "list" and study.axes:
        _check_zipped_axes(study)
    if study.baseline_search is not None:
        for key in study.baseline_search.grid:
            check_field_path(key, f"baseline_search.grid.{key}")


def task_entry(entry: str | dict, field: str) -> tuple[str, dict]:
    """One entry of a study's ``tasks``: its name (the report's label, the teachers/ folder) and the data fields
    each of its runs gets: ``{task: <GLUE name>}`` for a GLUE name, the spec itself (with its ``name``) for a
    data spec, validated as a ``data`` section."""
    from unikd.config import DataConfig, format_validation_error
    from unikd.data import resolve_task

    if isinstance(entry, str):
        try:
            name = resolve_task(entry).name
        except ConfigError as exc:
            raise ConfigError(field, exc.problem, exc.fix) from None
        return name, {"task": name}
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{field}.name", "a data spec in tasks needs a name", "add name: <its label in the report>")
    try:
        DataConfig.model_validate(entry)
    except ValidationError as exc:
        raise ConfigError(field, format_validation_error(exc), "give the fields of a run's data section") from None
    if not (entry.get("task") or entry.get("dataset") or entry.get("files")):
        raise ConfigError(field, "names no data", "give it files: {train: ..., validation: ...} or dataset: ...")
    return name, dict(entry)


def _check_tasks(study: StudyConfig) -> None:
    names = [task_entry(t, f"tasks[{i}]")[0] for i, t in enumerate(study.tasks)]
    if len(set(names)) != len(names):
        raise ConfigError("tasks", "lists a task twice", "list each task once (data specs by distinct names)")


def _check_reserved_fields(study: StudyConfig) -> None:
    """The fields the runner sets itself, and a preset where it cannot apply."""
    for name, frag in (("base", study.base), ("teacher_finetune", study.teacher_finetune)):
        for key in ("output_dir", "stage"):
            if key in frag:
                raise ConfigError(
                    f"{name}.{key}",
                    "is set by the study runner",
                    "remove it (teachers and no-KD runs are stage finetune, KD runs stage task, "
                    "all under the study's output_dir)",
                )
    if "seed" in study.base:
        raise ConfigError("base.seed", "is set per run from 'seeds'", "remove it and list the seeds in 'seeds'")
    if "preset" in study.teacher_finetune:
        raise ConfigError("teacher_finetune.preset", "presets are distillation objectives, not fine-tunes", "remove it")


def _check_base_preset(study: StudyConfig, presets: set[str]) -> None:
    if study.base.get("preset") is not None and study.base["preset"] not in presets:
        raise ConfigError("base.preset", f"unknown preset {study.base['preset']!r}", f"use one of {sorted(presets)}")


def _check_assignment(study: StudyConfig, presets: set[str], key: str, value: Any, field: str) -> None:
    """One ``key: value`` of an axis or an explicit run."""
    if key == PRESET_AXIS:
        if value not in presets:
            raise ConfigError(field, f"unknown preset {value!r}", f"use one of {sorted(presets)}")
        if "plan" in study.base:
            raise ConfigError(
                "base.plan",
                "a preset axis merges each preset under the base, so base.plan would replace every preset's plan",
                "remove base.plan",
            )
        return
    if key in ("stage", "output_dir", "seed") or key.startswith(("data.task", "teacher.path")):
        raise ConfigError(
            field, f"{key!r} is set by the study runner", "vary it through 'tasks', 'seeds' or teacher_finetune instead"
        )
    check_field_path(key, field)


def _check_axes(study: StudyConfig, presets: set[str]) -> None:
    for key, values in study.axes.items():
        if key != PRESET_AXIS:
            check_field_path(key, f"axes.{key}")
        for j, value in enumerate(values):
            _check_assignment(study, presets, key, value, f"axes.{key}[{j}]")


def _check_labels(study: StudyConfig) -> None:
    for key, labels in study.labels.items():
        if key not in study.axes:
            raise ConfigError(f"labels.{key}", "names no axis", f"use one of {sorted(study.axes)}")
        if len(labels) != len(study.axes[key]):
            raise ConfigError(
                f"labels.{key}",
                f"has {len(labels)} labels for {len(study.axes[key])} values",
                "give one label per axis value",
            )
        if len(set(labels)) != len(labels):
            raise ConfigError(f"labels.{key}", "labels must be distinct", "rename the duplicates")


def _check_runs(study: StudyConfig, presets: set[str]) -> None:
    """Explicit ``runs:`` (list mode without axes): each entry's assignments, and distinct labels."""
    if study.mode != "list":
        raise ConfigError("runs", "explicit runs need mode: list", "set mode: list, or use axes")
    if study.axes:
        raise ConfigError(
            "axes",
            "mode list takes either axes (zipped) or explicit runs, not both",
            "move the axes into each entry of runs",
        )
    if not study.runs:
        raise ConfigError("runs", "is empty", "list at least one run, or remove 'runs'")
    seen = set()
    for i, entry in enumerate(study.runs):
        for key, value in entry.items():
            if key == "label":
                continue
            _check_assignment(study, presets, key, value, f"runs[{i}].{key}")
        label = entry.get("label")
        if label is not None and label in seen:
            raise ConfigError(f"runs[{i}].label", f"label {label!r} is used twice", "give each run its own label")
        seen.add(label)


def _check_zipped_axes(study: StudyConfig) -> None:
    """List mode zips the axes: they need equal lengths."""
    lengths = {k: len(v) for k, v in study.axes.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError(
            "axes",
            f"mode list zips the axes, which need equal lengths (got {lengths})",
            "give every axis the same number of values, or use mode: grid",
        )
