"""GLUE tasks: the task table, task/split name resolution and loading (hub or local TSVs).

``GLUE_TASKS`` describes the nine GLUE tasks; ``resolve_task`` / ``resolve_split`` map user-facing
names ("SST-2", "mnli-mm", "dev") to canonical ones; ``load_glue`` reads one split from a local
``glue_data`` directory (``csv``, tab-delimited) or from the hub dataset ``nyu-mll/glue``.
``datasets`` is imported inside the loaders only, so the task table stays cheap to import.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unikd.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import datasets

HUB_GLUE_PATH = "nyu-mll/glue"

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


def _pair_layouts(text_a: str, text_b: str, label: str, key: tuple[str, ...] = ("index",)) -> dict[str, TsvLayout]:
    """The layouts of a pair task whose train/dev files have the columns ``*key, text_a, text_b, label`` and whose
    test files have ``*key, text_a, text_b`` (QNLI, RTE, WNLI; STS-B with no key column)."""
    return {
        "labeled_layout": TsvLayout(True, (*key, text_a, text_b, label), text_a, text_b, label),
        "test_layout": TsvLayout(True, (*key, text_a, text_b), text_a, text_b),
    }


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
        labeled_layout=TsvLayout(header=True, columns=("sentence", "label"), text_a="sentence", label="label"),
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
        **_pair_layouts("sentence1", "sentence2", "score", key=()),
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
        test_layout=TsvLayout(header=True, columns=_MNLI_COLUMNS_TEST, text_a="sentence1", text_b="sentence2"),
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
        **_pair_layouts("question", "sentence", "label"),
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
        **_pair_layouts("sentence1", "sentence2", "label"),
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
        **_pair_layouts("sentence1", "sentence2", "label"),
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
            "use one of "
            + ", ".join(info.splits)
            + (" (or dev/validation, test)" if info.name == "mnli" else " (dev = validation)"),
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
    the file and line; ``skip_malformed=True`` (the run config's ``data.skip_malformed``) drops such rows
    instead (as the hub loader does). A local file with no data rows (only a header) is a ``ConfigError``.
    """
    info, _ = _resolve(task)
    split = resolve_split(task, split)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ConfigError(
            "data.limit",
            f"limit must be a non-negative integer or None, got {limit!r}",
            "pass e.g. limit=1000 or leave it unset",
        )

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


def check_glue_files(task: str, data_dir: str | os.PathLike | None = None) -> None:
    """Before a run reads anything: the local GLUE files of ``task``'s train and dev splits exist (``data_dir``,
    else ``$GLUE_DIR``); nothing to check when the hub is the source. Raises the ``ConfigError`` ``load_glue``
    would raise, naming ``data.data_dir``."""
    info, _ = _resolve(task)
    source = "argument data_dir"
    if data_dir is None and os.environ.get("GLUE_DIR"):
        data_dir, source = os.environ["GLUE_DIR"], "environment variable GLUE_DIR"
    if data_dir is None:
        return
    for split in ("train", info.dev_splits[0]):
        _glue_file(info, resolve_split(task, split), Path(data_dir).expanduser(), source)


_DIR_FIX = (
    "set data.data_dir (or the GLUE_DIR environment variable) to the GLUE folder that holds one "
    "folder per task (e.g. <dir>/SST-2/train.tsv), or unset both to download nyu-mll/glue from the "
    "Hugging Face hub"
)


def _glue_file(info: TaskInfo, split: str, root: Path, source: str) -> Path:
    if not root.is_dir():
        raise ConfigError(
            "data.data_dir",
            f"GLUE directory {str(root)!r} (from {source}) does not exist or is not a directory",
            _DIR_FIX,
        )
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
    expected = (
        "a number (similarity score)"
        if info.is_regression
        else (f"one of {list(info.label_names)} or an id 0..{info.num_labels - 1}")
    )
    raise ConfigError(
        "data.data_dir",
        f"{path}, line {line_no}: bad label {raw!r} for task {info.name} (expected {expected})",
        "fix or remove that row, re-download the GLUE data, or set data.skip_malformed=true to drop such rows",
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
                raise ConfigError(
                    "data.data_dir", f"{path} is empty (expected a header line)", "re-download the GLUE data"
                ) from None
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
        n_fields, skipped = len(header), 0
        for row in reader:
            line_no = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line (e.g. trailing newline)
            if len(row) != n_fields:
                if skip_malformed:
                    skipped += 1
                    continue
                raise ConfigError(
                    "data.data_dir",
                    f"{path}, line {line_no}: malformed row with {len(row)} tab-separated fields, expected {n_fields}",
                    "fix or remove that row (GLUE TSVs are tab-separated without quoting), re-download the GLUE "
                    "data, or set data.skip_malformed=true to drop such rows",
                )
            if labeled and layout.label is not None:
                try:
                    label = _parse_label(info, row[pos[layout.label]], path, line_no, label2id)
                except ConfigError:
                    if skip_malformed:
                        skipped += 1
                        continue
                    raise
            else:
                label = -1.0 if info.is_regression else -1
            labels.append(label)
            text_a.append(row[pos[layout.text_a]])
            if layout.text_b is not None:
                text_b.append(row[pos[layout.text_b]])

    if not text_a:
        dropped = f" ({skipped} malformed rows dropped by data.skip_malformed)" if skipped else ""
        raise DataError(
            "data.data_dir",
            f"{path} has no data rows{dropped}" + (", only its header" if layout.header and not skipped else ""),
            f"put the {info.name} {split} rows in that file (re-download the GLUE data), or point data.data_dir "
            "at a complete copy",
        )
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
    ds = ds.rename_columns(dict(zip(info.hub_text_fields, names, strict=False)))
    if "idx" not in ds.column_names:
        ds = ds.add_column("idx", list(range(len(ds))))
    ds = ds.select_columns(["idx", *names, "label"])
    return ds.cast(_glue_features(info))
