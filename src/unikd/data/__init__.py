"""Data: GLUE tasks (hub or local TSVs), raw-text corpora, tokenization and collators.

GLUE
    ``GLUE_TASKS`` describes the nine GLUE tasks (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI):
    text fields, labels, metrics and the layout of the ``glue_data`` TSV files written by the GLUE
    ``download_glue_data.py`` script. ``load_glue(task, split)`` returns a ``datasets.Dataset`` with
    the columns ``idx`` (row number in the split), ``text_a``, ``text_b`` (pair tasks only) and
    ``label`` (int class id; float score for STS-B; ``-1`` on the unlabelled test splits).

    Where the data comes from, in order: the ``data_dir`` argument, the ``GLUE_DIR`` environment
    variable, else the Hugging Face hub (``nyu-mll/glue``). A local directory is the GLUE root that
    holds one folder per task (``SST-2/train.tsv``, ``MNLI/dev_matched.tsv``, ...); a task folder
    itself is accepted too.

Raw text
    ``load_text_corpus`` reads local ``.txt`` files (paragraphs separated by blank lines) or a hub
    dataset (``"hub:wikitext/wikitext-103-raw-v1"``); ``chunk_for_lm`` tokenizes and packs the text
    into fixed-length blocks.

Collators
    ``lm_collator`` (MLM or CLM) and ``classification_collator`` (dynamic padding).

The package::

    tasks.py     task table (TaskInfo, TsvLayout, GLUE_TASKS, aliases, resolve_task/resolve_split)
                 and GLUE loading (load_glue: local TSVs or the hub)
    labelled.py  any labelled source: TaskSpec, load_task_data, read_conll (CoNLL column files)
    sources.py   raw-text corpora (load_text_corpus: .txt files, directories, hub datasets)
    tokenize.py  cached tokenization: tokenize_pairs (classification), tokenize_words (tags), chunk_for_lm
    collate.py   lm_collator (MLM/CLM), classification_collator, token_collator (dynamic padding)
    transfer.py  data.transfer sources (rest_of_train, text, augment) and the rows they give
    augment.py   TinyBERT / Tang et al. augmentation (word replacement by a masked LM or embedding neighbours)
    sampling.py  length-grouped batch order (train.group_by_length)

Any labelled data
    ``load_task_data(data_cfg, seed)`` (labelled.py) reads the run's labelled source - a GLUE preset, a hub
    dataset, a ``save_to_disk`` directory or local CSV/TSV/JSON(L)/Parquet/CoNLL files - into the same
    columns, with a ``TaskSpec`` (task type, label names, tag scheme); ``tokenize_words`` and
    ``token_collator`` are the token-classification counterparts of ``tokenize_pairs`` and
    ``classification_collator``.

Everything public is re-exported here; import from ``unikd.data``.

``datasets`` and ``transformers`` are imported lazily (inside the functions that use them) so that
``unikd.metrics`` (which only needs the task table) stays cheap to import.
"""

from __future__ import annotations

from unikd.data.collate import classification_collator, lm_collator, token_collator
from unikd.data.sources import load_text_corpus
from unikd.data.labelled import (
    DEFAULT_METRIC,
    TASK_TYPES,
    TaskData,
    TaskSpec,
    check_metric,
    glue_spec,
    load_task_data,
    read_conll,
)
from unikd.data.tasks import (
    GLUE_TASKS,
    HUB_GLUE_PATH,
    TASK_ALIASES,
    TaskInfo,
    TsvLayout,
    check_glue_files,
    load_glue,
    resolve_split,
    resolve_task,
)
from unikd.data.tasks import _resolve as _resolve  # used by unikd.metrics
from unikd.data.tokenize import chunk_for_lm, tokenize_pairs, tokenize_words

__all__ = [
    "TsvLayout",
    "check_glue_files",
    "TaskInfo",
    "GLUE_TASKS",
    "TASK_ALIASES",
    "HUB_GLUE_PATH",
    "resolve_task",
    "resolve_split",
    "load_glue",
    "tokenize_pairs",
    "load_text_corpus",
    "chunk_for_lm",
    "lm_collator",
    "classification_collator",
    "token_collator",
    "tokenize_words",
    "DEFAULT_METRIC",
    "TASK_TYPES",
    "TaskData",
    "TaskSpec",
    "check_metric",
    "glue_spec",
    "load_task_data",
    "read_conll",
]
