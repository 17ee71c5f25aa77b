"""benchmarks/chunked_logits.py in --tiny mode: every method runs, agrees with the unchunked loss and gradients, and
the chunked and fused ones hold less for the backward pass where the unchunked divergence keeps intermediates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "chunked_logits.py"


def test_the_chunked_benchmark_runs_every_method_and_agrees(tmp_path):
    spec = importlib.util.spec_from_file_location("chunked_logits", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--tiny", "--out", str(tmp_path / "r.json")])
    for rows in result["losses"].values():
        assert set(rows) == set(bench.METHODS)
        assert all(r["same_as_unchunked"] and r["seconds"] > 0 for r in rows.values())
        assert rows["fused"]["held_mb"] < rows["chunked"]["held_mb"] <= rows["unchunked"]["held_mb"]
    jsd = result["losses"]["jsd"]
    assert jsd["chunked"]["held_mb"] < jsd["unchunked"]["held_mb"] / 3  # JSD's mixture intermediates are gone
    assert (tmp_path / "r.json").is_file()
