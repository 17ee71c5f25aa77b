"""One distillation (or fine-tuning) run on Accelerate: ``setup`` -> the loop -> ``finish`` (``unikd.train.loop``).

`accelerate launch -m unikd.cli distill run.yaml` gives DDP/FSDP/DeepSpeed on several GPUs and nodes
with this same package. The stages differ only in data and in whether a teacher is present:

- general:  raw text, MLM (encoders) / CLM (decoders) batches, teacher features, optional LM loss;
- task:     labelled data, teacher logits + intermediate knowledge + hard labels;
- finetune: labelled data, hard labels only (the no-KD baseline, or the teacher itself).

=================  ===============================================================================================
module             holds
=================  ===============================================================================================
``validate``       the checks before anything loads (``validate_run``: paths, plan vs shapes, precision, head)
``inputs``         datasets, transfer rows, loaders, the optimizer
``checkpoint``     step directories, saving (atomic, a full disk in one line), checked resume
``distributed``    the process group, shard length, scheduler factor, freezing what no loss reaches
``evaluation``     dev metrics, the best checkpoint, the teacher against the trivial baseline
``outputs``        student/, best/, projections.pt, metrics.json, the model card
``loop``           ``State``, ``setup``, ``train_loop``, ``finish``, ``run``
=================  ===============================================================================================

The KD step itself is ``Distiller.step`` (``unikd.distiller``), the same call the benchmark times; the teacher
cache's life (open, teacher pass) is ``unikd.teacher_cache``'s.
"""

from unikd.train.checkpoint import CHECKPOINTS
from unikd.train.evaluation import evaluate
from unikd.train.loop import State, finish, run, setup, train_loop
from unikd.train.validate import validate_run

__all__ = ["CHECKPOINTS", "State", "evaluate", "finish", "run", "setup", "train_loop", "validate_run"]
