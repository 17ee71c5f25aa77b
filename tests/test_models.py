"""models.py: the int8 teacher (dynamic quantization) keeps its outputs and its features capturable."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import tiny_bert

from unikd.capture import CaptureRequest, FeatureCapture
from unikd.models import quantize_int8


@pytest.fixture(scope="module")
def pair():
    model = tiny_bert(2, 64, 4, vocab=100, positions=512).eval()
    return model, quantize_int8(copy.deepcopy(model))


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_linear_layers_are_int8_and_outputs_stay_close(pair):
    fp32, int8 = pair
    linears = [m for m in int8.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(linears) == 2 * 6 + 2  # per block Q, K, V, attention output, FFN in/out; pooler; classifier
    assert not any(type(m) is torch.nn.Linear for m in int8.modules())
    with torch.inference_mode():
        a, b = fp32(**_batch()).logits, int8(**_batch()).logits
    # int8 weights and activations: the logits move by a few percent of their scale, not more
    assert (a - b).abs().max() < 0.05 * a.abs().max() + 1e-3
    assert not torch.equal(a, b)


@pytest.mark.parametrize("mode", ["inline", "recompute"])
def test_features_of_an_int8_teacher(pair, mode):
    fp32, int8 = pair
    request = CaptureRequest(embeddings=True, hidden={0, 1}, qkv={1}, attention={0, 1})
    feats = {}
    for name, model in (("fp32", fp32), ("int8", int8)):
        with FeatureCapture(model, request, attention=mode) as cap:
            feats[name] = cap(_batch(), teacher=True)
    f, q = feats["fp32"], feats["int8"]
    torch.testing.assert_close(q.embeddings, f.embeddings)  # embeddings are not quantized
    for i in (0, 1):
        rel = (q.hidden[i] - f.hidden[i]).norm() / f.hidden[i].norm()
        assert 0 < rel < 0.05, (i, rel)
        p_int8, p_fp32 = q.attention_probs(i), f.attention_probs(i)
        assert (p_int8 - p_fp32).abs().max() < 0.05
    assert q.q[1].shape == f.q[1].shape and q.v[1].shape == f.v[1].shape
