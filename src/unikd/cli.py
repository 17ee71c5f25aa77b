"""The `unikd` command line. Each command is a thin layer over the library functions."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from unikd.errors import ConfigError, is_main_process

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Unified knowledge distillation for transformer language models."
)
student_app = typer.Typer(no_args_is_help=True, help="Build and size students.")
app.add_typer(student_app, name="student")


def _print_version(value: bool) -> None:
    if value:
        from unikd import __version__

        typer.echo(f"unikd {__version__}")
        raise typer.Exit()


@app.callback()
def _setup(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library logs (load reports, warnings)."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print unikd's version and exit."
    ),
):
    """Keep the terminal for unikd's own progress bars and tables unless --verbose."""
    if not verbose:
        import warnings

        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        import datasets

        datasets.disable_progress_bars()
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)


def _fail(exc: Exception) -> None:
    """Print the error and exit with its code (README "Exit codes": 2 config, 3 data, 4 non-finite training)."""
    from unikd.errors import exit_code

    line, details = exc.headline() if isinstance(exc, ConfigError) else (str(exc), "")
    typer.secho(f"error: {line}", fg=typer.colors.RED, err=True)
    if details:  # the one-line error first, then what a library said at length
        typer.echo("\n".join("  " + d for d in details.splitlines()), err=True)
    raise typer.Exit(exit_code(exc))


def command(*args, on: typer.Typer = app, **kwargs):
    """``@on.command(...)`` whose function's ``ConfigError`` (and its DataError / TrainingError) prints one line,
    ``error: <field>: <problem>. Fix: <fix>``, and exits with the error's code instead of a traceback."""

    def register(fn):
        @functools.wraps(fn)
        def checked(*a, **kw):
            try:
                return fn(*a, **kw)
            except ConfigError as exc:
                _fail(exc)

        return on.command(*args, **kwargs)(checked)

    return register


#: `unikd study --max-hours` stopped with runs pending (README "Exit codes"); the same command resumes the study
EXIT_PENDING = 5

_RESUME_WITH_CHANGES_HELP = (
    "With --resume (implied): continue even though result-changing fields differ from the run's config.yaml; "
    "the changes and the step are recorded in resume_history.json."
)


def _run_stage(
    config: Optional[Path],
    overrides: list[str],
    resume: bool,
    stage: Optional[str],
    with_changes: bool = False,
    print_config: bool = False,
) -> None:
    from unikd.config import dump_config, load_config
    from unikd.train import run

    if config is not None and "=" in str(config) and not config.is_file():
        overrides, config = [str(config)] + overrides, None  # `unikd finetune key=value ...` without a file
    base = {"stage": stage} if stage else None
    cfg = load_config(config, overrides, base=base)
    if stage and cfg.stage != stage:
        cfg = load_config(config, overrides + [f"stage={stage}"])
    if print_config:  # the resolved config (preset, file and overrides merged, defaults filled); no run
        typer.echo(dump_config(cfg), nl=False)
        return
    result = run(cfg, resume=resume or with_changes, resume_with_changes=with_changes)
    if is_main_process():  # under several processes every rank returns the result; print it once
        typer.echo(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2, default=float))


@command()
def distill(
    config: Optional[Path] = typer.Argument(None, help="YAML run config (see examples/)."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. train.max_steps=100."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in output_dir."),
    resume_with_changes: bool = typer.Option(False, "--resume-with-changes", help=_RESUME_WITH_CHANGES_HELP),
    print_config: bool = typer.Option(
        False, "--print-config", help="Print the resolved config (YAML) and exit without running."
    ),
):
    """Run a distillation stage (general or task) from a YAML config plus overrides."""
    _run_stage(config, overrides or [], resume, None, resume_with_changes, print_config)


@command()
def finetune(
    config: Optional[Path] = typer.Argument(None, help="YAML run config."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. data.task=sst2."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
    resume_with_changes: bool = typer.Option(False, "--resume-with-changes", help=_RESUME_WITH_CHANGES_HELP),
    print_config: bool = typer.Option(
        False, "--print-config", help="Print the resolved config (YAML) and exit without running."
    ),
):
    """Fine-tune a model on a task without KD (the teacher, or the no-KD student baseline)."""
    _run_stage(config, overrides or [], resume, "finetune", resume_with_changes, print_config)


@command()
def validate(
    config: Optional[Path] = typer.Argument(None, help="YAML run config (or none: key=value overrides alone)."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides."),
):
    """Validate a config (fields, paths, the plan against the model shapes; your own labelled data: its columns,
    labels and metric) without training."""
    from unikd.config import load_config
    from unikd.train import validate_run
    from unikd.train.validate import validate_data

    overrides = overrides or []
    if config is not None and "=" in str(config) and not config.is_file():
        overrides, config = [str(config), *overrides], None  # `unikd validate key=value ...` without a file
    cfg = load_config(config, overrides)
    validate_data(cfg, validate_run(cfg)[0])
    typer.echo(f"ok: {config or 'the overrides'}")


@command()
def augment(
    config: Path = typer.Argument(..., help="YAML run config with data.transfer augment sources."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides."),
    rows: int = typer.Option(3, help="Labelled rows to augment and print."),
    out: Optional[Path] = typer.Option(None, help="Write the copies of those rows as JSON lines (the rates: JSON)."),
    flip_rate: bool = typer.Option(
        False,
        "--flip-rate",
        help="Measure how often the copies change label as the fine-tuned teacher reads them, on --rows drawn rows.",
    ),
):
    """Materialize a config's augmentation (data.transfer kind: augment) on its first labelled rows and print them;
    with --flip-rate, the teacher's label-flip rate of the copies instead."""
    from unikd.augment_cli import augment_sample, flip_rate_text

    if flip_rate:
        typer.echo(flip_rate_text(config, overrides or [], rows=rows, out=out))
        return
    text = augment_sample(config, overrides or [], rows=rows, out=out)
    typer.echo(text)


@command()
def generate(
    config: Optional[Path] = typer.Argument(None, help="YAML run config (causal-LM data and its teacher)."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides."),
    out: Path = typer.Option(..., "--out", help="The JSONL file to write (an existing one is completed, not redone)."),
    batch_size: int = typer.Option(16, help="Prompts generated together."),
):
    """Write the teacher's response to every training prompt (plan.sampling) for sequence-level KD
    (plan.policy=sequence_kd plan.generations=FILE); a killed run resumes where it stopped."""
    from unikd.generate_cli import generate_file

    typer.echo(generate_file(config, overrides or [], out, batch_size))


@command()
def recipe(
    teacher: str = typer.Option(..., help="Teacher: hub id, directory or pkg:<package>."),
    budget: str = typer.Option(
        ..., help="Student size: a fraction of the teacher's non-embedding parameters, e.g. 1/4."
    ),
    task: Optional[str] = typer.Option(None, help="GLUE task (data.task), e.g. sst2."),
    data_dir: Optional[str] = typer.Option(
        None, "--data-dir", help="The GLUE folder of --task (data.data_dir; else $GLUE_DIR): its rows are counted."
    ),
    data_files: Optional[str] = typer.Option(
        None, "--data-files", help="Your labelled files (data.files): train=PATH,validation=PATH."
    ),
    latency_ms: Optional[float] = typer.Option(
        None, "--latency-ms", help="Batch-1 latency target: each candidate shape is timed on this CPU (1 thread)."
    ),
    device: str = typer.Option("cpu", help="Where the latency target holds (only cpu is measured)."),
    latency_estimate: bool = typer.Option(
        False, "--latency-estimate", help="Time only the teacher and scale by FLOPs (faster; low for narrow shapes)."
    ),
    max_length: int = typer.Option(128, "--max-length", help="data.max_length, also the timed sequence length."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help="The run's output_dir."),
    out: Path = typer.Option(Path("recipe.yaml"), help="Where the run config is written."),
    plan: str = typer.Option(
        "auto",
        "--plan",
        help="two-step: TinyBERT's two chained steps on 4 augmented copies (the four-task best, ~2x the time); "
        "one-step: logits KD + labels; auto: two-step for sentence classification/regression, else one-step.",
    ),
):
    """Write a run config for a teacher and a budget by docs/guideline.md, with one line of why per choice, and its
    no-KD twin beside it (OUT with .no-kd before the suffix)."""
    from unikd.recipe import make_recipe, twin_path, write_recipe

    made = make_recipe(
        teacher,
        budget,
        task=task,
        data_files=data_files,
        latency_ms=latency_ms,
        device=device,
        latency_estimate=latency_estimate,
        max_length=max_length,
        output_dir=output_dir,
        plan=plan,
        data_dir=data_dir,
    )
    write_recipe(made, out)
    for reason in made.reasons:
        typer.echo(reason.line())
    typer.echo(f"wrote {out}: unikd distill {out}")
    typer.echo(f"wrote {twin_path(out)}, its no-KD twin: unikd distill {twin_path(out)} (the KD run pays above it)")


@command("config-schema")
def config_schema():
    """Print the JSON schema of the run config (every field with its description)."""
    from unikd.config import RunConfig

    typer.echo(json.dumps(RunConfig.model_json_schema(), indent=2))


@command("budget", on=student_app)
def student_budget(
    teacher: str = typer.Option(..., help="Teacher: hub id, directory or pkg:<package>."),
    budget: str = typer.Option(..., help="Parameters: '22M', '1/4' or '0.25x' of the teacher."),
    tolerance: float = typer.Option(0.05, help="Relative tolerance around the budget."),
    non_embedding: bool = typer.Option(
        False, "--non-embedding", help="Count (and take a fraction of) the non-embedding parameters only."
    ),
):
    """List depth x width x heads students within the budget (width-versus-depth studies)."""
    from unikd.models import model_config, resolve_model_path
    from unikd.student import budget_configs, format_budget_table

    config = model_config(resolve_model_path(teacher, "--teacher"), "--teacher")
    rows = budget_configs(
        config, budget, tolerance=tolerance, count="non_embedding" if non_embedding else "total", field="--budget"
    )
    typer.echo(format_budget_table(rows))


@command("params", on=student_app)
def student_params(
    teacher: str = typer.Option(..., help="Teacher: hub id, directory or pkg:<package>."),
    overrides: list[str] = typer.Argument(None, help="Shape overrides: num_layers=4 hidden_size=312 ..."),
):
    """Exact parameter counts of a student built from the teacher's config."""
    from unikd.overrides import apply_overrides
    from unikd.models import model_config, resolve_model_path
    from unikd.student import StudentShape, count_parameters, student_config

    config = model_config(resolve_model_path(teacher, "--teacher"), "--teacher")
    shape = StudentShape.model_validate(apply_overrides({}, overrides or []))
    counts = count_parameters(student_config(config, shape))
    typer.echo(
        json.dumps(
            {"embedding": counts.embedding, "non_embedding": counts.non_embedding, "total": counts.total}, indent=2
        )
    )


@command("new", on=student_app)
def student_new(
    tokenizer: str = typer.Option(..., help="Tokenizer: hub id or directory (its full vocabulary is the model's)."),
    out: Path = typer.Option(..., help="The model directory to write (new or empty)."),
    family: str = typer.Option("llama", help="llama or gpt2."),
    layers: int = typer.Option(4),
    hidden_size: int = typer.Option(256),
    heads: int = typer.Option(4),
    kv_heads: Optional[int] = typer.Option(None, help="llama: grouped KV heads (default: --heads)."),
    seed: int = typer.Option(0),
):
    """A randomly initialized decoder to train from scratch (stage finetune), for a user without a pre-trained one."""
    from unikd.scratch import new_model

    made = new_model(tokenizer, out, family=family, layers=layers, hidden_size=hidden_size, heads=heads,
                     kv_heads=kv_heads, seed=seed)  # fmt: skip
    typer.echo(
        f"{made['path']}: {made['family']}, {made['parameters'] / 1e6:.2f}M parameters, vocab {made['vocab_size']}"
    )


@command()
def export(
    run_dir: Path = typer.Argument(..., help="A run directory (its student/) or a model directory."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default: RUN_DIR/export)."),
    formats: str = typer.Option("hf,onnx,int8", help="Comma-separated: hf, onnx, int8."),
    dev_rows: Optional[int] = typer.Option(
        None, help="Score each form on the first N dev rows of the run's task (default: the whole dev set)."
    ),
):
    """Export the student as a HF directory, ONNX and ONNX Runtime int8, each checked against PyTorch.

    For a run directory of a task run, each form is also scored on the task's dev set, so the int8
    accuracy is reported next to fp32's.
    """
    from unikd.export import export_student
    from unikd.export_eval import run_eval_set

    model_dir = run_dir / "student" if (run_dir / "student").is_dir() else run_dir
    eval_set = run_eval_set(run_dir, dev_rows)
    result = export_student(model_dir, out or run_dir / "export", formats=tuple(formats.split(",")), eval_set=eval_set)
    typer.echo(json.dumps(result, indent=2, default=str))


@command()
def push(
    run_dir: Path = typer.Argument(..., help="A finished run directory (its student/ is uploaded) or a model dir."),
    repo_id: str = typer.Argument(..., help="The hub repository, e.g. my-name/minilm-sst2-kd."),
    private: bool = typer.Option(False, "--private", help="Create the repository as private."),
):
    """Upload the student (weights, tokenizer, config with label names, model card) to the Hugging Face hub.

    The token comes from the environment (HF_TOKEN) or `huggingface-cli login`."""
    from unikd.hub import push_run

    url = push_run(run_dir, repo_id, private=private)
    typer.echo(f"pushed {run_dir} to {repo_id}: {url}")


@command("bench-latency")
def bench_latency(
    models: list[str] = typer.Argument(
        ...,
        help="name=dir pairs (or dirs) to time; a run directory times its student/ and adds its dev score to a plot.",
    ),
    batch_sizes: str = typer.Option("1,32", help="Comma-separated batch sizes."),
    seq_len: int = typer.Option(128, help="Sequence length."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: all)."),
    backends: str = typer.Option("torch,onnx,int8", help="Comma-separated: torch, onnx, int8."),
    repeats: int = typer.Option(20, help="Timed repeats per setting."),
    out: Path = typer.Option(Path("latency"), help="Directory for latency.json and the table."),
):
    """p50/p95 CPU latency, size on disk and FLOPs for teacher and students in PyTorch and ONNX Runtime."""
    from unikd.models import resolve_model_path
    from unikd.io import atomic_write_text
    from unikd.latency import bench_latency as bench, format_latency_table, plot_score_vs_latency, write_latency_json

    named, scores = {}, {}
    for item in models:
        name, _, path = item.rpartition("=") if "=" in item else (Path(item).name, "", item)
        name = name or Path(path).name
        run_dir = Path(path)
        if (run_dir / "student" / "config.json").is_file():  # a run directory: its student and its score
            path = str(run_dir / "student")
            if (run_dir / "metrics.json").is_file():
                final = json.loads((run_dir / "metrics.json").read_text()).get("final") or {}
                if final.get("score") is not None:
                    scores[name] = final["score"]
        named[name] = resolve_model_path(path, "models")
    rows = bench(
        named,
        batch_sizes=tuple(int(b) for b in batch_sizes.split(",")),
        seq_len=seq_len,
        threads=threads,
        backends=tuple(backends.split(",")),
        repeats=repeats,
        work_dir=out / "onnx",
    )
    table = format_latency_table(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_latency_json(rows, out / "latency.json")
    atomic_write_text(out / "latency.md", table + "\n")
    if scores:  # run directories carry their dev score: plot score versus latency
        plot_score_vs_latency(rows, scores, out / "score_vs_latency.png")
    typer.echo(table)


@command()
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), help="Where the runs go (one folder per setting)."),
    teacher_rows: int = typer.Option(2000, help="Labelled SST-2 rows the teacher is fine-tuned on."),
    labels: int = typer.Option(500, help="Labelled SST-2 rows the students train on (a seeded subset)."),
    transfer_weight: int = typer.Option(
        8, help="Unlabelled SST-2 rows for the KD student per labelled row (labels dropped; the teacher labels them)."
    ),
    student_layers: int = typer.Option(3, help="Student depth (initialized from the pre-trained MiniLM's layers)."),
    epochs: float = typer.Option(
        2.0, help="Epochs of the teacher and of the KD student; the no-KD student gets the KD student's step count."
    ),
    pseudo_labels: bool = typer.Option(False, help="Also train the pseudo-label baseline on the same unlabelled rows."),
    method: str = typer.Option(
        "tinybert",
        help="The KD student's method: tinybert (TinyBERT's two chained steps, half the steps each) or logits "
        "(logits KL + labels, one step).",
    ),
    seeds: str = typer.Option(
        "42",
        help="The students' seeds, comma-separated (one teacher): with several, each row is the mean over them and "
        "the KD student's paired differences to the baselines get a 95% interval, e.g. --seeds 1,2,3.",
    ),
    generative: bool = typer.Option(
        False, "--generative", help="The decoder quickstart: SmolLM2 -> a 4-layer student on GSM8K, and its twin."
    ),
    data_dir: Path = typer.Option(Path("../shared/data"), help="--generative: holds the GGUF teacher and GSM8K."),
    steps: int = typer.Option(100, help="--generative: each student's optimizer steps (batch 4)."),
):
    """The README's main job: teacher fine-tune -> KD student (few labels, much text) -> no-KD student, on SST-2."""
    from unikd.quickstart import parse_seeds, run_quickstart

    if generative:
        from unikd.quickstart_generative import run_generative_quickstart

        run_generative_quickstart(out / "generative", data_dir=data_dir, steps=steps, seeds=parse_seeds(seeds))
        return

    run_quickstart(
        out,
        teacher_rows=teacher_rows,
        labels=labels,
        transfer_weight=transfer_weight,
        student_layers=student_layers,
        epochs=epochs,
        pseudo_labels=pseudo_labels,
        method=method,
        seeds=parse_seeds(seeds),
    )


@command()
def study(
    ctx: typer.Context,
    study_file: Optional[Path] = typer.Argument(None, help="Study YAML (see src/unikd/studies/)."),
    builtin: Optional[str] = typer.Option(
        None, "--builtin", help="Run a built-in study by name (knowledge-types, matching, losses, ...)."
    ),
    override: list[str] = typer.Option(
        None,
        "--override",
        "-o",
        help="Patch the study: key=value (repeatable), e.g. seeds=[1] tasks=[sst2] base.data.train_limit=200.",
    ),
    workers: int = typer.Option(1, "--workers", help="Parallel worker processes (1 = in this process)."),
    print_commands: bool = typer.Option(
        False,
        "--print-commands",
        help="Write each pending run's config and print `accelerate launch` commands instead of running.",
    ),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run failed runs again."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Override the study's output_dir."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write the report when done."),
    list_builtin: bool = typer.Option(False, "--list", help="List the built-in studies and exit."),
    max_hours: Optional[float] = typer.Option(
        None,
        "--max-hours",
        help="Start no new run after H hours (runs in flight finish), report what finished, print the command "
        f"that resumes and exit {EXIT_PENDING}.",
    ),
):
    """Run a study: teacher fine-tunes, no-KD baselines and KD runs over the study's axes, tasks and seeds."""
    from unikd.study import builtin_study_path, list_studies, run_study

    if list_builtin:
        for name, desc in list_studies().items():
            typer.echo(f"{name:18s} {desc}")
        return
    if (study_file is None) == (builtin is None):
        raise ConfigError(
            "study", "give either a study file or --builtin NAME", f"built-in studies: {', '.join(list_studies())}"
        )
    source = builtin_study_path(builtin) if builtin else study_file
    summary = run_study(
        source,
        workers=workers,
        print_commands=print_commands,
        retry_failed=retry_failed,
        overrides=override or [],
        output_dir=output_dir,
        echo=typer.echo,
        max_hours=max_hours,
    )
    if not print_commands:
        _print_study_summary(summary, report)
    if summary["pending"]:
        typer.echo(
            f"{len(summary['pending'])} run(s) pending (--max-hours {max_hours} reached); the same command resumes "
            f"the study, skipping the finished runs:\n  {_study_command(ctx.params)}"
        )
        raise typer.Exit(EXIT_PENDING)
    if summary.get("failed") or (not print_commands and summary.get("status", {}).get("failed")):
        raise typer.Exit(1)


def _print_study_summary(summary: dict, report: bool) -> None:
    """What a study call did, its failures and warnings on stderr, and (``report``) the report it wrote."""
    typer.echo(json.dumps({k: summary[k] for k in ("study", "output_dir", "planned", "status")}, indent=2))
    typer.echo(
        f"executed {len(summary['executed'])}, skipped {len(summary['skipped'])}, failed {len(summary['failed'])}"
    )
    failed = max(len(summary["failed"]), summary["status"].get("failed", 0))  # this call's, or earlier ones'
    if failed:
        typer.secho(
            f"error: {failed} run(s) failed (their errors are in study.sqlite; --retry-failed runs them again)",
            fg=typer.colors.RED,
            err=True,
        )
    for warning in summary.get("warnings", []):
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    if report and summary["status"].get("done"):
        from unikd.study.report import make_report

        paths = make_report(summary["output_dir"])
        typer.echo(f"report: {paths['report.md']}")


def _study_command(params: dict) -> str:
    """The `unikd study` command line of these parameters (``ctx.params`` of the study command)."""
    import shlex

    args = ["unikd", "study"]
    args += [str(params["study_file"])] if params["study_file"] else ["--builtin", params["builtin"]]
    for item in params["override"] or []:
        args += ["-o", item]
    if params["workers"] != 1:
        args += ["--workers", str(params["workers"])]
    if params["retry_failed"]:
        args.append("--retry-failed")
    if params["output_dir"]:
        args += ["--output-dir", str(params["output_dir"])]
    if not params["report"]:
        args.append("--no-report")
    args += ["--max-hours", str(params["max_hours"])]
    return shlex.join(args)


@command()
def report(
    study_dir: Path = typer.Argument(..., help="A study's output_dir (holding study.sqlite)."),
    compare: Optional[tuple[str, str]] = typer.Option(
        None,
        "--compare",
        metavar="A B",
        help="Also the paired per-seed difference A - B of two variants (labels as the report shows them), per task "
        "and on the task average; printed instead of the whole report.",
    ),
):
    """Tables (Markdown, CSV) and plots of a study: mean ± std over seeds, GLUE average, score vs size/latency,
    paired differences to the no-KD baseline."""
    from unikd.study.aggregate import compare_variants
    from unikd.study.report import comparison_md, make_report
    from unikd.study import read_rows

    paths = make_report(study_dir, compare=compare)
    if compare:
        typer.echo(comparison_md(compare_variants(read_rows(study_dir), *compare), *compare))
    else:
        typer.echo((Path(paths["report.md"])).read_text())
    for path in paths.values():
        typer.echo(f"wrote {path}")


def main() -> None:  # pragma: no cover - console entry point
    app(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
