"""What a finished run leaves: the student (and ``best/``) as Hugging Face model directories, the plan's
projections, metrics.json, and beside the weights what the HF ecosystem reads (a sentence-transformers teacher's
modules, the model card). Every file is written whole or not at all (a temp name, then a rename)."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

import torch

from unikd.errors import ConfigError, DataError
from unikd.hub import copy_sentence_transformers_modules, model_card, write_model_card
from unikd.io import atomic_path, atomic_write_json, follow_umask
from unikd.models import resolve_model_path
from unikd.student import count_parameters
from unikd.train.checkpoint import disk_full


def save_model(accelerator, model, tokenizer, path: Path) -> None:
    """``save_pretrained`` of the unwrapped model and the tokenizer into ``.tmp-<name>``, given the umask's modes,
    then renamed to ``path``. A full disk removes the partial folder and says so in one line."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = path.with_name(f".tmp-{path.name}")
        if tmp.exists():
            shutil.rmtree(tmp)
        bare = accelerator.unwrap_model(model)
        try:
            bare.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
            follow_umask(tmp)
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except Exception as exc:  # each writer raises its own type on a full disk; anything else is re-raised
            if not disk_full(exc, path.parent):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            raise _disk_full_error(path, bare) from exc
    accelerator.wait_for_everyone()


def _disk_full_error(path: Path, model) -> ConfigError:
    need = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    free = shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists())).free / 2**20
    return ConfigError(
        "output_dir",
        f"the disk filled up while writing {path} (removed the partial .tmp-{path.name}); the model needs about "
        f"{need:.1f} MiB, {free:.1f} MiB are free",
        "free space on that disk or choose an output_dir on a larger one, then rerun with --resume",
    )


def save_results(state) -> dict:
    """The student, its projections and metrics.json of a completed run (``state``: the loop's ``State``);
    returns the metrics."""
    accelerator = state.accelerator
    # the student alone (projections live in checkpoints and projections.pt only), config, metrics
    save_model(accelerator, state.student, state.tokenizer, state.output_dir / "student")
    result = _metrics(state)
    if accelerator.is_main_process and _generates(state):
        from unikd.generation import evaluate_generation

        result["generation"] = evaluate_generation(
            accelerator.unwrap_model(state.student),
            _sample_scorer(state),
            state.tokenizer,
            state.task_data.validation.rows,
            state.cfg.eval.generation,
            seed=state.cfg.seed,
        )
        _score_by_samples(result, state.cfg.eval.metric)
    if accelerator.is_main_process:
        try:
            if state.plan is not None:
                with atomic_path(state.output_dir / "projections.pt") as tmp:
                    torch.save(state.plan.state_dict(), tmp)
            atomic_write_json(state.output_dir / "metrics.json", result)
        except Exception as exc:  # each writer raises its own type on a full disk; anything else is re-raised
            if not disk_full(exc, state.output_dir):
                raise
            raise ConfigError(
                "output_dir",
                f"the disk filled up while writing the run's projections.pt / metrics.json in {state.output_dir}",
                "free space on that disk, then rerun with --resume (the checkpoints are kept)",
            ) from exc
        _hf_outputs(state, result)
    return result


def _score_by_samples(result: dict, metric: str | None) -> None:
    """``eval.metric: teacher_nll | rouge_l``: the final score is the samples' (``train.causal_eval``'s table)."""
    from unikd.train.causal_eval import GENERATION_METRICS

    if metric in GENERATION_METRICS:
        value = result["generation"][metric]
        result["final"] = {**result["final"], metric: value, "score": GENERATION_METRICS[metric] * value}


def _policy_seconds(state) -> dict:
    """On-policy runs: how many steps sampled their responses from the student, and the seconds that cost (within
    wall_s, reported apart)."""
    policy = state.distiller.policy
    if policy is None:
        return {}
    return {"on_policy": {"batches": policy.batches, "generation_s": policy.seconds}}


def _sample_scorer(state):
    """The model that scores the student's samples: the run's teacher; a fine-tune (the no-KD twin) has none
    running, so the model its student was built from (teacher.path, the KD run's teacher) is loaded for it."""
    if state.teacher is not None:
        return state.teacher
    from unikd.models import load_model

    cfg = state.cfg
    path = resolve_model_path(cfg.teacher.path, "teacher.path", cfg.teacher.gguf_file)
    return load_model(path, "causal-lm", field="teacher.path").eval().to(state.accelerator.device)


def _generates(state) -> bool:
    """A causal-LM run that asks for samples (``eval.generation.rows`` > 0)."""
    return state.task is not None and state.task.task_type == "causal-lm" and state.cfg.eval.generation.rows > 0


def _metrics(state) -> dict:
    """metrics.json: what the run scored (final and best), its size and its seconds, and what setup measured."""
    final = state.history[-1] if state.history else {}
    if not final and state.cfg.stage != "general":  # never a task result without a score (the inputs refuse it)
        raise DataError("data.data_dir", "the run was never evaluated on dev", "give it a dev split with rows")
    params = count_parameters(state.accelerator.unwrap_model(state.student))
    return {
        "stage": state.cfg.stage,
        "task": state.cfg.data.task or (state.task.name if state.task is not None else None),
        "steps": state.step,
        "final": {k: v for k, v in final.items() if k != "step"},
        "best": state.best.get("metrics"),
        "best_step": state.best.get("step"),
        "parameters": params.total,
        "parameters_non_embedding": params.non_embedding,
        "wall_s": state.wall_s(),  # summed over resumed attempts: the study reads it for runs trained elsewhere
        **state.outcome,
        **_policy_seconds(state),
        "history": state.history,
    }


def _hf_outputs(state, result: dict) -> None:
    """What the HF ecosystem reads beside the weights: a sentence-transformers teacher's modules, the model card."""
    cfg, student_dir = state.cfg, state.output_dir / "student"
    teacher_path = resolve_model_path(cfg.teacher.path, "teacher.path", cfg.teacher.gguf_file)
    config = state.accelerator.unwrap_model(state.student).config
    copy_sentence_transformers_modules(teacher_path, student_dir, config.hidden_size)
    command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    card = model_card(cfg, result, teacher_path=teacher_path, student_config=config, command=command)
    write_model_card(student_dir, card)
