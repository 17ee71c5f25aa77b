"""benchmarks/token_cache_pass.py in --tiny mode: the pass and the plain forward both run and are timed, and the
cache the pass wrote holds the plain forward's top-k ids at every scored position."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "token_cache_pass.py"


def test_the_cache_pass_benchmark_times_both_and_stores_the_top_k():
    spec = importlib.util.spec_from_file_location("token_cache_pass", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--tiny"])
    assert result["stored_ids_are_the_top_k"]
    assert result["tokens"] == 8 * 16 and result["scored_tokens"] == 8 * 8  # positions 7..14 predict the response
    assert result["bytes_per_token"] == 8 * (2 + 2) + 4  # uint16 ids, fp16 log p, the fp32 tail
    assert result["plain_tokens_per_s"] > 0 and result["cache_tokens_per_s"] > 0 and result["ratio"] > 0
