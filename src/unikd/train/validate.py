"""What a run is checked for before anything loads: paths, the plan against the models' shapes (configs only),
a precision this machine runs, a task head that fits the data, a student initialization that fits the teacher.

``validate_run`` is what ``unikd validate`` runs and what ``setup`` runs first; ``check_head`` is the one task-head
check, asked once from the teacher's config alone and again when the data says which head and how many labels.
"""

from __future__ import annotations


from unikd import data as D
from unikd.config import RunConfig
from unikd.errors import ConfigError, warn
from unikd.families import model_spec
from unikd.initialization import check_student_init
from unikd.io import check_writable_dir
from unikd.models import model_config, model_kind_for, resolve_model_path
from unikd.plan import DistillationPlan
from unikd.student import student_config
from unikd.teacher_cache import TeacherLogitCache

_TASK_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")
#: a decoder's LM head: the task head of causal-LM data (GPT-2 names it LMHeadModel)
_CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel")


def validate_run(cfg: RunConfig):
    """Resolve paths and validate the plan against model shapes, from configs only (no weights yet), and what the
    data and the trackers need; a chained run (``then``) has every step checked so, before step 1 trains (a step's
    error names ``then[i].<field>``). Returns, for the run's own (first) step: (teacher path, teacher config, the
    head kind to load, the plan or None for a fine-tune)."""
    checked = _validate_step(cfg)
    if cfg.then:
        _validate_later_steps(cfg, checked[1])
    return checked


def validate_data(cfg: RunConfig, teacher_path: str) -> None:
    """``unikd validate``'s data check of a task/finetune run on the user's own data: causal-LM rows rendered and
    truncated with the teacher's tokenizer, labelled rows read with their columns, labels and metric (GLUE is
    checked when a run reads it: it may need the hub)."""
    if cfg.stage == "general" or cfg.data.task:
        return
    from unikd.data import check_metric, load_task_data
    from unikd.train.inputs import is_causal_data

    if is_causal_data(cfg):
        from unikd.data.causal import load_causal_task
        from unikd.models import load_tokenizer

        load_causal_task(cfg.data, load_tokenizer(teacher_path), cfg.seed)
    else:
        check_metric(load_task_data(cfg.data, seed=cfg.seed).spec, cfg.eval.metric)


def _validate_later_steps(cfg: RunConfig, teacher_config) -> None:
    """Each chained step's plan against the teacher and the student step 1 makes (a later step starts from the
    previous step's student: its shape is step 1's), its precision, data limits and trackers."""
    from unikd.config import step_dicts

    first = cfg.student
    for i, step in enumerate(step_dicts(cfg)[1:]):
        step_cfg = RunConfig.model_validate(step).model_copy(update={"student": first})
        try:
            _validate_step(step_cfg, teacher_config)
        except ConfigError as exc:
            raise ConfigError(f"then[{i}].{exc.field}", exc.problem, exc.fix) from exc


def _validate_step(cfg: RunConfig, teacher_config=None):
    teacher_path = (
        resolve_model_path(cfg.teacher.path, "teacher.path", cfg.teacher.gguf_file) if cfg.teacher.path else None
    )
    if cfg.stage in ("task", "finetune") and cfg.data.task:
        D.resolve_task(cfg.data.task)
        D.check_glue_files(cfg.data.task, cfg.data.data_dir)
    teacher_config = teacher_config or model_config(teacher_path, "teacher.path")
    kind = model_kind_for(cfg.stage, teacher_config)
    check_head(cfg, teacher_config)
    plan = None
    if cfg.stage != "finetune":
        s_config = student_config(teacher_config, cfg.student.shape)
        token_level = cfg.stage == "general" or _causal(cfg)
        plan = DistillationPlan(
            cfg.plan,
            model_spec(teacher_config),
            model_spec(s_config),
            token_level_logits=token_level,
            logits_chunk=cfg.train.logits_chunk_tokens,
            shared_vocab=_shared_vocab(cfg, teacher_path, teacher_config) if token_level else None,
        )
        if kind == "base" and (cfg.plan.hard_label_weight > 0 or any(t.knowledge == "logits" for t in cfg.plan.terms)):
            raise ConfigError(
                "plan",
                f"the teacher {cfg.teacher.path!r} has no LM head, so general-stage logits KD and the LM "
                "loss are unavailable",
                "drop the logits terms and set plan.hard_label_weight=0 (intermediate "
                "knowledge only, as MiniLM does), or use a teacher with an MLM/CLM head",
            )
    if cfg.train.fused_output_projection:
        _check_fused(cfg, plan, cfg.stage == "general" or _causal(cfg))
    if cfg.teacher.ensemble:  # more teachers: their labels, tokenizers and weights (unikd.ensemble)
        from unikd.ensemble import check_ensemble

        regression = getattr(teacher_config, "problem_type", None) == "regression" or (
            not _causal(cfg) and getattr(teacher_config, "num_labels", 2) == 1
        )
        task_type = "causal-lm" if _causal(cfg) else ("regression" if regression else None)
        check_ensemble(cfg, teacher_path, teacher_config, task_type)
    _check_inputs(cfg, teacher_config, plan)
    _check_lengths(cfg, teacher_config)
    check_trackers(cfg)
    return teacher_path, teacher_config, kind, plan


def _shared_vocab(cfg: RunConfig, teacher_path, teacher_config) -> int | None:
    """A pre-trained student whose embedding rows differ from the teacher's: the vocabulary both logits are
    cropped to (``unikd.vocab``), or the error that refuses different tokenizers."""
    init = cfg.student.init
    if init.strategy != "pretrained" or not any(t.knowledge == "logits" for t in cfg.plan.terms):
        return None
    from unikd.initialization import pretrained_config, resolve_checkpoint
    from unikd.vocab import shared_vocabulary

    student_rows = pretrained_config(init).vocab_size
    path = resolve_checkpoint(init.pretrained, "student.init.pretrained")
    return shared_vocabulary(teacher_path, teacher_config.vocab_size, path, student_rows)


def _causal(cfg: RunConfig) -> bool:
    """A task run on causal-LM data (its logits are token level: the vocabularies must agree)."""
    from unikd.train.inputs import is_causal_data

    return cfg.stage == "task" and is_causal_data(cfg)


def _check_lengths(cfg: RunConfig, teacher_config) -> None:
    """Sequences no longer than the teacher's positions (the student has the same): past them the position
    embeddings run out mid-run."""
    limit = getattr(teacher_config, "max_position_embeddings", None) or getattr(teacher_config, "n_positions", None)
    field, length = (
        ("data.block_size", cfg.data.block_size) if cfg.stage == "general" else ("data.max_length", cfg.data.max_length)
    )
    if not isinstance(limit, int) or length <= limit:
        return
    if field == "data.max_length" and "max_length" not in cfg.data.model_fields_set:
        # the default 128 on a teacher with fewer positions (tiny test models): rows are truncated to max_length
        # and left unpadded, so only a row longer than the positions would fail; said, not refused
        warn(
            f"data.max_length is the default {length} but the teacher has {limit} positions: a row longer than "
            f"that fails mid-run; set data.max_length={limit} or less"
        )
        return
    raise ConfigError(
        field,
        f"{length} tokens is more than the teacher's {limit} positions ({cfg.teacher.path!r})",
        f"use {field}={limit} or less",
    )


_TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "comet_ml": ("comet_ml",)}
_TRACKER_EXTRAS = {"comet_ml": "comet"}


def check_trackers(cfg: RunConfig) -> list[str]:
    """``train.report_to``, each checked to be installed (Accelerate would drop a missing one with a warning)."""
    import importlib.util

    for name in cfg.train.report_to:
        if not any(importlib.util.find_spec(m) for m in _TRACKER_MODULES.get(name, (name,))):
            raise ConfigError(
                "train.report_to",
                f"the tracker {name!r} is not installed",
                f"pip install 'unikd[{_TRACKER_EXTRAS.get(name, name)}]' (or pip install {name}), "
                "or drop it from train.report_to",
            )
    return list(cfg.train.report_to)


def check_head(cfg: RunConfig, teacher_config, task=None) -> None:
    """A task-stage teacher must carry a fine-tuned task head; once the data is known (``task``, its
    ``unikd.data.TaskSpec``), the data's: a token-classification head for NER data, and its number of labels."""
    if cfg.stage != "task":
        return
    archs = teacher_config.architectures or []
    if task is None:
        want = _TASK_HEADS + _CAUSAL_HEADS
    elif task.task_type == "causal-lm":
        want = _CAUSAL_HEADS
    elif task.task_type == "extractive-qa":
        want = ("ForQuestionAnswering",)
    else:
        want = ("ForTokenClassification" if task.is_token else "ForSequenceClassification",)
    if not any(a.endswith(want) for a in archs):
        if task is None:
            raise ConfigError(
                "teacher.path",
                f"{cfg.teacher.path!r} has no fine-tuned task head ({archs or 'no architectures'})",
                f"fine-tune it first: unikd finetune teacher.path={cfg.teacher.path} {data_args(cfg)}, "
                "then use that run's student/ directory as teacher.path",
            )
        raise ConfigError(
            "teacher.path",
            f"{cfg.teacher.path!r} has a {archs} head but the data is a {task.task_type} task (needs *{want[0]})",
            f"fine-tune a teacher on this data first: unikd finetune teacher.path=<base model> {data_args(cfg)}",
        )
    if (
        task is not None
        and task.task_type not in ("causal-lm", "extractive-qa")
        and teacher_config.num_labels != task.num_labels
    ):
        raise ConfigError(
            "teacher.path",
            f"the teacher has {teacher_config.num_labels} labels but the data has {task.num_labels}",
            "use the teacher fine-tuned on this data (unikd finetune ... its student/ directory)",
        )


def check_precision(cfg: RunConfig) -> None:
    """fp16 where Accelerate would place the run on a CPU: it would train in fp32 without a word, so refuse it (bf16
    autocasts on a CPU: it runs). Asked of PartialState before the Accelerator exists: a refused precision must not
    stick to the process."""
    from accelerate import PartialState

    if cfg.train.precision == "fp16" and (cfg.train.cpu or PartialState().device.type == "cpu"):
        raise ConfigError(
            "train.precision",
            "fp16 mixed precision needs a CUDA GPU, and this run would be on a CPU (Accelerate would silently train "
            "in fp32)",
            "use train.precision=bf16 (CPU autocast) or train.precision=no, or run on a GPU",
        )


def _check_inputs(cfg: RunConfig, teacher_config, plan: DistillationPlan | None) -> None:
    """What ``validate`` can tell without weights or data: a writable output_dir, a precision this machine
    runs, a plan with something to train, a student initialization that fits the teacher."""
    check_writable_dir(cfg.output_dir, "output_dir")
    if cfg.train.teacher_cache_dir:
        check_writable_dir(cfg.train.teacher_cache_dir, "train.teacher_cache_dir")
    check_precision(cfg)
    if plan is not None and cfg.train.teacher_cache and cfg.stage == "task":
        TeacherLogitCache.check_plan(plan)
    p = cfg.plan
    if cfg.stage != "finetune" and not p.terms and p.hard_label_weight == 0 and not p.hard_label_weight_end:
        raise ConfigError(
            "plan.terms",
            "the plan has no distillation terms and plan.hard_label_weight is 0, so there is nothing to train",
            "add a term (e.g. plan.terms=[{knowledge: logits, loss: kl}]) or set plan.hard_label_weight=1",
        )
    check_student_init(teacher_config, cfg.student.shape, cfg.student.init)
    _warn_settings_that_do_nothing(cfg)
    if cfg.stage == "task" and cfg.student.init.strategy == "random":
        # A warning, not an error: a random student is a legitimate study arm (the initialization study runs it).
        warn(
            "student.init.strategy: random for task-stage KD: a random student distils far worse than one built "
            "from the teacher's layers, and fell below its own no-KD twin (docs/study-cpu.md, \"Initialization at "
            'the transfer protocol"); use student.init.strategy=teacher-layers (or a general-stage student via '
            "student.init.strategy=pretrained) unless a random student is what you study"
        )


def _check_fused(cfg: RunConfig, plan: DistillationPlan | None, token_level: bool) -> None:
    """train.fused_output_projection: a decoder's (or general-stage) token-level step whose logits terms all have
    a chunked divergence."""
    from unikd.divergences import ROWS

    if not cfg.train.logits_chunk_tokens:
        raise ConfigError(
            "train.fused_output_projection",
            "the fused projection works chunk by chunk",
            "set train.logits_chunk_tokens too (e.g. 1024)",
        )
    if cfg.train.teacher_cache_topk:
        raise ConfigError(
            "train.fused_output_projection",
            "KD from the top-k teacher cache (train.teacher_cache_topk) reads the student's full logits",
            "drop train.teacher_cache_topk or train.fused_output_projection",
        )
    if not token_level:
        raise ConfigError(
            "train.fused_output_projection",
            "the fused projection is for token-level logits (a decoder's causal-LM data, or the general stage); "
            "a classification head's [batch, classes] logits are small",
            "drop train.fused_output_projection",
        )
    for i, term in enumerate(cfg.plan.terms):
        if term.knowledge == "logits" and term.loss not in ROWS:
            raise ConfigError(
                f"plan.terms[{i}].loss",
                f"{term.loss!r} has no fused form (train.fused_output_projection)",
                f"use one of {', '.join(ROWS)}, or drop train.fused_output_projection",
            )


#: below this T², T² x a divergence underflows fp32 (its smallest normal is 1.2e-38; a KL is rarely above 1e3)
_T2_FLOOR = 1e-30


def _warn_settings_that_do_nothing(cfg: RunConfig) -> None:
    """Warnings, not errors, for settings a run accepts but that change nothing: a teacher precision in a fine-tune
    (no teacher runs), a temperature whose T² scaling zeroes its term."""
    if cfg.stage == "finetune" and cfg.teacher.precision != "fp32":
        warn(
            f"teacher.precision={cfg.teacher.precision}: a fine-tune runs no teacher (teacher.path is the model the "
            "student is built from), so it changes nothing; drop it"
        )
    if cfg.stage == "finetune":
        return
    for i, term in enumerate(cfg.plan.terms):
        temps = [t for t in (getattr(term, "temperature", None), getattr(term, "temperature_end", None)) if t]
        if getattr(term, "t2_scaling", False) and temps and min(temps) ** 2 < _T2_FLOOR:
            warn(
                f"plan.terms[{i}].temperature: T = {min(temps):g} with t2_scaling multiplies the term by T^2 = "
                f"{min(temps) ** 2:.1e}, which is 0 in fp32: the term trains nothing; use a temperature near 1-8, "
                "or t2_scaling: false"
            )


def data_args(cfg: RunConfig) -> str:
    """The run's labelled source as command-line overrides (for messages)."""
    if cfg.data.task:
        return f"data.task={cfg.data.task}"
    if cfg.data.dataset:
        return f"data.dataset={cfg.data.dataset}"
    return "data.files={" + ", ".join(f"{k}: {v}" for k, v in cfg.data.files.items()) + "}"
