"""strategy prune (Minitron): block importance ranks the layers, activation importance the heads, KV groups, FFN
neurons and channels; the pruned student equals the teacher restricted to what it keeps."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as T
from helpers import tiny_gpt2, tiny_llama

from unikd.errors import ConfigError
from unikd.initialization import InitConfig, build_student, prune_indices
from unikd.student import StudentShape, student_config
from unikd.weight_copy import importance_scores

T.logging.set_verbosity_error()


def _batch(vocab: int = 97, rows: int = 11):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, vocab, (rows, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[4, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _logits(model, batch):
    model.eval()  # a freshly built student is in training mode (GPT-2's dropout)
    with torch.no_grad():
        return model(**batch).logits


def _llama():
    return tiny_llama(4, 64, 8, 2, vocab=97, ffn=96, seed=0).eval()  # 8 query heads share 2 KV heads


def _gpt2():
    return tiny_gpt2(4, 64, 4, vocab=97, positions=40, seed=0).eval()


def _blocks(model):
    return model.model.layers if hasattr(model, "model") else model.transformer.h


def _outputs(block):
    """The two projections a block adds to its residual stream (attention out, FFN out)."""
    if hasattr(block, "self_attn"):
        return block.self_attn.o_proj, block.mlp.down_proj
    return block.attn.c_proj, block.mlp.c_proj


@torch.no_grad()
def _silence(block):
    """Make a block the identity: both residual branches add exactly zero."""
    for proj in _outputs(block):
        proj.weight.zero_()
        if getattr(proj, "bias", None) is not None:
            proj.bias.zero_()


# ---- depth: block importance --------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_prune_drops_the_blocks_that_do_not_change_their_input(family):
    teacher = _llama() if family == "llama" else _gpt2()
    batch = _batch()
    for i in (1, 2):
        _silence(_blocks(teacher)[i])
    scores = importance_scores(teacher, batch)
    assert scores.blocks[1] == pytest.approx(0.0, abs=1e-6) and scores.blocks[2] == pytest.approx(0.0, abs=1e-6)
    assert min(scores.blocks[0], scores.blocks[3]) > 1e-3
    student = build_student(teacher, StudentShape(num_layers=2), InitConfig(strategy="prune"), calibration_batch=batch)
    assert len(_blocks(student)) == 2
    # the two identity blocks were all it dropped, so the pruned student computes the teacher's function
    torch.testing.assert_close(_logits(student, batch), _logits(teacher, batch), rtol=1e-5, atol=1e-5)
    uniform = build_student(teacher, StudentShape(num_layers=2), InitConfig(strategy="teacher-layers"))
    assert not torch.allclose(_logits(uniform, batch), _logits(teacher, batch), atol=1e-3)  # uniform keeps 1 and 3


def _block_importance_by_hand(teacher, batch) -> torch.Tensor:
    """1 - mean cos(block input, block output) over real tokens, from HF's hidden states (the blocks' inputs and
    outputs, for all but the last block whose output HF returns after the final norm)."""
    with torch.no_grad():
        hs = teacher(**batch, output_hidden_states=True).hidden_states
    m = batch["attention_mask"].bool()
    return torch.stack([1 - torch.cosine_similarity(hs[i], hs[i + 1], dim=-1)[m].mean() for i in range(len(hs) - 2)])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_block_importance_is_one_minus_the_mean_cosine(family):
    teacher = _llama() if family == "llama" else _gpt2()
    batch = _batch()
    scores = importance_scores(teacher, batch)  # 11 rows: two passes of 8 and 3 rows
    torch.testing.assert_close(scores.blocks[:-1], _block_importance_by_hand(teacher, batch), rtol=1e-5, atol=1e-6)


# ---- width: heads, KV groups, neurons ---------------------------------------------------------
@torch.no_grad()
def _restricted(teacher, keep, family: str):
    """The teacher with every head and FFN neuron the student drops silenced (its output weights zeroed)."""
    t = copy.deepcopy(teacher)
    head_dim = 64 // t.config.num_attention_heads if family == "llama" else 64 // t.config.n_head
    n_heads = 8 if family == "llama" else 4
    for b, block in enumerate(_blocks(t)):
        attn_out, ffn_out = _outputs(block)
        heads = set(keep.heads[b])
        ffn = set(keep.ffn[b].tolist())
        for h in range(n_heads):
            if h not in heads:
                cols = slice(h * head_dim, (h + 1) * head_dim)
                if family == "llama":
                    attn_out.weight[:, cols] = 0  # nn.Linear [out, in]
                else:
                    attn_out.weight[cols, :] = 0  # Conv1D [in, out]
        for n in range(ffn_out.weight.shape[1 if family == "llama" else 0]):
            if n not in ffn:
                if family == "llama":
                    ffn_out.weight[:, n] = 0
                else:
                    ffn_out.weight[n, :] = 0
    return t


@pytest.mark.parametrize(
    "family,shape",
    [
        ("llama", StudentShape(ffn_size=40)),
        ("gpt2", StudentShape(ffn_size=100)),
    ],
)
def test_ffn_pruned_student_equals_the_teacher_with_the_dropped_neurons_silenced(family, shape):
    # fewer heads at the teacher's width would change the head size, and a narrower hidden changes every norm's
    # statistics, so those are checked weight by weight (below); FFN neurons are a function-level restriction
    teacher = _llama() if family == "llama" else _gpt2()
    batch = _batch()
    cfg = InitConfig(strategy="prune", layers="first")  # all 4 blocks: width only
    s_cfg = student_config(teacher.config, shape)
    keep = prune_indices(teacher, s_cfg, cfg, batch)
    assert keep.layers == [0, 1, 2, 3] and keep.hidden.tolist() == list(range(64))
    student = build_student(teacher, shape, cfg, calibration_batch=batch)
    torch.testing.assert_close(
        _logits(student, batch), _logits(_restricted(teacher, keep, family), batch), rtol=1e-5, atol=1e-5
    )


def test_pruned_weights_are_the_teachers_at_the_kept_indices_llama():
    teacher = _llama()
    batch = _batch()
    with torch.no_grad():
        _blocks(teacher)[2].self_attn.v_proj.weight[8:16] *= 30  # KV group 1 (query heads 4..7) of block 2 dominates
        teacher.model.embed_tokens.weight[:, 5] *= 20  # hidden channel 5 dominates
        _silence(_blocks(teacher)[1])
    shape = StudentShape(num_layers=3, hidden_size=32, num_kv_heads=1, ffn_size=48)
    student = build_student(teacher, shape, InitConfig(strategy="prune"), calibration_batch=batch)
    keep = prune_indices(teacher, student_config(teacher.config, shape), InitConfig(strategy="prune"), batch)
    assert keep.layers == [0, 2, 3]  # block 1 is the identity
    assert 5 in keep.hidden.tolist() and keep.kv_heads[1] == [1] and keep.heads[1] == [4, 5, 6, 7]
    h = keep.hidden
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight[:, h])
    assert torch.equal(student.model.norm.weight, teacher.model.norm.weight[h])
    s_block, t_block = student.model.layers[1], teacher.model.layers[2]
    q_rows = torch.cat([torch.arange(q * 8, q * 8 + 8) for q in keep.heads[1]])
    assert torch.equal(s_block.self_attn.q_proj.weight, t_block.self_attn.q_proj.weight[q_rows][:, h])
    assert torch.equal(s_block.self_attn.v_proj.weight, t_block.self_attn.v_proj.weight[8:16][:, h])
    assert torch.equal(s_block.mlp.down_proj.weight, t_block.mlp.down_proj.weight[h][:, keep.ffn[1]])
    assert torch.equal(s_block.input_layernorm.weight, t_block.input_layernorm.weight[h])


# ---- the config and bad requests ----------------------------------------------------------------
def test_prune_defaults_to_block_importance_and_round_trips():
    cfg = InitConfig(strategy="prune")
    assert cfg.layers == "block-importance"
    assert InitConfig.model_validate(cfg.model_dump()).layers == "block-importance"
    assert InitConfig(strategy="prune", layers="uniform").layers == "uniform"  # a fixed rule, if asked for
    assert InitConfig(strategy="importance").layers == "uniform"  # importance keeps its default


@pytest.mark.parametrize(
    "shape,init,batch,field",
    [
        (StudentShape(num_layers=2), InitConfig(strategy="prune"), False, "student.init.strategy"),  # no rows
        (StudentShape(ffn_size=200), InitConfig(strategy="prune"), True, "student.shape.ffn_size"),
        (StudentShape(num_layers=6), InitConfig(strategy="prune"), True, "student.shape.num_layers"),
        (StudentShape(hidden_size=60), InitConfig(strategy="prune"), True, "student.shape.hidden_size"),
        (
            StudentShape(num_layers=2),
            InitConfig(strategy="slice", layers="block-importance"),
            True,
            "student.init.layers",
        ),
    ],
)
def test_bad_prune_requests_name_the_field(shape, init, batch, field):
    teacher = _llama()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with pytest.raises(ConfigError) as err:
        build_student(teacher, shape, init, calibration_batch=_batch() if batch else None)
    assert err.value.field == field and err.value.fix
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
