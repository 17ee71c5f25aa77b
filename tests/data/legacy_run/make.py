"""Writes this fixture: a task-KD run interrupted after a checkpoint, by unikd as of commit a9d8991 (the flat
term model, projections keyed '<term index>_<layer>'). tests/test_train.py resumes it with today's code.

    git worktree add /tmp/old a9d8991 && cd /tmp/old && PYTHONPATH=src python <this file> <out dir> <glue dir>

The models are tiny (a 64-word vocabulary) so that the committed files stay small.
"""

import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from unikd.config import load_config
from unikd.train import run

WORDS = ("the a of and to is in it that film movie good bad not with for as its but this an on be "
         "funny story one all by more than like no so too are from his has about best just have").split()

out, glue = Path(sys.argv[1]), sys.argv[2]
vocab = out / "vocab.txt"
out.mkdir(parents=True, exist_ok=True)
vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
tokenizer = BertTokenizerFast(vocab_file=str(vocab))
torch.manual_seed(0)
teacher = BertForSequenceClassification(BertConfig(
    vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    max_position_embeddings=64))
teacher.save_pretrained(out / "teacher")
tokenizer.save_pretrained(out / "teacher")
vocab.unlink()
cfg = load_config(None, [
    "stage=task", f"teacher.path={out / 'teacher'}", f"data.data_dir={glue}", "data.task=sst2",
    "data.train_limit=32", "data.eval_limit=16", "data.max_length=24", "train.batch_size=8", "train.max_steps=6",
    "train.save_every=3", "train.progress=false", "train.log_every=1", "optim.lr=1e-3", f"output_dir={out / 'run'}",
    "student.shape.num_layers=1", "student.shape.hidden_size=16", "student.init.strategy=slice",
    "plan.terms=[{knowledge: logits, loss: kl, temperature: 2}, {knowledge: hidden, loss: mse, matching: uniform},"
    " {knowledge: embeddings, loss: mse}]",
])
assert run(cfg, stop_after=4) == {"stopped_at": 4}
