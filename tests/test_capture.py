"""FeatureCapture against Hugging Face's own outputs, for every supported family (tiny random models)."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
import transformers as T
from helpers import tiny_bert, tiny_distilbert, tiny_gpt2, tiny_llama

from unikd.capture import CaptureRequest, FeatureCapture, Features
from unikd.errors import ConfigError
from unikd.families import get_adapter

VOCAB = 97
LENGTHS = [7, 4, 6]  # right padding to 7
TOL = 1e-5


ENC = dict(vocab=VOCAB, ffn=64, positions=64, num_labels=3, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
DEC = dict(vocab=VOCAB, ffn=64, positions=64, tie_word_embeddings=False)
#: family -> its tiny model (3 layers, width 32, 4 heads), built on first use
BUILDERS = {
    "bert": lambda: tiny_bert(3, 32, 4, **ENC),
    "roberta": lambda: tiny_bert(3, 32, 4, cls=T.RobertaForSequenceClassification, pad_token_id=1, **ENC),
    # embedding_size != hidden_size: the embedding output is ELECTRA's projected embeddings
    "electra": lambda: tiny_bert(3, 32, 4, cls=T.ElectraForSequenceClassification, embedding_size=16, **ENC),
    "distilbert": lambda: tiny_distilbert(3, 32, 4, vocab=VOCAB, ffn=64, positions=64, num_labels=3),
    # per-layer scaling (1/sqrt(d) / (layer+1)) exercises adapter.attention_scaling
    "gpt2": lambda: tiny_gpt2(3, 32, 4, vocab=VOCAB, positions=64, scale_attn_by_inverse_layer_idx=True),
    "llama": lambda: tiny_llama(3, 32, 4, 2, **DEC),
    # windowed layers 1..2 only (window 3 < sequence length 7)
    "qwen2": lambda: tiny_llama(
        3, 32, 4, 2, cls=T.Qwen2ForCausalLM, use_sliding_window=True, sliding_window=3, max_window_layers=1, **DEC
    ),
    "mistral": lambda: tiny_llama(3, 32, 4, 2, cls=T.MistralForCausalLM, sliding_window=4, **DEC),
}
FAMILIES = list(BUILDERS)


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = BUILDERS[name]().eval()  # seed 0
        return cache[name]

    return get


def _batch(model, labels=False):
    g = torch.Generator().manual_seed(1)
    length = max(LENGTHS)
    ids = torch.randint(3, VOCAB, (len(LENGTHS), length), generator=g)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(LENGTHS):
        mask[b, :n] = 1
    ids = ids.masked_fill(mask == 0, model.config.pad_token_id or 0)
    batch = {"input_ids": ids, "attention_mask": mask}
    if model.config.model_type == "bert":
        batch["token_type_ids"] = torch.zeros_like(ids)
    batch["an_unknown_key"] = torch.zeros(1)  # dropped: not a forward argument
    if labels:
        batch["labels"] = ids.masked_fill(mask == 0, -100) if get_adapter(model).is_decoder else torch.tensor([0, 1, 2])
    return batch


def _valid(t: torch.Tensor, mask: torch.Tensor, dim: int) -> list[torch.Tensor]:
    """Per example, the rows of ``t`` (along ``dim``, after batch) at real-token positions."""
    return [t[b].narrow(dim - 1, 0, int(mask[b].sum())) for b in range(t.shape[0])]


def _assert_close_valid(a, b, mask, dim=1):
    assert a.shape == b.shape, (a.shape, b.shape)
    for x, y in zip(_valid(a, mask, dim), _valid(b, mask, dim)):
        torch.testing.assert_close(x, y, atol=TOL, rtol=TOL)


def _all_layers(model) -> set[int]:
    return set(range(get_adapter(model).spec(model.config).num_layers))


# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["recompute", "inline"])
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_hf_eager_attention_and_hidden_states(models, family, mode):
    model = models(family)
    assert model.config._attn_implementation == "sdpa"
    layers = _all_layers(model)
    batch = _batch(model)
    inputs = {k: v for k, v in batch.items() if k != "an_unknown_key"}
    mask = batch["attention_mask"]

    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    assert eager.config._attn_implementation == "eager"
    with torch.no_grad():
        ref_eager = eager(**inputs, output_attentions=True)
        ref = model(**inputs, output_hidden_states=True)  # a plain call: the capture hooks record nothing

    request = CaptureRequest(embeddings=True, hidden=layers, qkv=layers, attention=layers)
    with FeatureCapture(model, request, attention=mode) as cap:
        with torch.no_grad():
            f = cap(batch)
        # inline wraps the model's own implementation for as long as the capture lives
        assert model.config._attn_implementation == {"recompute": "sdpa", "inline": "unikd_inline:sdpa"}[mode]
        assert cap._hidden == {} and cap._q == {} and cap._att_scores == {}  # nothing left behind after the call
    assert model.config._attn_implementation == "sdpa"
    assert set(f.inline_scores) == set(f.inline_probs) == (layers if mode == "inline" else set())

    spec = get_adapter(model).spec(model.config)
    B, L = mask.shape
    for i in sorted(layers):
        assert f.q[i].shape == (B, spec.num_heads, L, spec.head_dim)
        assert f.k[i].shape == f.v[i].shape == (B, spec.num_kv_heads, L, spec.head_dim)
        probs = f.attention_probs(i)
        assert probs.shape == (B, spec.num_heads, L, L)
        _assert_close_valid(probs, ref_eager.attentions[i], mask, dim=2)
        # scores: softmax of them is the probs; masked keys carry the dtype minimum exactly
        scores = f.attention_scores(i)
        assert f.attention_scores(i) is scores and f.attention_probs(i) is probs  # cached
        torch.testing.assert_close(torch.softmax(scores, -1), probs)
        key_pad = mask[:, None, None, :] == 0
        assert (scores.masked_select(key_pad.expand_as(scores)) <= torch.finfo(scores.dtype).min / 2).all()

    # hidden_states[0] = embeddings, hidden_states[i + 1] = block i (last one after the final norm)
    assert len(ref.hidden_states) == len(layers) + 1
    _assert_close_valid(f.embeddings, ref.hidden_states[0], mask)
    for i in sorted(layers):
        _assert_close_valid(f.hidden[i], ref.hidden_states[i + 1], mask)
    if f.logits.dim() == 3:  # LM logits [B, L, V]
        _assert_close_valid(f.logits, ref.logits, mask)
    else:  # classification logits [B, C]
        torch.testing.assert_close(f.logits, ref.logits, atol=TOL, rtol=TOL)
    assert f.causal == get_adapter(model).is_decoder


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_future_keys_masked_for_decoders(models, family):
    model = models(family)
    with FeatureCapture(model, CaptureRequest(attention={0})) as cap, torch.no_grad():
        f = cap(_batch(model))
    p = f.attention_probs(0)
    L = p.shape[-1]
    future = torch.ones(L, L, dtype=torch.bool).triu(1)
    assert p[..., future].abs().max() == 0
    assert f.scalings[0] == get_adapter(model).attention_scaling(model.config, 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_only_requested_layers_and_grad_semantics(models, family):
    model = models(family)
    batch = _batch(model, labels=True)
    req = CaptureRequest(hidden={1}, qkv={0}, attention={2})
    with FeatureCapture(model, req, attention="recompute") as cap:
        t = cap(batch, teacher=True)
        assert t.embeddings is None
        assert set(t.hidden) == {1} and set(t.q) == {0, 2} and set(t.k) == {0, 2} and set(t.v) == {0}
        assert set(t.scalings) == {0, 2}
        teacher_tensors = [
            *t.hidden.values(),
            *t.q.values(),
            *t.k.values(),
            *t.v.values(),
            t.logits,
            t.attention_probs(2),
        ]
        for x in teacher_tensors:
            assert not x.is_inference() and not x.requires_grad and x.grad_fn is None
        assert t.output.logits is t.logits  # one copy of the teacher logits, not an inference twin
        # a teacher tensor can be saved for backward by a student loss
        w = torch.ones((), requires_grad=True)
        (w * t.q[0]).sum().backward()

        model.zero_grad(set_to_none=True)
        s = cap(batch)
        assert s.output.loss is not None and s.output.loss.requires_grad
        for x in [*s.hidden.values(), *s.q.values(), *s.k.values(), *s.v.values(), s.logits]:
            assert x.requires_grad
        # backward through Q (after RoPE for Llama-style) reaches the Q projection weight
        s.q[0].pow(2).sum().backward()
        proj = get_adapter(model).qkv_modules(get_adapter(model).blocks(model)[0])
        weight = (proj.get("q") or proj["qkv"]).weight
        assert weight.grad is not None and weight.grad.abs().sum() > 0
        model.zero_grad(set_to_none=True)

        # set_request switches what is recorded; hooks are added once per module, never re-registered
        n_hooks = len(cap._handles)
        cap.set_request(CaptureRequest(qkv={2}))
        assert len(cap._handles) == n_hooks  # layer 2's projections are already hooked
        f = cap(batch, teacher=True)
        assert f.hidden == {} and set(f.q) == set(f.v) == {2}
        cap.set_request(CaptureRequest(hidden={0}))
        assert len(cap._handles) == n_hooks + 1  # a block never asked for before: one new hook
        cap.set_request(req)
        cap.set_request(CaptureRequest(hidden={0}))
        assert len(cap._handles) == n_hooks + 1
        f = cap(batch, teacher=True)
        assert set(f.hidden) == {0} and f.q == {} and f.k == {} and f.v == {} and f.embeddings is None
        cap.set_request(CaptureRequest(embeddings=True))
        f = cap(batch, teacher=True)
        assert f.embeddings is not None and f.hidden == {}
    assert cap._handles == []


def test_teacher_autocast(models):
    model = models("llama")
    with FeatureCapture(model, CaptureRequest(hidden={0}, attention={1}), attention="recompute") as cap:
        f = cap(_batch(model), teacher=True, autocast_dtype=torch.bfloat16)
    assert f.q[1].dtype == torch.bfloat16 or f.q[1].dtype == torch.float32  # RoPE may promote, as in HF
    for x in (f.hidden[0], f.q[1], f.k[1], f.logits, f.attention_probs(1)):
        assert not x.is_inference() and not x.requires_grad
    assert f.logits.dtype == torch.bfloat16


def test_missing_attention_mask_means_all_real(models):
    model = models("bert")
    batch = _batch(model)
    del batch["attention_mask"]
    with FeatureCapture(model, CaptureRequest(attention={0})) as cap, torch.no_grad():
        f = cap(batch)
    assert f.attention_mask.shape == batch["input_ids"].shape and bool((f.attention_mask == 1).all())
    assert f.attention_probs(0).shape[-1] == batch["input_ids"].shape[1]


@pytest.mark.parametrize("mode", ["recompute", "inline"])
@pytest.mark.parametrize("teacher", [True, False])
def test_no_growth_across_calls(models, teacher, mode):
    model = models("gpt2")
    layers = _all_layers(model)
    batch = _batch(model)
    cap = FeatureCapture(
        model, CaptureRequest(embeddings=True, hidden=layers, qkv=layers, attention=layers), attention=mode
    )
    refs = []
    for _ in range(4):
        f = cap(batch, teacher=teacher)
        f.attention_probs(0)
        refs.append(
            [weakref.ref(x) for x in (f.embeddings, f.hidden[0], f.q[1], f.v[2], f.logits, f.attention_probs(0))]
        )
        for buf in (
            cap._emb,
            cap._hidden,
            cap._q,
            cap._k,
            cap._v,
            cap._fused,
            cap._rotary,
            cap._att_scores,
            cap._att_probs,
        ):
            assert len(buf) == 0
    del f
    gc.collect()
    assert all(r() is None for step in refs for r in step)  # no tensor outlives its Features

    # a forward outside a capture call records nothing
    with torch.no_grad():
        model(**{k: v for k, v in batch.items() if k != "an_unknown_key"})
    assert not cap._hidden and not cap._fused and not cap._emb
    cap.remove()


def test_rope_buffers_released(models):
    model = models("mistral")
    with FeatureCapture(model, CaptureRequest(attention={0, 2}), attention="recompute") as cap:
        f = cap(_batch(model), teacher=True)
        assert cap._rotary == {} and cap._q == {} and cap._k == {}
    assert f.sliding_windows == {0: 4, 2: 4}


@pytest.mark.parametrize(
    "field,req",
    [
        ("capture.hidden", CaptureRequest(hidden={3})),
        ("capture.qkv", CaptureRequest(qkv={-1})),
        ("capture.attention", CaptureRequest(attention={0, 7})),
    ],
)
def test_out_of_range_layer(models, field, req):
    model = models("bert")
    with pytest.raises(ConfigError) as err:
        FeatureCapture(model, req)
    assert err.value.field == field and field in str(err.value)
    cap = FeatureCapture(model, CaptureRequest())
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        cap.set_request(req)
    cap.remove()


def test_forward_fn_and_empty_request(models):
    model = models("distilbert")
    calls = []

    def wrapped(**inputs):  # stands in for the DDP-wrapped model that train.py calls through
        calls.append(sorted(inputs))
        return model(**inputs)

    cap = FeatureCapture(model, None)
    cap.forward_fn = wrapped
    with torch.no_grad():
        f = cap(_batch(model))
    assert calls == [["attention_mask", "input_ids"]]  # unknown keys dropped
    assert f.hidden == {} and f.q == {} and f.embeddings is None and f.logits.shape == (len(LENGTHS), 3)
    cap.remove()


def test_request_merge():
    a = CaptureRequest(embeddings=True, hidden={0}, attention={1})
    b = CaptureRequest(hidden=[2], qkv={0})
    m = a.merge(b)
    assert m == CaptureRequest(embeddings=True, hidden={0, 2}, qkv={0}, attention={1})
    assert a.hidden == {0} and b.hidden == {2}


def test_features_scaling_property():
    f = Features(attention_mask=torch.ones(1, 2), scalings={0: 0.5, 1: 0.5})
    assert f.scaling == 0.5


# ---- inline attention capture ---------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "distilbert", "gpt2", "llama", "qwen2"])
def test_inline_gives_the_recompute_loss_and_gradients(models, family):
    """A student attention-score loss: inline (maps from the forward) equals recompute (maps from Q, K)."""
    model = copy.deepcopy(models(family))  # eval mode: no dropout, so both forwards are the same function
    batch = _batch(model, labels=True)
    mask = batch["attention_mask"]
    valid = (mask[:, None, :, None] * mask[:, None, None, :]).bool()
    target = torch.randn(
        len(LENGTHS),
        model.config.num_attention_heads,
        mask.shape[1],
        mask.shape[1],
        generator=torch.Generator().manual_seed(3),
    )
    results = {}
    for mode in ("recompute", "inline"):
        model.zero_grad(set_to_none=True)
        with FeatureCapture(model, CaptureRequest(attention={0, 2}), attention=mode) as cap:
            f = cap(batch)
            # valid pairs only, as every attention loss reads them: a windowed layer's padded query may see
            # no real key, and through such a row recompute's `+ finfo.min` passes rounding-level gradient
            loss = (
                sum(
                    torch.where(valid, f.attention_scores(i, masked=False) - target, 0).pow(2).sum()
                    + torch.where(valid, f.attention_probs(i) * target, 0).sum()
                    for i in (0, 2)
                )
                + f.output.loss
            )
            loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[mode] = (loss.detach(), grads)
    (l_r, g_r), (l_i, g_i) = results["recompute"], results["inline"]
    torch.testing.assert_close(l_i, l_r, atol=1e-4, rtol=1e-5)
    assert g_r.keys() == g_i.keys() and len(g_r) > 0
    for name in g_r:
        torch.testing.assert_close(g_i[name], g_r[name], atol=1e-4, rtol=1e-4, msg=name)


def test_inline_teacher_maps_and_kept_maps(models):
    model = models("llama")
    batch = _batch(model)
    with torch.no_grad():
        plain = model(**{k: v for k, v in batch.items() if k != "an_unknown_key"}).logits
    req = CaptureRequest(attention={1}, attention_maps={"scores"})
    with FeatureCapture(model, req, attention="inline") as cap:
        f = cap(batch, teacher=True)
        # the unrecorded layers ran the wrapped SDPA, the recorded one the unfused math: same outputs
        torch.testing.assert_close(f.logits, plain, atol=TOL, rtol=TOL)
        assert set(f.inline_scores) == {1} and f.inline_probs == {}  # only what the loss reads is kept
        assert f.q == {} and f.k == {}  # inline needs no Q/K copies
        scores = f.attention_scores(1, masked=False)
        assert not scores.is_inference() and not scores.requires_grad
        # probabilities, not kept, still follow from the kept scores and the padding/causal mask
        p = f.attention_probs(1)
        assert p[..., torch.ones(p.shape[-1], p.shape[-1], dtype=torch.bool).triu(1)].abs().max() == 0
        cap.set_request(CaptureRequest(attention={0}, attention_maps={"probs"}))
        f = cap(batch, teacher=True)
        assert set(f.inline_probs) == {0} and f.inline_scores == {}
        with pytest.raises(KeyError, match="attention_maps"):
            f.attention_scores(0)
        # outside a capture call the wrapper records nothing
        with torch.no_grad():
            model(**{k: v for k, v in batch.items() if k != "an_unknown_key"})
        assert cap._att_scores == {} and cap._att_probs == {}


def test_inline_autocast_and_eager_base(models):
    model = copy.deepcopy(models("bert"))
    model.set_attn_implementation("eager")
    batch = _batch(model)
    with FeatureCapture(model, CaptureRequest(attention={0}), attention="inline") as cap:
        assert model.config._attn_implementation == "unikd_inline:eager"
        f = cap(batch, teacher=True, autocast_dtype=torch.bfloat16)
        assert f.inline_scores[0].dtype == torch.bfloat16 and not f.inline_scores[0].is_inference()
    with FeatureCapture(model, CaptureRequest(attention={0}), attention="recompute") as cap:
        r = cap(batch, teacher=True, autocast_dtype=torch.bfloat16)
    for b, n in enumerate(LENGTHS):  # real tokens only; bf16 products: agreement to bf16 rounding
        torch.testing.assert_close(
            f.attention_probs(0)[b, :, :n, :n].float(), r.attention_probs(0)[b, :, :n, :n].float(), atol=2e-2, rtol=0
        )
    assert model.config._attn_implementation == "eager"


def test_auto_decides_at_the_first_call_and_remove_restores(models):
    model = models("bert")
    cap = FeatureCapture(model, CaptureRequest(attention={1}))
    assert cap.attention_mode == "auto" and model.config._attn_implementation == "sdpa"  # not before a call
    f = cap(_batch(model), teacher=True)
    assert cap.attention_mode == "inline" and set(f.inline_probs) == {1}  # on a CPU
    cap.remove()
    assert model.config._attn_implementation == "sdpa"
    logits_only = FeatureCapture(model, CaptureRequest())
    logits_only(_batch(model), teacher=True)
    assert model.config._attn_implementation == "sdpa"  # a plan without attention terms changes nothing
    logits_only.remove()


def test_inline_refuses_an_implementation_it_cannot_wrap():
    model = tiny_bert(2, 32, 4, vocab=VOCAB, positions=512, seed=None, attn_implementation="flex_attention")
    with pytest.raises(ConfigError) as err:
        FeatureCapture(model, CaptureRequest(attention={0}), attention="inline")
    assert err.value.field == "train.attention_capture" and "recompute" in str(err.value)
    with pytest.raises(ConfigError, match="attention_capture"):
        FeatureCapture(model, None, attention="fused")
    cap = FeatureCapture(model, CaptureRequest(attention={0}))  # auto falls back to recompute
    assert cap._auto_mode() == "recompute"
    cap.remove()


def test_two_inline_captures_on_one_model(models):
    model = models("bert")
    batch = _batch(model)
    first = FeatureCapture(model, CaptureRequest(attention={0}), attention="inline")
    second = FeatureCapture(model, CaptureRequest(attention={2}), attention="inline")
    assert second._base_attention == "sdpa"  # sees through the first one's wrapper
    assert set(second(batch, teacher=True).inline_probs) == {2}
    first.remove()
    assert model.config._attn_implementation == "unikd_inline:sdpa"  # the second still records inline
    assert set(second(batch, teacher=True).inline_probs) == {2}
    second.remove()
    assert model.config._attn_implementation == "sdpa"


def test_inline_causal_batch_without_padding(models):
    """No padding: SDPA may get no mask at all and rely on is_causal; inline must still mask future keys."""
    model = models("llama")
    batch = _batch(model)
    batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
    maps = {}
    for mode in ("inline", "recompute"):
        with FeatureCapture(model, CaptureRequest(attention={0, 2}), attention=mode) as cap:
            f = cap(batch, teacher=True)
        maps[mode] = (f.attention_probs(0), f.attention_probs(2), f.logits)
    length = batch["input_ids"].shape[1]
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    assert maps["inline"][0][..., future].abs().max() == 0
    for a, b in zip(maps["inline"], maps["recompute"]):
        torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)


def test_inline_converts_the_mask_once_per_forward_and_lets_it_go(models, monkeypatch):
    """Inline attention adds HF eager's additive mask, made once per forward from the model's boolean mask,
    held by the capture for its call only."""
    import unikd.inline_attention as C

    model = models("bert")
    made = []
    real = C.to_additive
    monkeypatch.setattr(C, "to_additive", lambda keep, dtype, cap: made.append(real(keep, dtype, cap)) or made[-1])
    with FeatureCapture(model, CaptureRequest(attention={0, 1}, attention_maps={"probs"}), attention="inline") as cap:
        f = cap(_batch(model), teacher=True)
        assert len(made) == 2 and made[0] is made[1]  # both recorded layers, one conversion
        assert made[0].dtype == torch.float32 and set(made[0].unique().tolist()) == {
            0.0,
            torch.finfo(torch.float32).min,
        }
        assert cap._additive is None  # released with the call
        # the padded keys got exactly zero probability, as with masked_fill
        mask = _batch(model)["attention_mask"].bool()
        assert (
            f.attention_probs(1).masked_select(~mask[:, None, None, :].expand_as(f.attention_probs(1))).abs().max() == 0
        )
