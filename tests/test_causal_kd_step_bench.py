"""benchmarks/causal_kd_step.py in --tiny mode: every method runs and reports, and unikd's generation gives the
tokens plain HF generate gives (no timing assertions: speed lives in the benchmark's JSON)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "causal_kd_step.py"


def test_the_decoder_benchmark_runs_every_method_and_generates_the_same_tokens(tmp_path):
    spec = importlib.util.spec_from_file_location("causal_kd_step", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--tiny", "--out", str(tmp_path / "r.json")])
    assert set(result["steps"]) == {"limit", *bench.METHODS}
    assert all(m["step_s"] > 0 and m["ratio"] > 0 for m in result["steps"].values())
    assert result["steps"]["limit"]["ratio"] == 1.0
    assert result["generation"]["same_tokens"] and result["generation"]["unikd_tokens_per_s"] > 0
    assert (tmp_path / "r.json").is_file()
