"""keep_freed_memory: training steps stop page-faulting their memory back in (subprocesses: mallopt is
process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# A small BERT training step with a BERT vocabulary: its embedding gradient and AdamW temporaries are
# the 15 MB blocks glibc hands back to the kernel after each step by default.
PROBE = """
import json, resource, sys, torch
from transformers import BertConfig, BertForSequenceClassification
from unikd.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.manual_seed(0)
torch.set_num_threads(1)
model = BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2,
                                                 num_attention_heads=2, intermediate_size=256)).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
ids, labels = torch.randint(0, 30522, (8, 128)), torch.randint(0, 2, (8,))
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(input_ids=ids, labels=labels).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_training_steps_stop_faulting_memory_back_in():
    kept = _probe("keep")
    if not kept["applied"]:
        pytest.skip("no glibc mallopt here")
    default = _probe("default")
    steady = slice(3, None)  # after the heap has grown to a step's peak
    default_steady, kept_steady = default["faults"][steady], kept["faults"][steady]
    # glibc defaults: thousands of pages handed back and faulted in again every step (~7,500 here)
    assert min(default_steady) > 1000, default
    # kept heap: a typical step faults nothing; an occasional step may still grow the heap once (a CI
    # machine saw one step of 1,617 pages), so the bound is on the median and on the total
    assert sorted(kept_steady)[len(kept_steady) // 2] < 100, kept
    assert sum(kept_steady) < 0.25 * sum(default_steady), (kept, default)


def test_no_glibc_is_a_no_op(monkeypatch):
    from unikd import allocator

    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
