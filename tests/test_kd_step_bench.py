"""benchmarks/kd_step.py in --tiny mode: every method runs and reports, so the benchmark cannot rot.

No timing assertions: only that the table and the JSON hold a row with positive throughput for the
limit and each unikd method (and for a peer tool when it is importable), and that the teacher-cache
measurement ran.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "kd_step.py"
UNIKD_METHODS = ["limit", "unikd-logits", "unikd-tinybert", "unikd-minilmv2"]


@pytest.fixture(scope="module")
def kd_step():
    spec = importlib.util.spec_from_file_location("kd_step_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_tiny_run_reports_every_method(kd_step, tmp_path, capsys):
    out = tmp_path / "kd_step.json"
    result = kd_step.main(["--tiny", "--quiet", "--json", str(out)])
    printed = capsys.readouterr().out

    data = json.loads(out.read_text())
    assert data["config"]["tiny"] is True and data["config"]["batch"] > 0
    assert data["machine"]["torch"]
    rows = {r["method"]: r for r in data["rows"]}

    expected = list(UNIKD_METHODS)
    if kd_step.textbrewer_available()[0]:
        expected += ["textbrewer-logits", "textbrewer-tinybert"]
    for method in expected:
        assert method in rows, f"no row for {method}: {sorted(rows)} / skipped {data['skipped']}"
        row = rows[method]
        assert row["samples_per_s"] > 0 and row["median_ms"] > 0
        assert row["ratio_to_limit"] > 0
        assert len(row["wall_ms"]) == len(row["cpu_ms"]) == data["config"]["repeats"] == 2
        assert row["peak_mem_mb"] is not None and row["peak_mem_mb"] >= 0
        assert any(line.startswith(method + " ") for line in printed.splitlines()), printed
    assert rows["limit"]["ratio_to_limit"] == pytest.approx(1.0)

    # every requested method either ran or says why it did not
    skipped = {s["method"]: s["reason"] for s in data["skipped"]}
    for method in kd_step.ALL_METHODS:
        assert (method in rows) != (method in skipped), method
        if method in skipped:
            assert skipped[method] and f"skipped {method}:" in printed

    cache = data["teacher_cache"]
    assert cache["no_cache_median_s"] > 0 and cache["lookup_epoch_median_s"] > 0
    assert cache["speedup_per_epoch_after_first"] > 0
    assert result["rows"] == data["rows"]


def test_rejects_unknown_method(kd_step):
    with pytest.raises(SystemExit):
        kd_step.parse_args(["--tiny", "--methods", "limit,nope"])
