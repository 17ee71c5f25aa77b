"""Same process, same batch, interleaved: the KD step wired by hand as the fourth run's benchmark did vs
Distiller.step; TinyBERT-style and MiniLMv2 plans, MiniLM-L6 teacher -> 4x312 (CPU, 1 thread, batch 8, seq 128)."""

import copy
import json
import statistics
import sys
import time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import kd_step as K
from unikd.allocator import keep_freed_memory
from unikd.capture import FeatureCapture
from unikd.families import model_spec
from unikd.plan import DistillationPlan

torch.set_num_threads(1)
keep_freed_memory()
teacher = K.load_teacher("minilm-l6").eval().requires_grad_(False)
s_cfg = K.student_config(teacher.config, K.STUDENT_SHAPES["4x312"])
torch.manual_seed(1)
init = K.BertForSequenceClassification._from_config(copy.deepcopy(s_cfg)).state_dict()
ctx = K.Context("minilm-l6", "4x312", teacher, s_cfg, init, torch.device("cpu"), None)
batch = K.make_batches(1, 8, 128, teacher.config.vocab_size, ctx.device)[0]


def by_hand(preset):
    t = ctx.teacher_copy("sdpa", f"hand-{preset}")
    s = ctx.new_student()
    plan = DistillationPlan(K._plan_config(preset, t, s), model_spec(t), model_spec(s))
    t_req, s_req = plan.requests(0)
    tc, sc = FeatureCapture(t, t_req), FeatureCapture(s, s_req)
    pairs = plan.pairs_at(0)
    opt = torch.optim.AdamW(list(s.parameters()) + list(plan.parameters()), lr=1e-4)

    def capture_student(b, tf):  # what DistillationPlan.capture_student did
        if not plan.has_attention:
            return sc(b), None
        sc.on_inline, pre = plan.inline_consumer(tf, sc.mask_of(b), sc.causal, sc.sliding_windows, step=0, pairs=pairs)
        try:
            return sc(b), pre
        finally:
            sc.on_inline = None

    def step(b):
        tf = tc(b, teacher=True)
        sf, pre = capture_student(b, tf)
        loss, _ = plan(
            tf, sf, labels=b["labels"], hard_loss=sf.output.loss, pairs=pairs, release_maps=True, precomputed=pre
        )
        del tf, sf
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


out = {}
for preset in ("tinybert", "minilmv2"):
    steps = {"by hand": by_hand(preset), "Distiller.step": K.unikd_step(preset, "auto")(ctx)}
    times = {k: [] for k in steps}
    for k in steps:
        steps[k](batch)
    for r in range(12):
        for k in list(steps) if r % 2 == 0 else list(steps)[::-1]:
            c0 = time.process_time()
            steps[k](batch)
            times[k].append(time.process_time() - c0)
    ratio = statistics.median(a / b for a, b in zip(times["Distiller.step"], times["by hand"]))
    out[preset] = {k: statistics.median(v) * 1e3 for k, v in times.items()} | {"paired_ratio": ratio}
    print(preset, json.dumps(out[preset]), flush=True)
json.dump(out, open(Path(__file__).with_suffix(".json"), "w"), indent=1)
