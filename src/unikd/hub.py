"""A run's student as the Hugging Face ecosystem takes it: real label names, sentence-transformers modules, a
model card, and ``push_run`` to the hub.

- ``name_labels(config, task)``: ``id2label`` / ``label2id`` from the GLUE task's label names (not ``LABEL_0``),
  so ``pipeline("text-classification")`` answers "positive", not "LABEL_1";
- ``copy_sentence_transformers_modules(teacher_dir, student_dir, hidden_size)``: a sentence-transformers teacher
  (``modules.json``, ``1_Pooling/``, ``sentence_bert_config.json``) gives a student with the same modules, the
  pooling width set to the student's, so ``SentenceTransformer(student_dir)`` loads it;
- ``model_card(...)`` / ``write_model_card``: ``student/README.md`` from the run (teacher, student shape and
  parameters, plan, data, metrics beside the teacher's and the no-KD baseline's where known, latency where
  measured, the command);
- ``push_run(run_dir, repo_id)``: ``huggingface_hub`` upload of ``student/``, the token from the environment.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from unikd.errors import ConfigError
from unikd.io import atomic_write_text

ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def name_labels(config, task: str | None) -> None:
    """Set ``config.id2label`` / ``label2id`` to the task's label names (classification tasks; STS-B keeps its
    single regression output unnamed)."""
    if not task:
        return
    from unikd.data import resolve_task

    info = resolve_task(task)
    if info.label_names and len(info.label_names) == config.num_labels:
        config.id2label = info.id2label
        config.label2id = info.label2id


def copy_sentence_transformers_modules(teacher_dir: str | Path, student_dir: str | Path, hidden_size: int) -> bool:
    """Give ``student_dir`` the teacher's sentence-transformers modules; False when the teacher has none.

    The Transformer module is the student itself (``path: ""``); every other module directory is copied (a
    listed one the teacher lacks, such as a parameter-free ``2_Normalize``, is created empty), and a pooling
    module's ``word_embedding_dimension`` becomes the student's hidden size.
    """
    teacher_dir, student_dir = Path(teacher_dir), Path(student_dir)
    if not (teacher_dir / "modules.json").is_file():
        return False
    for name in ST_FILES:
        if (teacher_dir / name).is_file():
            shutil.copy2(teacher_dir / name, student_dir / name)
    for module in json.loads((teacher_dir / "modules.json").read_text()):
        if not module.get("path"):
            continue
        src, dst = teacher_dir / module["path"], student_dir / module["path"]
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            dst.mkdir(parents=True, exist_ok=True)
        pooling = dst / "config.json"
        if module.get("type", "").endswith("Pooling") and pooling.is_file():
            cfg = json.loads(pooling.read_text())
            cfg["word_embedding_dimension"] = hidden_size
            atomic_write_text(pooling, json.dumps(cfg, indent=2) + "\n")
    return True


def _run_metrics(model_dir: str | Path | None) -> dict | None:
    """The final metrics of the unikd run whose ``student/`` is ``model_dir`` (e.g. a fine-tuned teacher)."""
    if not model_dir:
        return None
    path = Path(model_dir).parent / "metrics.json"
    if Path(model_dir).name != "student" or not path.is_file():
        return None
    return json.loads(path.read_text()).get("final") or None


def _fmt(value) -> str:
    return f"{100 * value:.2f}" if isinstance(value, float) and abs(value) <= 1 else str(value)


def _metrics_table(rows: dict[str, dict | None]) -> list[str]:
    names = [k for k in next((m for m in rows.values() if m), {}) if k != "step"]
    if not names:
        return ["No evaluation metrics were recorded."]
    lines = ["| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for who, metrics in rows.items():
        cells = [_fmt(metrics[k]) if metrics and k in metrics else "not measured" for k in names]
        lines.append(f"| {who} | " + " | ".join(cells) + " |")
    return lines


def model_card(
    cfg,
    result: dict,
    *,
    teacher_path: str,
    student_config,
    command: str,
    baseline: dict | None = None,
    latency: dict | None = None,
) -> str:
    """The README.md of a run's ``student/`` (Hugging Face model card: YAML front matter, then Markdown).

    ``baseline`` is the no-KD student's final metrics and ``latency`` a ``{name: ms}`` mapping, each where known
    (a study has both); the teacher's metrics are read from its run directory when it is a unikd student.
    """
    task = cfg.data.task if cfg.stage != "general" else None
    front = {"library_name": "transformers", "tags": ["unikd", "knowledge-distillation"]}
    if task:
        front.update(pipeline_tag="text-classification", datasets=["nyu-mll/glue"])
    shape = {
        "layers": student_config.num_hidden_layers,
        "hidden_size": student_config.hidden_size,
        "heads": student_config.num_attention_heads,
        "ffn_size": getattr(student_config, "intermediate_size", None),
    }
    what = {
        "general": "general (task-agnostic) distillation of the teacher",
        "task": "task distillation of the teacher",
        "finetune": "fine-tuning (no KD), its weights initialized from",
    }
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {Path(cfg.output_dir).name}",
        "",
        f"A student made by unikd with {what[cfg.stage]} `{cfg.teacher.path}`" + (f" on GLUE {task}." if task else "."),
        "",
        "## Student",
        "",
        f"- shape: {', '.join(f'{k} {v}' for k, v in shape.items() if v is not None)}",
        f"- parameters: {result['parameters']:,} ({result['parameters_non_embedding']:,} without embeddings)",
        f"- initialization: `{cfg.student.init.strategy}`",
        f"- teacher: `{cfg.teacher.path}` (resolved to `{teacher_path}`)",
        "",
    ]
    if cfg.stage != "finetune":
        plan = cfg.plan.model_dump(mode="json", exclude_defaults=True)
        lines += ["## Plan", "", "```yaml", yaml.safe_dump({"plan": plan}, sort_keys=False).strip(), "```", ""]
    data = cfg.data.model_dump(mode="json", exclude_defaults=True)
    lines += ["## Data", "", "```yaml", yaml.safe_dump({"data": data}, sort_keys=False).strip(), "```", ""]
    rows = {"this student": result.get("final") or None, "teacher": _run_metrics(teacher_path)}
    rows["no-KD student (same shape and initialization)"] = baseline
    lines += ["## Results", "", f"After {result['steps']} steps:", "", *_metrics_table(rows), ""]
    if latency:
        lines += ["## Latency", "", "| model | ms |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in latency.items()]
        lines.append("")
    lines += ["## Command", "", "```bash", command, "```", ""]
    return "\n".join(lines)


def write_model_card(student_dir: str | Path, card: str) -> Path:
    path = Path(student_dir) / "README.md"
    atomic_write_text(path, card)
    return path


def _command_in(card: str) -> str:
    """The command a card records (its "## Command" block), or '' when it has none."""
    _, _, rest = card.partition("## Command\n\n```bash\n")
    return rest.partition("\n```")[0]


def refresh_model_card(
    run_dir: str | Path, *, baseline: dict | None = None, latency: dict | None = None
) -> Path | None:
    """Write ``RUN_DIR/student/README.md`` again from the run's files, now with what only a study knows once its
    runs are done: the no-KD baseline's final metrics and the latencies ({name: ms}). The command is kept from the
    card the run wrote; None (nothing written) for a run without a card or metrics."""
    from transformers import AutoConfig

    from unikd.config import read_run_config
    from unikd.models import NO_REMOTE_CODE, resolve_model_path

    run_dir = Path(run_dir)
    card, metrics = run_dir / "student" / "README.md", run_dir / "metrics.json"
    if not (card.is_file() and metrics.is_file()):
        return None
    cfg = read_run_config(run_dir)
    text = model_card(
        cfg,
        json.loads(metrics.read_text()),
        teacher_path=resolve_model_path(cfg.teacher.path, "teacher.path", cfg.teacher.gguf_file),
        student_config=AutoConfig.from_pretrained(run_dir / "student", **NO_REMOTE_CODE),
        command=_command_in(card.read_text()),
        baseline=baseline,
        latency=latency,
    )
    return write_model_card(run_dir / "student", text)


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Upload ``RUN_DIR/student`` (or a model directory) to the hub repo ``repo_id``; returns the commit URL.

    The token comes from the environment (``HF_TOKEN``) or ``huggingface-cli login`` unless given."""
    from huggingface_hub import HfApi, get_token

    run_dir = Path(run_dir)
    folder = run_dir / "student" if (run_dir / "student").is_dir() else run_dir
    if not (folder / "config.json").is_file():
        raise ConfigError(
            "RUN_DIR", f"{run_dir} holds no student/ (nor a config.json)", "pass a finished unikd run directory"
        )
    token = token or get_token()
    if not token:
        raise ConfigError(
            "HF_TOKEN",
            "no Hugging Face token in the environment",
            "export HF_TOKEN=<a write token> (or run `huggingface-cli login`)",
        )
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=f"unikd: {run_dir.name}")
    return str(getattr(info, "commit_url", info))
