"""benchmarks/kd_step.py in --tiny mode: every method runs and reports, so the benchmark cannot rot.

No timing assertions: only that the table and the JSON hold a row with positive throughput for the
limit and each unikd method (and for a peer tool when it is importable), and that the teacher-cache
measurement ran. The torchdistill set-ups are also checked for computing the loss they claim to.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "kd_step.py"
UNIKD_METHODS = [
    "limit",
    "unikd-logits",
    "unikd-tinybert",
    "unikd-minilmv2",
    "unikd-tinybert-inline",
    "unikd-tinybert-recompute",
]


@pytest.fixture(scope="module")
def kd_step():
    spec = importlib.util.spec_from_file_location("kd_step_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.mark.slow
def test_tiny_run_reports_every_method(kd_step, tmp_path, capsys):
    out = tmp_path / "kd_step.json"
    result = kd_step.main(["--tiny", "--quiet", "--json", str(out), "--methods", ",".join(kd_step.ALL_METHODS)])
    printed = capsys.readouterr().out

    data = json.loads(out.read_text())
    assert data["config"]["tiny"] is True and data["config"]["batch"] > 0
    assert data["machine"]["torch"]
    rows = {r["method"]: r for r in data["rows"]}

    expected = list(UNIKD_METHODS)
    for tool in ("textbrewer", "torchdistill"):
        if getattr(kd_step, f"{tool}_available")()[0]:
            expected += [f"{tool}-logits", f"{tool}-tinybert"]
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


# ---- torchdistill: the configured objective is the one computed ---------------------------------
def _torchdistill(kd_step):
    ok, reason = kd_step.torchdistill_available()
    if not ok:
        pytest.skip(reason)


def _tiny_context(kd_step, shape):
    teacher = kd_step.load_teacher("tiny").eval().requires_grad_(False)
    s_cfg = kd_step.student_config(teacher.config, shape)
    torch.manual_seed(1)
    init = kd_step.BertForSequenceClassification._from_config(copy.deepcopy(s_cfg)).state_dict()
    return kd_step.Context("tiny", "tiny", teacher, s_cfg, init, torch.device("cpu"), None)


def _batch(kd_step, ctx):
    batch = kd_step.make_batches(1, 4, 16, ctx.teacher.config.vocab_size, ctx.device, seed=3)[0]
    assert (batch["attention_mask"] == 0).any()  # padding present: plain and masked means differ
    return batch, {k: v for k, v in batch.items() if k != "labels"}


def _shapes():
    # unikd (-> transformers) is imported only after the kd_step fixture, which makes torchvision importable
    from unikd.student import StudentShape

    return {  # the tiny teacher is 2 layers x 64 wide, 4 heads
        "projected": StudentShape(num_layers=1, hidden_size=32, num_heads=4, ffn_size=64),
        "projected-fewer-heads": StudentShape(num_layers=1, hidden_size=32, num_heads=2, ffn_size=64),
        "same-width": StudentShape(num_layers=2, hidden_size=64, num_heads=4, ffn_size=64),
    }


def _record_terms(box) -> dict:
    """Make the box's WeightedSumLoss record each sub-term's value (it keeps them only locally)."""
    values = {}

    def recorder(name, criterion):
        def run(*args, **kwargs):
            values[name] = criterion(*args, **kwargs)
            return values[name]

        return run

    for name, (criterion, weight) in list(box.criterion.term_dict.items()):
        assert weight == 1.0
        box.criterion.term_dict[name] = (recorder(name, criterion), weight)
    return values


@pytest.mark.parametrize("shape", ["projected", "projected-fewer-heads", "same-width"])
def test_torchdistill_tinybert_loss_is_its_configured_terms(kd_step, shape):
    """torchdistill's MSEs are plain means (padding included) and its soft term is a KL, where TextBrewer
    uses masked means and a CE and unikd compares pre-softmax scores: the objectives differ by design, so
    the box's loss and each of its terms are checked against the terms computed by hand from a plain
    forward with ``output_hidden_states=True, output_attentions=True`` on the same weights."""
    _torchdistill(kd_step)
    ctx = _tiny_context(kd_step, _shapes()[shape])
    pairs = kd_step.tinybert_pairs(ctx)
    box = kd_step.torchdistill_tinybert(ctx, pairs).box
    box.student_model.eval()  # no dropout, so the reference forward sees the same network
    got = _record_terms(box)
    batch, inputs = _batch(kd_step, ctx)
    with torch.no_grad():
        loss = box.forward_process(inputs, batch["labels"], None)
        t = kd_step.same_weights(ctx.teacher, "eager").eval()(
            **inputs, output_hidden_states=True, output_attentions=True
        )
        s = ctx.new_student("eager").eval()(**inputs, output_hidden_states=True, output_attentions=True)
        linears = getattr(box.student_model, "linears", None)
        assert (linears is None) == (shape == "same-width")
        t_hidden = [t.hidden_states[0]] + [t.hidden_states[lt + 1] for lt, _ in pairs]
        s_hidden = [s.hidden_states[0]] + [s.hidden_states[ls + 1] for _, ls in pairs]
        want = {
            f"hidden{i}": F.mse_loss(linears[f"h{i}"](sh) if linears is not None else sh, th)
            for i, (sh, th) in enumerate(zip(s_hidden, t_hidden))
        }
        for i, (lt, ls) in enumerate(pairs):
            sa, ta = s.attentions[ls], t.attentions[lt]
            if sa.shape[1] != ta.shape[1]:
                sa, ta = sa.sum(dim=1), ta.sum(dim=1)
            want[f"attention{i}"] = F.mse_loss(sa, ta)
        want["kd"] = F.kl_div(F.log_softmax(s.logits, dim=1), F.softmax(t.logits, dim=1), reduction="batchmean")
    print(
        f"torchdistill-tinybert [{shape}, pairs {pairs}]: box loss {loss.item():.8f}, hand-computed "
        f"{sum(want.values()).item():.8f}; "
        + ", ".join(f"{k} {got[k].item():.4g}/{v.item():.4g}" for k, v in want.items())
    )
    assert set(got) == set(want)
    for name, value in want.items():
        assert value > 0, name
        assert got[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-10), name
    assert loss.item() == pytest.approx(sum(want.values()).item(), rel=1e-6)


def test_torchdistill_logits_loss_equals_unikd_hinton_up_to_teacher_entropy(kd_step):
    """Both are 0.5 hard CE + 0.5 T² soft term at T=2 on the same weights; torchdistill's soft term is a
    KL, unikd's a cross-entropy, which differ by exactly the teacher's entropy at T (no student grad)."""
    from unikd.distiller import Distiller
    from unikd.families import model_spec
    from unikd.plan import DistillationPlan

    _torchdistill(kd_step)
    ctx = _tiny_context(kd_step, kd_step.STUDENT_SHAPES["tiny"])
    box = kd_step.torchdistill_logits(ctx).box
    box.student_model.eval()
    batch, inputs = _batch(kd_step, ctx)
    teacher, student = ctx.teacher, ctx.new_student().eval()
    plan = DistillationPlan(kd_step._plan_config("hinton", teacher, student), model_spec(teacher), model_spec(student))
    with torch.no_grad():
        td_loss = box.forward_process(inputs, batch["labels"], None)
        unikd_loss, _ = Distiller(plan, teacher, student).step(batch)
        p_t = F.softmax(teacher(**inputs).logits / 2.0, dim=1)
        entropy = -(p_t * p_t.log()).sum(dim=1).mean()
    shifted = unikd_loss - 0.5 * 2.0**2 * entropy
    print(
        f"torchdistill-logits: box loss {td_loss.item():.8f}, unikd hinton {unikd_loss.item():.8f}, "
        f"unikd - 0.5*T^2*H(teacher) {shifted.item():.8f}"
    )
    assert entropy > 0.1  # the shift is not negligible: the comparison can tell KL from CE
    assert td_loss.item() == pytest.approx(shifted.item(), rel=1e-5, abs=1e-7)
