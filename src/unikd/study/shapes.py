"""The shape checks of a study's planned students against the teacher's config, before anything trains: each
distinct student shape, initialization and plan (``check_study_shapes``), so a misfit fails the study before its
teachers are fine-tuned for nothing."""

from __future__ import annotations

from unikd.errors import ConfigError
from unikd.identity import canonical
from unikd.study.expand import PlannedRun, expand_study
from unikd.study.file import StudyConfig


def check_study_shapes(
    study: StudyConfig, teacher_config=None, *, runs: list[PlannedRun] | None = None, checkpoints: bool = True
) -> int:
    """Validate every KD/no-KD run's student shape, initialization and plan against the teacher's config
    (default: the config of teacher_finetune.teacher.path), without loading weights. Returns the number
    of distinct (student, plan) combinations checked. Raises ``ConfigError`` naming the run. ``runs``: the
    study's ``expand_study`` when the caller has it already (default: expanded here). ``checkpoints``: read the
    config of each ``student.init.pretrained`` checkpoint (it must exist; its shape is the one the plan is checked
    on); False checks those runs on ``student.shape`` (a study file whose students another command makes)."""
    from unikd.models import model_config, resolve_model_path
    from unikd.families import model_spec
    from unikd.initialization import check_student_init, pretrained_config
    from unikd.plan import DistillationPlan
    from unikd.student import resolve_shape, student_config

    if runs is None:
        runs = expand_study(study)
    if teacher_config is None:
        path = (study.teacher_finetune.get("teacher") or {}).get("path") or study.base["teacher"]["path"]
        field = "teacher_finetune.teacher.path"
        teacher_config = model_config(resolve_model_path(path, field), field)
    checked = 0
    seen: set[str] = set()
    for run in runs:
        if run.kind == "teacher":
            continue
        cfg = run.config
        key = canonical([run.kind, cfg.student.model_dump(mode="json"), cfg.plan.model_dump(mode="json")])
        if key in seen:
            continue
        seen.add(key)
        try:
            init, shape = cfg.student.init, cfg.student.shape
            read_checkpoint = init.strategy == "pretrained" and checkpoints
            if init.strategy == "pretrained" and not checkpoints:
                resolve_shape(teacher_config, shape)  # another command makes the checkpoint: only the shape fields
            else:  # build_student's checks without weights: a missing or misfit checkpoint fails before the teachers
                check_student_init(teacher_config, shape, init)
            if run.kind == "kd":
                s_config = pretrained_config(init) if read_checkpoint else student_config(teacher_config, shape)
                DistillationPlan(cfg.plan, model_spec(teacher_config), model_spec(s_config))
        except ConfigError as exc:
            raise ConfigError(f"{run.run_id}: {exc.field}", exc.problem, exc.fix) from None
        checked += 1
    return checked
