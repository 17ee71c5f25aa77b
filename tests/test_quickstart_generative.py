"""``unikd quickstart --generative`` on the toy decoder: its KD student and no-KD twin, the table's numbers read
from their runs, the teacher's samples kept, the paired numbers computed from the per-seed scores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from unikd.config import read_run_config
from unikd.errors import ConfigError
from unikd.quickstart_generative import run_generative_quickstart


def _gsm8k_layout(root: Path, source: Path) -> Path:
    """The toy addition rows as GSM8K's {question, answer} files under instruct/gsm8k/."""
    folder = root / "data" / "instruct" / "gsm8k"
    folder.mkdir(parents=True)
    for split, name in (("train", "train"), ("validation", "dev")):
        rows = [json.loads(line) for line in (source / f"{split}.jsonl").read_text().splitlines()]
        lines = [json.dumps({"question": r["prompt"], "answer": r["response"]}) for r in rows]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return root / "data"


def test_the_generative_quickstart_trains_both_students_and_reads_its_table_from_them(teacher_run, tmp_path, capsys):
    root, _ = teacher_run
    data = _gsm8k_layout(tmp_path, root)
    teacher = str(root / "teacher" / "student")
    kwargs = dict(
        data_dir=data, rows=300, student_layers=1, steps=40, eval_rows=60, samples=4, teacher=teacher, max_length=16
    )
    summary = run_generative_quickstart(tmp_path / "qs", seeds=[1, 2], **kwargs)
    where = tmp_path / "qs" / "gsm8k-300rows-1layers-40steps"
    teacher_row, kd, twin = summary["rows"]
    for seed, i in ((1, 0), (2, 1)):
        kd_dir, twin_dir = where / f"seed-{seed}" / "kd-student", where / f"seed-{seed}" / "no-kd-student"
        kd_cfg, twin_cfg = read_run_config(kd_dir), read_run_config(twin_dir)
        assert (kd_cfg.stage, twin_cfg.stage) == ("task", "finetune")
        assert kd_cfg.plan.terms[0].loss == "kl" and kd_cfg.plan.hard_label_weight == 1.0
        # the twin: the same student, rows, steps, optimizer and seed
        assert kd_cfg.student == twin_cfg.student and kd_cfg.data == twin_cfg.data and kd_cfg.optim == twin_cfg.optim
        assert (twin_cfg.train.max_steps, twin_cfg.seed) == (40, seed)
        kd_m, twin_m = (json.loads((d / "metrics.json").read_text()) for d in (kd_dir, twin_dir))
        assert kd["per_seed"][i] == kd_m["final"]["perplexity"]
        assert twin["per_seed"][i] == twin_m["final"]["perplexity"]
        assert kd["teacher_nll_per_seed"][i] == kd_m["generation"]["teacher_nll"]
    ratio = summary["paired"]["log_perplexity_ratio"]
    logs = [math.log(a / b) for a, b in zip(kd["per_seed"], twin["per_seed"])]
    assert ratio["per_seed"] == pytest.approx(logs) and ratio["diff_mean"] == pytest.approx(sum(logs) / 2)
    assert ratio["ci_low"] < ratio["diff_mean"] < ratio["ci_high"]
    # the teacher's row: what the KD run measured of it (the toy teacher learnt the plain rendering, the quickstart
    # renders the chat template, so no ordering to the students is asserted), beside the unigram baseline
    first = json.loads((where / "seed-1" / "kd-student" / "metrics.json").read_text())
    assert teacher_row["perplexity"] == first["teacher_dev"]["perplexity"]
    assert teacher_row["unigram_perplexity"] == first["trivial_baseline"]["perplexity"]
    assert teacher_row["perplexity"] < teacher_row["unigram_perplexity"]
    assert teacher_row["generation"]["rows"] == 4 and len(teacher_row["generation"]["samples"]) == 1
    out = capsys.readouterr().out
    assert "dev perplexity" in out and "KD student vs no-KD student: perplexity" in out
    # a second call trains nothing and regenerates nothing: it reads the runs and the teacher's kept samples
    cache = where / "teacher-generation.json"
    before = {p: p.stat().st_mtime_ns for p in [cache, *where.glob("seed-*/*/metrics.json")]}
    again = run_generative_quickstart(tmp_path / "qs", seeds=[1, 2], **kwargs)
    assert again["rows"] == summary["rows"]
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_missing_gsm8k_files_name_the_data_dir_before_any_model_loads(tmp_path):
    with pytest.raises(ConfigError) as exc:
        run_generative_quickstart(tmp_path / "qs", data_dir=tmp_path / "nothing", teacher="unused")
    assert exc.value.field == "--data-dir" and "instruct/gsm8k" in exc.value.fix


def test_bad_sizes_name_the_option(tmp_path):
    with pytest.raises(ConfigError) as exc:
        run_generative_quickstart(tmp_path / "qs", steps=0, teacher="unused")
    assert exc.value.field == "--steps"


def test_the_cli_flag_runs_the_generative_quickstart(tmp_path):
    from typer.testing import CliRunner

    from unikd.cli import app

    result = CliRunner().invoke(
        app, ["quickstart", "--generative", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "qs")]
    )
    assert result.exit_code != 0 and "--data-dir" in result.output and "Traceback" not in result.output
