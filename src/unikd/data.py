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

``datasets`` and ``transformers`` are imported lazily so that ``unikd.metrics`` (which only needs
the task table) stays cheap to import.
"""

from __future__ import annotations

import copy
import csv
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unikd.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "TsvLayout",
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
]

HUB_GLUE_PATH = "nyu-mll/glue"
_CACHE_VERSION = "unikd-data-v1"  # bump when the output of a cached map changes

# --------------------------------------------------------------------------------------------------
# Task table
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TsvLayout:
    """How one kind of GLUE TSV file is laid out.

    ``columns`` are the column names. With ``header=True`` the file's first line names the columns
    and ``columns`` lists the ones this loader needs (it checks that the header has them; the other
    columns are ignored, and every row must have as many fields as the header). With
    ``header=False`` the columns are positional and every row must have exactly ``len(columns)``
    fields. ``text_a`` / ``text_b`` / ``label`` name the columns to read (``None``: not present).
    """

    header: bool
    columns: tuple[str, ...]
    text_a: str
    text_b: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class TaskInfo:
    """Everything unikd needs to know about one GLUE task.

    Attributes:
        name: canonical lower-case name (``"sst2"``), also the ``nyu-mll/glue`` config name.
        dir_name: the task folder in ``glue_data`` (``"SST-2"``).
        hub_text_fields: text columns of the hub dataset, in (text_a, text_b) order.
        num_labels: 1 for STS-B (regression), else the number of classes.
        label_names: class names by id (empty for STS-B); TSV label strings are mapped with
            ``label2id`` and numeric strings are taken as ids.
        metric_names: the keys ``unikd.metrics.compute_metrics`` returns besides ``"score"``.
        splits: split name -> TSV file name.
        labeled_layout / test_layout: the layouts of the train/dev files and of the test files.
    """

    name: str
    dir_name: str
    hub_text_fields: tuple[str, ...]
    num_labels: int
    label_names: tuple[str, ...]
    metric_names: tuple[str, ...]
    splits: dict[str, str]
    labeled_layout: TsvLayout
    test_layout: TsvLayout
    description: str = ""
    is_regression: bool = field(default=False)

    @property
    def is_pair(self) -> bool:
        return len(self.hub_text_fields) == 2

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def dev_splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.splits if s.startswith("validation"))

    def layout_for(self, split: str) -> TsvLayout:
        return self.test_layout if split.startswith("test") else self.labeled_layout


_STD_SPLITS = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
_MNLI_COLUMNS_TEST = ("index", "sentence1", "sentence2")

GLUE_TASKS: dict[str, TaskInfo] = {
    "cola": TaskInfo(
        name="cola",
        dir_name="CoLA",
        hub_text_fields=("sentence",),
        num_labels=2,
        label_names=("unacceptable", "acceptable"),
        metric_names=("matthews_correlation",),
        splits=dict(_STD_SPLITS),
        # train/dev have NO header: source, label, original label ("*" or empty), sentence
        labeled_layout=TsvLayout(
            header=False,
            columns=("source", "label", "original_label", "sentence"),
            text_a="sentence",
            label="label",
        ),
        test_layout=TsvLayout(header=True, columns=("index", "sentence"), text_a="sentence"),
        description="Corpus of Linguistic Acceptability (single sentence, Matthews correlation)",
    ),
    "sst2": TaskInfo(
        name="sst2",
        dir_name="SST-2",
        hub_text_fields=("sentence",),
        num_labels=2,
        label_names=("negative", "positive"),
        metric_names=("accuracy",),
        splits=dict(_STD_SPLITS),
        labeled_layout=TsvLayout(
            header=True, columns=("sentence", "label"), text_a="sentence", label="label"
        ),
        test_layout=TsvLayout(header=True, columns=("index", "sentence"), text_a="sentence"),
        description="Stanford Sentiment Treebank, binary (single sentence, accuracy)",
    ),
    "mrpc": TaskInfo(
        name="mrpc",
        dir_name="MRPC",
        hub_text_fields=("sentence1", "sentence2"),
        num_labels=2,
        label_names=("not_equivalent", "equivalent"),
        metric_names=("accuracy", "f1"),
        splits=dict(_STD_SPLITS),
        # the header line starts with a UTF-8 BOM (read with utf-8-sig)
        labeled_layout=TsvLayout(
            header=True,
            columns=("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
            text_a="#1 String",
            text_b="#2 String",
            label="Quality",
        ),
        test_layout=TsvLayout(
            header=True,
            columns=("index", "#1 ID", "#2 ID", "#1 String", "#2 String"),
            text_a="#1 String",
            text_b="#2 String",
        ),
        description="Microsoft Research Paraphrase Corpus (pair, accuracy + F1)",
    ),
    "stsb": TaskInfo(
        name="stsb",
        dir_name="STS-B",
        hub_text_fields=("sentence1", "sentence2"),
        num_labels=1,
        label_names=(),
        metric_names=("pearson", "spearman"),
        splits=dict(_STD_SPLITS),
        labeled_layout=TsvLayout(
            header=True,
            columns=("sentence1", "sentence2", "score"),
            text_a="sentence1",
            text_b="sentence2",
            label="score",
        ),
        test_layout=TsvLayout(
            header=True,
            columns=("sentence1", "sentence2"),
            text_a="sentence1",
            text_b="sentence2",
        ),
        description="Semantic Textual Similarity Benchmark (pair, regression 0-5, Pearson + Spearman)",
        is_regression=True,
    ),
    "qqp": TaskInfo(
        name="qqp",
        dir_name="QQP",
        hub_text_fields=("question1", "question2"),
        num_labels=2,
        label_names=("not_duplicate", "duplicate"),
        metric_names=("accuracy", "f1"),
        splits=dict(_STD_SPLITS),
        labeled_layout=TsvLayout(
            header=True,
            columns=("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
            text_a="question1",
            text_b="question2",
            label="is_duplicate",
        ),
        test_layout=TsvLayout(
            header=True,
            columns=("id", "question1", "question2"),
            text_a="question1",
            text_b="question2",
        ),
        description="Quora Question Pairs (pair, accuracy + F1)",
    ),
    "mnli": TaskInfo(
        name="mnli",
        dir_name="MNLI",
        hub_text_fields=("premise", "hypothesis"),
        num_labels=3,
        label_names=("entailment", "neutral", "contradiction"),
        metric_names=("accuracy",),
        splits={
            "train": "train.tsv",
            "validation_matched": "dev_matched.tsv",
            "validation_mismatched": "dev_mismatched.tsv",
            "test_matched": "test_matched.tsv",
            "test_mismatched": "test_mismatched.tsv",
        },
        # train has label1 + gold_label, dev has label1..label5 + gold_label; both have these:
        labeled_layout=TsvLayout(
            header=True,
            columns=("index", "sentence1", "sentence2", "gold_label"),
            text_a="sentence1",
            text_b="sentence2",
            label="gold_label",
        ),
        test_layout=TsvLayout(
            header=True, columns=_MNLI_COLUMNS_TEST, text_a="sentence1", text_b="sentence2"
        ),
        description="Multi-Genre NLI (pair, 3 classes, accuracy; matched and mismatched dev/test)",
    ),
    "qnli": TaskInfo(
        name="qnli",
        dir_name="QNLI",
        hub_text_fields=("question", "sentence"),
        num_labels=2,
        label_names=("entailment", "not_entailment"),
        metric_names=("accuracy",),
        splits=dict(_STD_SPLITS),
        labeled_layout=TsvLayout(
            header=True,
            columns=("index", "question", "sentence", "label"),
            text_a="question",
            text_b="sentence",
            label="label",
        ),
        test_layout=TsvLayout(
            header=True,
            columns=("index", "question", "sentence"),
            text_a="question",
            text_b="sentence",
        ),
        description="Question NLI from SQuAD (pair, accuracy)",
    ),
    "rte": TaskInfo(
        name="rte",
        dir_name="RTE",
        hub_text_fields=("sentence1", "sentence2"),
        num_labels=2,
        label_names=("entailment", "not_entailment"),
        metric_names=("accuracy",),
        splits=dict(_STD_SPLITS),
        labeled_layout=TsvLayout(
            header=True,
            columns=("index", "sentence1", "sentence2", "label"),
            text_a="sentence1",
            text_b="sentence2",
            label="label",
        ),
        test_layout=TsvLayout(
            header=True,
            columns=("index", "sentence1", "sentence2"),
            text_a="sentence1",
            text_b="sentence2",
        ),
        description="Recognizing Textual Entailment (pair, accuracy)",
    ),
    "wnli": TaskInfo(
        name="wnli",
        dir_name="WNLI",
        hub_text_fields=("sentence1", "sentence2"),
        num_labels=2,
        label_names=("not_entailment", "entailment"),
        metric_names=("accuracy",),
        splits=dict(_STD_SPLITS),
        labeled_layout=TsvLayout(
            header=True,
            columns=("index", "sentence1", "sentence2", "label"),
            text_a="sentence1",
            text_b="sentence2",
            label="label",
        ),
        test_layout=TsvLayout(
            header=True,
            columns=("index", "sentence1", "sentence2"),
            text_a="sentence1",
            text_b="sentence2",
        ),
        description="Winograd NLI (pair, accuracy)",
    ),
}

# Normalised alias -> (canonical task, MNLI variant or None). Names are normalised by lower-casing
# and dropping "-", "_" and spaces, so "SST-2", "sst_2" and "sst2" are the same name.
TASK_ALIASES: dict[str, tuple[str, str | None]] = {
    "cola": ("cola", None),
    "sst2": ("sst2", None),
    "sst": ("sst2", None),
    "mrpc": ("mrpc", None),
    "stsb": ("stsb", None),
    "sts": ("stsb", None),
    "qqp": ("qqp", None),
    "mnli": ("mnli", None),
    "mnlim": ("mnli", "matched"),
    "mnlimatched": ("mnli", "matched"),
    "mnlimm": ("mnli", "mismatched"),
    "mnlimismatched": ("mnli", "mismatched"),
    "qnli": ("qnli", None),
    "rte": ("rte", None),
    "wnli": ("wnli", None),
}


def _norm(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch not in "-_ ")


def _resolve(task: str, field_name: str = "data.task") -> tuple[TaskInfo, str | None]:
    if isinstance(task, TaskInfo):
        return task, None
    hit = TASK_ALIASES.get(_norm(task))
    if hit is None:
        raise ConfigError(
            field_name,
            f"unknown GLUE task {task!r}",
            "use one of " + ", ".join(GLUE_TASKS) + " (also accepted: SST-2, STS-B, mnli-m, mnli-mm)",
        )
    return GLUE_TASKS[hit[0]], hit[1]


def resolve_task(task: str) -> TaskInfo:
    """Return the ``TaskInfo`` for a task name, case-insensitively and with aliases.

    ``"SST-2"``, ``"sst2"``, ``"STS-B"``, ``"mnli-m"`` and ``"mnli-mm"`` (both MNLI) are accepted.
    Raises ``ConfigError('data.task', ...)`` listing the tasks for an unknown name.
    """
    return _resolve(task)[0]


_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "eval": "validation",
    "test": "test",
    "validationmatched": "validation_matched",
    "devmatched": "validation_matched",
    "validationmismatched": "validation_mismatched",
    "devmismatched": "validation_mismatched",
    "testmatched": "test_matched",
    "testmismatched": "test_mismatched",
}


def resolve_split(task: str, split: str) -> str:
    """Canonical split name (as in ``nyu-mll/glue``) for ``task``.

    ``"dev"`` means ``"validation"``. For MNLI, ``"validation"``/``"test"`` pick the matched split,
    or the mismatched one when the task is given as ``"mnli-mm"``.
    """
    info, variant = _resolve(task)
    canon = _SPLIT_ALIASES.get(_norm(split))
    if canon is not None and info.name == "mnli" and canon in ("validation", "test"):
        canon = f"{canon}_{variant or 'matched'}"
    if canon is None or canon not in info.splits:
        raise ConfigError(
            "data.split",
            f"unknown split {split!r} for GLUE task {info.name!r}",
            "use one of " + ", ".join(info.splits) + (" (or dev/validation, test)" if info.name == "mnli" else " (dev = validation)"),
        )
    return canon


# --------------------------------------------------------------------------------------------------
# GLUE loading
# --------------------------------------------------------------------------------------------------


def load_glue(
    task: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
    *,
    skip_malformed: bool = False,
) -> "datasets.Dataset":
    """Load one split of a GLUE task as a ``datasets.Dataset``.

    Columns: ``idx`` (int, row number in the split), ``text_a`` (str), ``text_b`` (str; pair tasks
    only, absent for CoLA and SST-2) and ``label`` (int class id, float for STS-B, ``-1`` on test
    splits, which have no labels). Class ids follow ``nyu-mll/glue`` (see ``TaskInfo.label_names``).

    Source: ``data_dir``, else ``$GLUE_DIR``, else the hub dataset ``nyu-mll/glue``. Local TSVs are
    read with ``csv`` (tab-delimited, ``QUOTE_NONE``: GLUE text contains bare quote characters).

    ``limit`` keeps a deterministic subset: for ``train`` the first ``limit`` rows after a shuffle
    with ``seed``; for dev/test the first ``limit`` rows in file order.

    A local row with the wrong number of fields or an unknown label raises ``ConfigError`` naming
    the file and line; ``skip_malformed=True`` drops such rows instead (as the hub loader does).
    """
    info, _ = _resolve(task)
    split = resolve_split(task, split)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ConfigError("data.limit", f"limit must be a non-negative integer or None, got {limit!r}", "pass e.g. limit=1000 or leave it unset")

    source = "argument data_dir"
    if data_dir is None and os.environ.get("GLUE_DIR"):
        data_dir, source = os.environ["GLUE_DIR"], "environment variable GLUE_DIR"
    if data_dir is not None:
        path = _glue_file(info, split, Path(data_dir).expanduser(), source)
        ds = _read_glue_tsv(info, split, path, skip_malformed=skip_malformed)
    else:
        ds = _load_glue_hub(info, split)

    if limit is not None:
        if split == "train":
            ds = ds.shuffle(seed=seed)
        ds = ds.select(range(min(limit, len(ds))))
    return ds


_DIR_FIX = (
    "set data.data_dir (or the GLUE_DIR environment variable) to the GLUE folder that holds one "
    "folder per task (e.g. <dir>/SST-2/train.tsv), or unset both to download nyu-mll/glue from the "
    "Hugging Face hub"
)


def _glue_file(info: TaskInfo, split: str, root: Path, source: str) -> Path:
    if not root.is_dir():
        raise ConfigError("data.data_dir", f"GLUE directory {str(root)!r} (from {source}) does not exist or is not a directory", _DIR_FIX)
    filename = info.splits[split]
    wanted = {_norm(info.dir_name), _norm(info.name)}
    task_dir = None
    if (root / info.dir_name).is_dir():
        task_dir = root / info.dir_name
    else:
        for child in sorted(root.iterdir()):
            if child.is_dir() and _norm(child.name) in wanted:
                task_dir = child
                break
    if task_dir is None and (root / filename).is_file() and _norm(root.name) in wanted:
        task_dir = root  # data_dir points at the task folder itself
    if task_dir is None:
        raise ConfigError(
            "data.data_dir",
            f"no folder for GLUE task {info.name!r} in {str(root)!r} (from {source}); expected {str(root / info.dir_name)!r}",
            _DIR_FIX,
        )
    path = task_dir / filename
    if not path.is_file():
        raise ConfigError(
            "data.data_dir",
            f"GLUE file {str(path)!r} for {info.name} split {split!r} does not exist (from {source})",
            f"put {filename} in {str(task_dir)!r} (GLUE glue_data layout), point GLUE_DIR or data_dir at a "
            "complete copy, or unset both to use the hub",
        )
    return path


def _parse_label(info: TaskInfo, raw: str, path: Path, line_no: int, mapping: dict[str, int]) -> int | float:
    value = raw.strip()
    if info.is_regression:
        try:
            return float(value)
        except ValueError:
            pass
    else:
        if value in mapping:
            return mapping[value]
        try:
            as_int = int(value)
        except ValueError:
            as_int = None
        if as_int is not None and 0 <= as_int < info.num_labels:
            return as_int
    expected = "a number (similarity score)" if info.is_regression else (
        f"one of {list(info.label_names)} or an id 0..{info.num_labels - 1}"
    )
    raise ConfigError(
        "data.data_dir",
        f"{path}, line {line_no}: bad label {raw!r} for task {info.name} (expected {expected})",
        "fix or remove that row, re-download the GLUE data, or pass skip_malformed=True to drop such rows",
    )


def _read_glue_tsv(info: TaskInfo, split: str, path: Path, skip_malformed: bool = False) -> "datasets.Dataset":
    import datasets

    layout = info.layout_for(split)
    labeled = not split.startswith("test")
    text_a: list[str] = []
    text_b: list[str] = []
    labels: list[Any] = []
    label2id = info.label2id
    # utf-8-sig drops the BOM on MRPC's header; newline="" lets csv see the raw line endings
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if layout.header:
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise ConfigError("data.data_dir", f"{path} is empty (expected a header line)", "re-download the GLUE data") from None
            missing = [c for c in layout.columns if c not in header]
            if missing:
                raise ConfigError(
                    "data.data_dir",
                    f"{path}, line 1: header {header} lacks column(s) {missing} expected for {info.name} {split}",
                    "use the GLUE glue_data TSV layout (download_glue_data.py)",
                )
        else:
            header = list(layout.columns)
        pos = {name: header.index(name) for name in layout.columns}
        n_fields = len(header)
        for row in reader:
            line_no = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line (e.g. trailing newline)
            if len(row) != n_fields:
                if skip_malformed:
                    continue
                raise ConfigError(
                    "data.data_dir",
                    f"{path}, line {line_no}: malformed row with {len(row)} tab-separated fields, expected {n_fields}",
                    "fix or remove that row (GLUE TSVs are tab-separated without quoting), re-download the GLUE "
                    "data, or pass skip_malformed=True to drop such rows",
                )
            if labeled and layout.label is not None:
                try:
                    label = _parse_label(info, row[pos[layout.label]], path, line_no, label2id)
                except ConfigError:
                    if skip_malformed:
                        continue
                    raise
            else:
                label = -1.0 if info.is_regression else -1
            labels.append(label)
            text_a.append(row[pos[layout.text_a]])
            if layout.text_b is not None:
                text_b.append(row[pos[layout.text_b]])

    data: dict[str, list] = {"idx": list(range(len(text_a))), "text_a": text_a}
    if info.is_pair:
        data["text_b"] = text_b
    data["label"] = labels
    # build the Arrow table directly: from_dict(features=...) encodes row by row (seconds for QQP/MNLI)
    import pyarrow as pa

    features = _glue_features(info)
    table = pa.Table.from_pydict(data, schema=features.arrow_schema)
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))


def _glue_features(info: TaskInfo) -> "datasets.Features":
    import datasets

    feats = {"idx": datasets.Value("int32"), "text_a": datasets.Value("string")}
    if info.is_pair:
        feats["text_b"] = datasets.Value("string")
    feats["label"] = datasets.Value("float32") if info.is_regression else datasets.Value("int64")
    return datasets.Features(feats)


def _load_glue_hub(info: TaskInfo, split: str) -> "datasets.Dataset":
    import datasets

    try:
        ds = datasets.load_dataset(HUB_GLUE_PATH, info.name, split=split)
    except Exception as exc:  # network, auth, offline mode ... -> one actionable message
        raise ConfigError(
            "data.data_dir",
            f"no local GLUE directory given (data.data_dir and GLUE_DIR unset) and loading "
            f"{HUB_GLUE_PATH}/{info.name} split {split!r} from the hub failed: {type(exc).__name__}: {exc}",
            _DIR_FIX.replace(", or unset both to download nyu-mll/glue from the Hugging Face hub", "")
            + ", or check the internet connection / HF_HUB_OFFLINE",
        ) from exc
    names = ["text_a", "text_b"][: len(info.hub_text_fields)]
    ds = ds.rename_columns(dict(zip(info.hub_text_fields, names)))
    if "idx" not in ds.column_names:
        ds = ds.add_column("idx", list(range(len(ds))))
    ds = ds.select_columns(["idx", *names, "label"])
    return ds.cast(_glue_features(info))


# --------------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------------


def _tokenizer_fingerprint(tokenizer: "PreTrainedTokenizerBase") -> str:
    """A deterministic hash of what determines a tokenizer's output.

    datasets' own hashing of a tokenizer object is not stable (fast tokenizers carry mutable
    truncation/padding state), so cached maps use this together with the input fingerprint.
    """
    import hashlib
    import json

    vocab = tokenizer.get_vocab()
    parts = [
        type(tokenizer).__name__,
        str(getattr(tokenizer, "name_or_path", "")),
        sorted(vocab.items()),
        sorted((k, str(v)) for k, v in tokenizer.special_tokens_map.items()),
        list(tokenizer.model_input_names),
        getattr(tokenizer, "padding_side", None),
        getattr(tokenizer, "truncation_side", None),
        getattr(tokenizer, "do_lower_case", None),
    ]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        try:  # normalizer / pre-tokenizer / post-processor settings, without the runtime state
            spec = json.loads(backend.to_str())
            spec.pop("truncation", None)
            spec.pop("padding", None)
            spec.pop("model", None)  # covered by the vocab above
            parts.append(json.dumps(spec, sort_keys=True))
        except Exception:  # pragma: no cover - exotic backends
            pass
    return hashlib.sha256(json.dumps(parts, default=str).encode("utf-8")).hexdigest()[:32]


def _map_cached(ds, fn, *, fingerprint: str, cache_dir, remove_columns, desc: str, batched=True):
    kwargs: dict[str, Any] = dict(
        batched=batched,
        remove_columns=remove_columns,
        new_fingerprint=fingerprint,
        desc=desc,
        load_from_cache_file=True,
    )
    if cache_dir is not None:
        cache_dir = Path(cache_dir).expanduser()
        cache_dir.mkdir(parents=True, exist_ok=True)
        kwargs["cache_file_name"] = str(cache_dir / f"{desc.split()[0].lower()}-{fingerprint}.arrow")
    return ds.map(fn, **kwargs)


def _check_length(tokenizer, value: int, field_name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(field_name, f"must be a positive integer, got {value!r}", "use e.g. 128")
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < 1_000_000 and value > model_max:
        raise ConfigError(
            field_name,
            f"{value} exceeds the tokenizer's model_max_length {model_max} (the model has no position embeddings beyond it)",
            f"use a value <= {model_max}",
        )


def tokenize_pairs(
    ds: "datasets.Dataset",
    tokenizer: "PreTrainedTokenizerBase",
    max_length: int,
    cache_dir: str | os.PathLike | None = None,
) -> "datasets.Dataset":
    """Tokenize a ``load_glue`` dataset for sequence classification.

    Returns a dataset with ``input_ids``, ``attention_mask``, ``token_type_ids`` (only if the
    tokenizer produces them; pairs get segment ids 0 and 1) and ``labels`` (from ``label``).
    Sequences are truncated to ``max_length`` (longest-first for pairs) and left unpadded:
    ``classification_collator`` pads per batch. All other columns are dropped.

    The map has a deterministic fingerprint (input dataset + tokenizer vocab/settings +
    max_length), so datasets' cache is reused across runs for datasets backed by cache files
    (hub datasets); pass ``cache_dir`` to cache datasets built in memory (local TSVs) as well, in
    ``<cache_dir>/tokenize-<fingerprint>.arrow``.
    """
    from datasets.fingerprint import Hasher

    _check_length(tokenizer, max_length, "data.max_length")
    if "text_a" not in ds.column_names:
        raise ConfigError("data", f"dataset has no 'text_a' column (columns: {ds.column_names})", "pass a dataset from unikd.data.load_glue")
    has_b = "text_b" in ds.column_names
    has_label = "label" in ds.column_names
    keep = set(tokenizer.model_input_names) | {"input_ids", "attention_mask"}

    def fn(batch):
        args = (batch["text_a"], batch["text_b"]) if has_b else (batch["text_a"],)
        enc = tokenizer(*args, truncation=True, max_length=max_length)
        out = {k: v for k, v in enc.items() if k in keep}
        if has_label:
            out["labels"] = batch["label"]
        return out

    fingerprint = Hasher.hash(
        [_CACHE_VERSION, "tokenize_pairs", ds._fingerprint, _tokenizer_fingerprint(tokenizer), max_length, has_b, has_label]
    )
    return _map_cached(
        ds, fn, fingerprint=fingerprint, cache_dir=cache_dir, remove_columns=ds.column_names, desc="Tokenize pairs"
    )


# --------------------------------------------------------------------------------------------------
# Raw text
# --------------------------------------------------------------------------------------------------


def _paragraphs(lines, out: list[str]) -> None:
    current: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped:
            current.append(stripped)
        elif current:
            out.append(" ".join(current))
            current = []
    if current:
        out.append(" ".join(current))


def _parse_hub_spec(spec: str) -> tuple[str, str | None, str]:
    """``"name[/config][@split]"`` or ``"org/name/config[@split]"`` -> (path, config, split)."""
    body, _, split = spec.partition("@")
    parts = [p for p in body.split("/")]
    if any(not p for p in parts):
        raise ConfigError("data.text", f"bad hub dataset spec {spec!r}", "write hub:<name>/<config>[@split], e.g. hub:wikitext/wikitext-103-raw-v1")
    if len(parts) == 1:
        path, config = parts[0], None
    elif len(parts) == 2:
        path, config = parts[0], parts[1]
    elif len(parts) == 3:
        path, config = f"{parts[0]}/{parts[1]}", parts[2]
    else:
        raise ConfigError("data.text", f"bad hub dataset spec {spec!r}", "write hub:<name>/<config>[@split] or hub:<org>/<name>/<config>[@split]")
    return path, config, split or "train"


def load_text_corpus(paths: list[str] | str, limit_lines: int | None = None) -> "datasets.Dataset":
    """Load raw text as a ``datasets.Dataset`` with one column, ``text`` (one paragraph per row).

    Each entry of ``paths`` is a ``.txt`` file, a directory (its ``*.txt`` files, sorted, not
    recursive) or a hub dataset ``"hub:<name>/<config>[@split]"`` (e.g.
    ``"hub:wikitext/wikitext-103-raw-v1"``, split ``train`` by default; ``"hub:<org>/<name>/<config>"``
    for namespaced repos) loaded with ``datasets.load_dataset`` (it must have a ``text`` column).

    Local files: blank (or whitespace-only) lines separate paragraphs; the wrapped lines of a
    paragraph are stripped and joined with single spaces. Hub rows are stripped and empty rows
    dropped. ``limit_lines`` caps the number of input lines (local) or rows (hub) read, in total.
    """
    import datasets

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [str(p) for p in paths]
    if not paths:
        raise ConfigError("data.text", "no text files or datasets given", "pass a .txt file, a directory of .txt files or hub:<name>/<config>")
    if limit_lines is not None and (not isinstance(limit_lines, int) or limit_lines < 0):
        raise ConfigError("data.limit_lines", f"must be a non-negative integer or None, got {limit_lines!r}", "use e.g. 10000")

    texts: list[str] = []
    budget = limit_lines
    for entry in paths:
        if budget is not None and budget <= 0:
            break
        if entry.startswith("hub:"):
            name, config, split = _parse_hub_spec(entry[4:])
            split_arg = split if budget is None else f"{split}[:{budget}]"
            try:
                hub = datasets.load_dataset(name, config, split=split_arg)
            except Exception as exc:
                raise ConfigError(
                    "data.text",
                    f"loading hub dataset {name!r} (config {config!r}, split {split!r}) failed: {type(exc).__name__}: {exc}",
                    "check the name and the internet connection, or pass local .txt files",
                ) from exc
            if "text" not in hub.column_names:
                raise ConfigError("data.text", f"hub dataset {name!r} has no 'text' column (columns: {hub.column_names})", "use a dataset with a 'text' column")
            rows = hub["text"]
            if budget is not None:
                rows = rows[:budget]
                budget -= len(rows)
            texts.extend(t.strip() for t in rows if t and t.strip())
            continue

        p = Path(entry).expanduser()
        if p.is_dir():
            files = sorted(Path(f) for f in glob.glob(str(p / "*.txt")))
            if not files:
                raise ConfigError("data.text", f"directory {entry!r} has no *.txt files", "point at .txt files or a directory that holds them")
        elif p.is_file():
            files = [p]
        else:
            raise ConfigError("data.text", f"text path {entry!r} does not exist", "pass existing .txt files or directories, or hub:<name>/<config>")
        for file in files:
            if budget is not None and budget <= 0:
                break
            with open(file, encoding="utf-8", errors="replace") as f:
                if budget is None:
                    lines = f.read().splitlines()
                else:
                    lines = []
                    for line in f:
                        lines.append(line)
                        if len(lines) >= budget:
                            break
                    budget -= len(lines)
            _paragraphs(lines, texts)
    return datasets.Dataset.from_dict({"text": texts}, features=datasets.Features({"text": datasets.Value("string")}))


def _appends_eos(tokenizer) -> bool:
    """True when the tokenizer has an EOS token that it does not add itself (GPT-2 style)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return not ids or ids[-1] != eos


def chunk_for_lm(
    ds: "datasets.Dataset",
    tokenizer: "PreTrainedTokenizerBase",
    block_size: int,
    cache_dir: str | os.PathLike | None = None,
) -> "datasets.Dataset":
    """Tokenize a ``text`` dataset and pack it into blocks of exactly ``block_size`` tokens.

    This is the usual ``group_texts``: every row is tokenized (with the tokenizer's special tokens,
    e.g. ``[CLS] ... [SEP]`` for BERT; for tokenizers that add no EOS themselves, GPT-2 style, an
    EOS is appended to separate documents), all rows are concatenated and cut into consecutive
    blocks; the remainder shorter than ``block_size`` is dropped. Columns: ``input_ids``,
    ``attention_mask`` (all ones) and ``token_type_ids`` when the tokenizer makes them. Labels are
    made by ``lm_collator``. Caching works as in ``tokenize_pairs``.
    """
    from datasets.fingerprint import Hasher

    _check_length(tokenizer, block_size, "data.block_size")
    if "text" not in ds.column_names:
        raise ConfigError("data", f"dataset has no 'text' column (columns: {ds.column_names})", "pass a dataset from unikd.data.load_text_corpus")
    keep = set(tokenizer.model_input_names) | {"input_ids", "attention_mask"}
    add_eos = _appends_eos(tokenizer)
    eos = tokenizer.eos_token_id

    def fn(batch):
        # model_max_length warnings are expected here: the text is packed, not fed as-is
        enc = tokenizer(batch["text"], verbose=False)
        columns = [k for k in enc.keys() if k in keep]
        concat: dict[str, list[int]] = {k: [] for k in columns}
        for i in range(len(batch["text"])):
            for k in columns:
                seq = enc[k][i]
                concat[k].extend(seq)
                if add_eos:
                    concat[k].append(eos if k == "input_ids" else (1 if k == "attention_mask" else 0))
        total = (len(concat["input_ids"]) // block_size) * block_size
        return {k: [v[i : i + block_size] for i in range(0, total, block_size)] for k, v in concat.items()}

    fingerprint = Hasher.hash([_CACHE_VERSION, "chunk_for_lm", ds._fingerprint, _tokenizer_fingerprint(tokenizer), block_size, add_eos])
    return _map_cached(
        ds, fn, fingerprint=fingerprint, cache_dir=cache_dir, remove_columns=ds.column_names, desc="Chunk text"
    )


# --------------------------------------------------------------------------------------------------
# Collators
# --------------------------------------------------------------------------------------------------


def _with_pad_token(tokenizer: "PreTrainedTokenizerBase", field_name: str) -> "PreTrainedTokenizerBase":
    """Return ``tokenizer``, or a copy with ``pad_token = eos_token`` when it has no pad token."""
    if tokenizer.pad_token is not None:
        return tokenizer
    if tokenizer.eos_token is None:
        raise ConfigError(
            field_name,
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has neither a pad token nor an EOS token to pad with",
            "add a pad token to the tokenizer (tokenizer.add_special_tokens({'pad_token': ...})) and resize the model embeddings",
        )
    tok = copy.deepcopy(tokenizer)
    tok.pad_token = tok.eos_token
    return tok


def _make_lm_collator_class():
    from transformers import DataCollatorForLanguageModeling

    class LMCollator(DataCollatorForLanguageModeling):
        """``DataCollatorForLanguageModeling`` whose causal-LM labels mask padding by the attention
        mask rather than by the pad id, so that EOS tokens keep their labels when pad == eos."""

        def torch_call(self, examples):
            if self.mlm or not examples or not isinstance(examples[0], dict) or "attention_mask" not in examples[0]:
                return super().torch_call(examples)
            batch = super().torch_call(examples)
            labels = batch["input_ids"].clone()
            labels[batch["attention_mask"] == 0] = -100
            batch["labels"] = labels
            return batch

    return LMCollator


_LM_COLLATOR_CLASS = None


def lm_collator(
    tokenizer: "PreTrainedTokenizerBase",
    mlm: bool,
    mlm_probability: float = 0.15,
    seed: int | None = None,
):
    """A ``transformers.DataCollatorForLanguageModeling`` for MLM (``mlm=True``) or CLM.

    MLM: ``mlm_probability`` of the non-special tokens are selected (80% -> [MASK], 10% random,
    10% unchanged); ``labels`` are -100 everywhere else. CLM: ``labels = input_ids`` with padding
    positions (by attention mask) set to -100; the model shifts them. A tokenizer without a pad
    token (GPT-2, Llama) is copied with ``pad_token = eos_token``; the caller's tokenizer is left
    untouched. ``seed`` makes the masking reproducible (transformers' collator generator).
    """
    global _LM_COLLATOR_CLASS
    if mlm:
        if getattr(tokenizer, "mask_token", None) is None:
            raise ConfigError(
                "data.mlm",
                f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no mask token, so it cannot do masked LM",
                "use causal LM (mlm: false) for decoder tokenizers, or a tokenizer with a [MASK] token",
            )
        if not (0.0 < float(mlm_probability) < 1.0):
            raise ConfigError("data.mlm_probability", f"must be in (0, 1), got {mlm_probability!r}", "use e.g. 0.15")
    tok = _with_pad_token(tokenizer, "data.tokenizer")
    if _LM_COLLATOR_CLASS is None:
        _LM_COLLATOR_CLASS = _make_lm_collator_class()
    return _LM_COLLATOR_CLASS(tokenizer=tok, mlm=bool(mlm), mlm_probability=float(mlm_probability), seed=seed)


def classification_collator(tokenizer: "PreTrainedTokenizerBase"):
    """``transformers.DataCollatorWithPadding``: pads each batch to its longest sequence.

    A tokenizer without a pad token is copied with ``pad_token = eos_token`` (GPT-2 style; the
    model's ``config.pad_token_id`` must then be set to the EOS id as well).
    """
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer=_with_pad_token(tokenizer, "data.tokenizer"))
