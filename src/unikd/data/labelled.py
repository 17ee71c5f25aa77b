"""Labelled data from any source: a GLUE preset, a hub dataset, a ``save_to_disk`` directory or local files.

``load_task_data(data_cfg, seed)`` reads the run's ``data`` section (``unikd.config.DataConfig``, read by
attribute so this module does not import the config) and returns a ``TaskData``: the ``TaskSpec`` (task type,
label names, the scheme of NER tags, the GLUE task when it is one) and the train and dev splits in the
columns the rest of unikd uses:

- sequence tasks: ``idx``, ``text_a``, ``text_b`` (pair tasks only) and ``label`` (int class id; float for
  regression; a multi-hot float list for multi-label), the columns ``load_glue`` returns, so tokenization and
  collation are shared;
- token classification: ``idx``, ``tokens`` (the words) and ``tags`` (one int tag id per word).

Sources, one per run: ``data.task`` (a GLUE preset: ``load_glue``, with ``data_dir``/``GLUE_DIR``/the hub,
unchanged), ``data.dataset`` (a hub id for ``datasets.load_dataset`` with ``dataset_config``/``revision``, or a
``save_to_disk`` directory) or ``data.files`` (``{train: ..., validation: ...}``: CSV, TSV, JSON/JSONL, Parquet
through ``datasets``' own builders; CoNLL column files, ``.txt``/``.conll``, through ``read_conll``). The dev
split is the one named ``validation`` (or ``dev``, ``valid``, ``val``), else, for hub datasets that ship only train
and test (IMDB and the like), ``test``.

Every problem with the data is a ``ConfigError`` naming the field (``data.columns.label``, ``data.files.train``,
...) and found before any model weights load.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unikd.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import datasets

TASK_TYPES = ("classification", "multilabel", "regression", "token-classification")
#: the metric that is a run's score when ``eval.metric`` is unset (GLUE presets keep GLUE's score)
DEFAULT_METRIC = {
    "classification": "accuracy",
    "multilabel": "sample_f1",
    "regression": "pearson",
    "token-classification": "f1",
    "causal-lm": "perplexity",
    "extractive-qa": "f1",
}
TEXT_COLUMNS = ("text", "sentence", "sentence1", "question", "premise")
PAIR_COLUMNS = ("text_pair",)
LABEL_COLUMNS = ("label", "labels")
TOKEN_COLUMNS = ("tokens", "words")
TAG_COLUMNS = ("ner_tags", "tags", "labels")
_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_CONLL_SUFFIXES = (".txt", ".conll", ".iob", ".bio")
_DEV_SPLITS = ("validation", "dev", "valid", "val", "test")
_SCHEME_PREFIXES = {"IOB1": ("B", "I"), "IOB2": ("B", "I"), "BIOES": ("B", "I", "E", "S")}


@dataclass(frozen=True)
class TaskSpec:
    """What a labelled source is: its task type, label names by id and, for GLUE, the task whose metrics apply."""

    name: str
    task_type: str
    label_names: tuple[str, ...] = ()
    is_pair: bool = False
    glue: str | None = None
    tag_scheme: str | None = None

    @property
    def num_labels(self) -> int:
        return 1 if self.task_type == "regression" else len(self.label_names)

    @property
    def is_token(self) -> bool:
        return self.task_type == "token-classification"

    @property
    def model_kind(self) -> str:
        """The head the models need (a key of ``unikd.models.AUTO_CLASSES``)."""
        fixed = {"causal-lm": "causal-lm", "extractive-qa": "question-answering"}.get(self.task_type)
        return fixed or ("token-classification" if self.is_token else "sequence-classification")

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}


@dataclass
class TaskData:
    spec: TaskSpec
    train: "datasets.Dataset"
    validation: "datasets.Dataset"


def glue_spec(task: str) -> TaskSpec:
    from unikd.data.tasks import resolve_task

    info = resolve_task(task)
    return TaskSpec(
        name=info.name,
        task_type="regression" if info.is_regression else "classification",
        label_names=info.label_names,
        is_pair=info.is_pair,
        glue=info.name,
    )


def load_task_data(data: Any, seed: int = 0) -> TaskData:
    """The train and dev splits of the run's labelled source (see the module docstring), limits applied:
    train keeps ``data.train_limit`` rows after a shuffle with ``seed``, dev its first ``data.eval_limit``.
    With ``data.holdout`` = n, n of those training rows (a split seeded by ``seed``) are the dev split instead:
    model selection that never looks at the real dev set."""
    task = _load_task_data(data, seed)
    holdout = getattr(data, "holdout", None)
    if not holdout:
        return task
    if holdout >= len(task.train):
        raise ConfigError(
            "data.holdout",
            f"holds out {holdout} of the {len(task.train)} labelled training rows, leaving none to train on",
            f"use data.holdout below {len(task.train)} (10-20% of the rows is usual)",
        )
    split = task.train.train_test_split(test_size=holdout, seed=seed, shuffle=True)
    held = split["test"]
    if data.eval_limit is not None:
        held = held.select(range(min(data.eval_limit, len(held))))
    return TaskData(task.spec, split["train"], held)


def _load_task_data(data: Any, seed: int) -> TaskData:
    if data.task:
        from unikd.data import tasks  # looked up at call time

        spec = glue_spec(data.task)
        skip = getattr(data, "skip_malformed", False)
        train = tasks.load_glue(
            data.task, "train", data.data_dir, limit=data.train_limit, seed=seed, skip_malformed=skip
        )
        dev_split = tasks.resolve_task(data.task).dev_splits[0]
        dev = tasks.load_glue(data.task, dev_split, data.data_dir, limit=data.eval_limit, skip_malformed=skip)
        return TaskData(spec, train, dev)
    train_raw, dev_raw, dev_name = read_splits(data)
    token = _is_token_task(data, train_raw)
    encode = _encode_tokens if token else _encode_sequences
    spec, train, dev = encode(data, train_raw, dev_raw, dev_name)
    if data.train_limit is not None:
        train = train.shuffle(seed=seed).select(range(min(data.train_limit, len(train))))
    if data.eval_limit is not None:
        dev = dev.select(range(min(data.eval_limit, len(dev))))
    return TaskData(spec, train, dev)


def read_splits(data: Any):
    """(train, dev, the dev split's name) of a ``data.dataset`` or ``data.files`` source, as read (no encoding)."""
    field = "data.dataset" if data.dataset else "data.files"
    splits = _load_dataset(data) if data.dataset else _load_files(data.files)
    return _pick_splits(splits, field)


def check_metric(spec: TaskSpec, metric: str | None) -> None:
    """``eval.metric`` must be one the task type reports (checked before training, not at the first evaluation)."""
    if metric is None:
        return
    from unikd.data.tasks import GLUE_TASKS

    names = set(metric_names(spec.task_type, spec.num_labels))
    if spec.glue:
        names |= set(GLUE_TASKS[spec.glue].metric_names)
    if metric not in names:
        raise ConfigError(
            "eval.metric", f"{metric!r} is not a metric of a {spec.task_type} task", f"use one of {sorted(names)}"
        )


def metric_names(task_type: str, num_labels: int) -> tuple[str, ...]:
    """The metrics ``unikd.metrics.compute_task_metrics`` reports for a task type (besides ``score``)."""
    if task_type == "classification":
        return ("accuracy", "macro_f1", "micro_f1", "mcc") + (("f1",) if num_labels == 2 else ())
    if task_type == "regression":
        return ("pearson", "spearman")
    if task_type == "multilabel":
        return ("sample_f1", "micro_f1", "macro_f1", "exact_match")
    if task_type == "causal-lm":  # the last two: read off the samples (train.causal_eval.GENERATION_METRICS)
        return ("perplexity", "loss", "teacher_nll", "rouge_l")
    qa = task_type == "extractive-qa"  # SQuAD v1.1's (unikd.data.qa.squad_scores)
    return ("f1", "exact_match") if qa else ("precision", "recall", "f1", "accuracy")


# ---- reading the source -------------------------------------------------------------------------------
def read_conll(path: str | Path, field: str = "data.files") -> "datasets.Dataset":
    """A CoNLL column file as a dataset with ``tokens`` and ``tags`` (string) columns.

    One token per line, its tag in the last whitespace-separated column (the CoNLL-2003 layout ``token POS chunk
    tag`` and the two-column ``token tag`` both read), a blank line between sentences; ``-DOCSTART-`` lines are
    skipped. datasets has no builder for this layout (its CoNLL-2003 script is a hub script, not a packaged one),
    hence this small reader.
    """
    import datasets

    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    words: list[str] = []
    labels: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if words:
                    tokens.append(words)
                    tags.append(labels)
                    words, labels = [], []
                continue
            if len(parts) < 2:
                raise ConfigError(
                    field,
                    f"{path}, line {line_no}: {line.strip()!r} has no tag (expected 'token tag')",
                    "write one 'token tag' per line and a blank line between sentences",
                )
            words.append(parts[0])
            labels.append(parts[-1])
    if words:
        tokens.append(words)
        tags.append(labels)
    return datasets.Dataset.from_dict({"tokens": tokens, "tags": tags})


def _load_files(files: dict[str, str]) -> dict[str, "datasets.Dataset"]:
    import datasets

    out = {}
    for split, name in files.items():
        field = f"data.files.{split}"
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(field, f"{name!r} does not exist", "give the path of a CSV, TSV, JSON(L) or Parquet file")
        suffix = path.suffix.lower()
        if suffix in _CONLL_SUFFIXES:
            out[split] = read_conll(path, field)
            continue
        if suffix not in _BUILDERS:
            raise ConfigError(
                field,
                f"{name!r}: unknown file type {suffix!r}",
                f"use one of {sorted(_BUILDERS) + list(_CONLL_SUFFIXES)} (.txt/.conll: CoNLL 'token tag' columns)",
            )
        kwargs: dict[str, Any] = {}
        if _BUILDERS[suffix] == "csv":
            # keep_default_na=False: a sentence that reads "NA" or "null" stays text (pandas would make it NaN)
            kwargs["keep_default_na"] = False
            if suffix == ".tsv":  # GLUE-style TSVs: tab-separated, quote characters are text
                kwargs.update(sep="\t", quoting=csv.QUOTE_NONE)
        try:
            out[split] = datasets.load_dataset(
                _BUILDERS[suffix], data_files={"train": str(path)}, split="train", **kwargs
            )
        except Exception as exc:  # pyarrow/pandas each raise their own types for a file they cannot read
            raise ConfigError(
                field, f"could not read {name!r} ({type(exc).__name__}: {exc})", "check the file's format and types"
            ) from exc
    return out


def _load_dataset(data: Any) -> dict[str, "datasets.Dataset"]:
    import datasets

    path = Path(data.dataset).expanduser()
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.Dataset):
            raise ConfigError(
                "data.dataset",
                f"{data.dataset!r} holds a single split",
                "save a DatasetDict with train and validation splits (DatasetDict(...).save_to_disk), or use data.files",
            )
        return dict(loaded)
    try:
        loaded = datasets.load_dataset(data.dataset, data.dataset_config, revision=data.revision)
    except Exception as exc:  # offline, unknown id, auth, missing config ... -> one actionable message
        raise ConfigError(
            "data.dataset",
            f"could not load {data.dataset!r} (config {data.dataset_config!r}) with datasets.load_dataset "
            f"({type(exc).__name__}: {exc})",
            "check the hub id, data.dataset_config and the connection (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE forbid "
            "downloads), or point data.dataset at a save_to_disk directory, or use data.files",
        ) from exc
    return dict(loaded)


def _pick_splits(splits: dict, field: str):
    if "train" not in splits:
        raise ConfigError(field, f"no train split (splits: {sorted(splits)})", f"give {field} a 'train' split")
    dev_name = next((s for s in _DEV_SPLITS if s in splits), None)
    if dev_name is None:
        raise ConfigError(
            field, f"no validation split (splits: {sorted(splits)})", f"give {field} a 'validation' split"
        )
    for name in ("train", dev_name):
        if len(splits[name]) == 0:
            where = f"data.files.{name}" if field == "data.files" else field
            raise ConfigError(where, f"the {name} split is empty", "give it labelled rows")
    return splits["train"], splits[dev_name], dev_name


def _column(ds, role: str, given: str | None, defaults: tuple[str, ...], split: str, required: bool = True):
    cols = ds.column_names
    if given is not None:
        if given not in cols and role in ("label", "tags") and split != "train":
            raise ConfigError(
                f"data.columns.{role}",
                f"the {split} split has no {role} column {given!r} (its columns: {cols}), so its rows cannot be scored",
                f"add the {role}s to the {split} file under {given!r}, or score on data.holdout rows of train instead",
            )
        if given not in cols:
            raise ConfigError(
                f"data.columns.{role}",
                f"no column {given!r} in the {split} split (its columns: {cols})",
                f"set data.columns.{role} to one of {cols}",
            )
        return given
    found = next((c for c in defaults if c in cols), None)
    if found is None and required and role in ("label", "tags") and split != "train":
        # a split to score without its labels: pointing the label at another column would score nonsense
        raise ConfigError(
            f"data.columns.{role}",
            f"the {split} split has no {role} column (its columns: {cols}), so its rows cannot be scored",
            f"add the {role}s to the {split} file under the column name train uses, or score on "
            "data.holdout rows of train instead",
        )
    if found is None and required:
        raise ConfigError(
            f"data.columns.{role}",
            f"none of the usual {role} columns {list(defaults)} is in the {split} split (its columns: {cols})",
            f"set data.columns.{role} to one of {cols}",
        )
    return found


def _is_token_task(data: Any, train) -> bool:
    if data.task_type is not None:
        return data.task_type == "token-classification"
    if data.columns.tokens or data.columns.tags:
        return True
    cols = train.column_names
    has_text = data.columns.text is not None or any(c in cols for c in TEXT_COLUMNS)
    return not has_text and any(c in cols for c in TOKEN_COLUMNS)


# ---- sequence tasks -------------------------------------------------------------------------------------
def _texts(ds, column: str, role: str, split: str) -> list[str]:
    values = ds[column]
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            raise ConfigError(f"data.columns.{role}", f"row {i} of the {split} split has no text", "fill or drop it")
    return [v if isinstance(v, str) else str(v) for v in values]


def _is_number(value: str) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _kind_of(value) -> str:
    if isinstance(value, (list, tuple)):
        return "lists"
    if isinstance(value, str):
        return "names"
    return "ids" if isinstance(value, int) else "floats"


def _label_kind(values: list, feature, stated: str | None, split: str) -> str:
    """'ids', 'names', 'floats' or 'lists': what the label column holds, checked for mixed types."""
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return "ids"
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
            raise ConfigError("data.columns.label", f"row {i} of the {split} split has no label", "fill or drop it")
    kinds = {_kind_of(v) for v in values}
    if kinds == {"ids", "floats"}:
        kinds = {"floats"}
    if kinds == {"names"}:
        numeric = [_is_number(v) for v in values]
        if stated == "regression" or (any(numeric) and not all(numeric)):
            bad = next((i for i, ok in enumerate(numeric) if not ok), None)
            if bad is not None:
                what = "a regression label column" if stated == "regression" else "numbers and names mixed"
                raise ConfigError(
                    "data.columns.label",
                    f"{what}: row {bad} of the {split} split holds {values[bad]!r}",
                    "make every label a number (regression) or every label a class name",
                )
            return "floats" if stated == "regression" else "names"
    if len(kinds) > 1:
        raise ConfigError(
            "data.columns.label",
            f"mixed label types in the {split} split ({', '.join(sorted(kinds))})",
            "give every row the same kind of label: class ids, class names, numbers (regression) or lists (multi-label)",
        )
    return kinds.pop()


def _task_type(kind: str, stated: str | None, values: list) -> str:
    inferred = {"ids": "classification", "names": "classification", "floats": "regression", "lists": "multilabel"}[kind]
    if stated is None or stated == inferred:
        return inferred
    if stated == "classification" and kind == "floats" and all(float(v).is_integer() for v in values):
        return "classification"
    if stated == "regression" and kind == "ids":
        return "regression"
    raise ConfigError(
        "data.task_type",
        f"{stated} does not fit the label column, which holds {kind} (a {inferred} task)",
        f"set data.task_type={inferred} or leave it unset",
    )


def _label_names(data: Any, kind: str, feature, train_values: list) -> tuple[str, ...]:
    import datasets

    if data.label_names:
        return tuple(data.label_names)
    if isinstance(feature, datasets.ClassLabel):
        return tuple(feature.names)
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.ClassLabel):
        return tuple(inner.names)
    items = [x for v in train_values for x in v] if kind == "lists" else train_values
    if items and all(isinstance(x, str) for x in items):
        return tuple(sorted(set(items)))
    return tuple(f"LABEL_{i}" for i in range(int(max(int(x) for x in items)) + 1))


def _to_id(value, label2id: dict[str, int], split: str, source: str) -> int:
    if isinstance(value, str):
        if value in label2id:
            return label2id[value]
    elif float(value).is_integer() and 0 <= int(value) < len(label2id):
        return int(value)
    if split == "train":
        raise ConfigError(
            "data.label_names",
            f"train label {value!r} is not one of the names given ({list(label2id)})",
            "list every label in data.label_names, or leave it unset to take the labels from train",
        )
    raise ConfigError(
        "data.columns.label" if source == "label" else "data.columns.tags",
        f"the {split} split has the label {value!r}, which train never has (train's labels: {list(label2id)})",
        "fix those rows, or list every label in data.label_names",
    )


def _encode_sequences(data: Any, train_raw, dev_raw, dev_name: str):
    import datasets

    cols = data.columns
    text = _column(train_raw, "text", cols.text, TEXT_COLUMNS, "train")
    pair = _column(train_raw, "text_pair", cols.text_pair, PAIR_COLUMNS, "train", required=False)
    label = _column(train_raw, "label", cols.label, LABEL_COLUMNS, "train")
    for col, role in ((text, "text"), (pair, "text_pair"), (label, "label")):
        if col is not None:
            _column(dev_raw, role, col, (), dev_name)
    feature = train_raw.features[label]
    train_values = train_raw[label]
    kind = _label_kind(train_values, feature, data.task_type, "train")
    task_type = _task_type(kind, data.task_type, train_values)
    names = () if task_type == "regression" else _label_names(data, kind, feature, train_values)
    spec = TaskSpec(_name(data), task_type, names, is_pair=pair is not None)
    label2id = spec.label2id
    feats = {"idx": datasets.Value("int32"), "text_a": datasets.Value("string")}
    if pair is not None:
        feats["text_b"] = datasets.Value("string")
    if task_type == "regression":
        feats["label"] = datasets.Value("float32")
    elif task_type == "multilabel":
        feats["label"] = datasets.Sequence(datasets.Value("float32"))
    else:
        feats["label"] = datasets.Value("int64")

    def build(ds, split: str):
        values = ds[label]
        if split != "train":
            _label_kind(values, ds.features[label], data.task_type, split)
        if task_type == "regression":
            labels: list = [float(v) for v in values]
        elif task_type == "multilabel":
            labels = []
            for v in values:
                hot = [0.0] * len(names)
                for x in v:
                    hot[_to_id(x, label2id, split, "label")] = 1.0
                labels.append(hot)
        else:
            labels = [_to_id(v, label2id, split, "label") for v in values]
        rows = {"idx": list(range(len(ds))), "text_a": _texts(ds, text, "text", split)}
        if pair is not None:
            rows["text_b"] = _texts(ds, pair, "text_pair", split)
        rows["label"] = labels
        return datasets.Dataset.from_dict(rows, features=datasets.Features(feats))

    return spec, build(train_raw, "train"), build(dev_raw, dev_name)


def _name(data: Any) -> str:
    if data.name:
        return data.name
    if data.dataset:
        return Path(data.dataset).name or data.dataset
    train = data.files.get("train", "data")
    return Path(train).stem


# ---- token classification ---------------------------------------------------------------------------------
def detect_scheme(tag_names: tuple[str, ...], stated: str = "auto", sequences: list[list[str]] | None = None) -> str:
    """The tags' scheme: ``stated`` checked against every tag name, or (``auto``) BIOES when S-/E- tags occur,
    IOB1 when an I- tag opens an entity in ``sequences``, else IOB2. A name that is not ``O`` or
    ``<prefix>-<type>`` with one of the scheme's prefixes is a ``ConfigError``."""
    field = "data.tag_scheme" if stated != "auto" else "data.columns.tags"
    prefixes = {name.split("-", 1)[0] for name in tag_names if name != "O"}
    scheme = stated
    if scheme == "auto":
        scheme = "BIOES" if prefixes & {"E", "S"} else "IOB1" if sequences and _opens_with_i(sequences) else "IOB2"
    allowed = _SCHEME_PREFIXES[scheme]
    for name in tag_names:
        head, sep, kind = name.partition("-")
        if name != "O" and not (sep and kind and head in allowed):
            raise ConfigError(
                field,
                f"tag {name!r} does not parse as {scheme} (tags are 'O' or '<{'|'.join(allowed)}>-<TYPE>')",
                "rename the tags to that form, or set data.tag_scheme to the scheme the tags use (IOB1, IOB2, BIOES)",
            )
    return scheme


def _opens_with_i(sequences: list[list[str]]) -> bool:
    for tags in sequences:
        prev = "O"
        for tag in tags:
            if tag.startswith("I-") and prev[2:] != tag[2:]:
                return True
            prev = tag
    return False


def _encode_tokens(data: Any, train_raw, dev_raw, dev_name: str):
    import datasets

    cols = data.columns
    tokens = _column(train_raw, "tokens", cols.tokens, TOKEN_COLUMNS, "train")
    tags = _column(train_raw, "tags", cols.tags, TAG_COLUMNS, "train")
    for col, role in ((tokens, "tokens"), (tags, "tags")):
        _column(dev_raw, role, col, (), dev_name)
    feature = train_raw.features[tags]
    train_tags = train_raw[tags]
    string_tags = any(isinstance(t, str) for row in train_tags for t in row)
    inner = getattr(feature, "feature", None)
    if not (string_tags or data.label_names or isinstance(inner, datasets.ClassLabel)):
        raise ConfigError(
            "data.label_names",
            "the tags are integer ids and the dataset does not name them",
            "give data.label_names: the tag names by id (e.g. [O, B-PER, I-PER, ...])",
        )
    names = _label_names(data, "lists", feature, train_tags)
    if string_tags and "O" in names and not data.label_names:
        names = ("O", *(n for n in names if n != "O"))  # O first: id 0 is "no entity", as in HF's NER datasets
    as_strings = [[names[t] if isinstance(t, int) else t for t in row] for row in train_tags]
    scheme = detect_scheme(names, data.tag_scheme, as_strings)
    spec = TaskSpec(_name(data), "token-classification", names, tag_scheme=scheme)
    label2id = spec.label2id
    feats = datasets.Features(
        {
            "idx": datasets.Value("int32"),
            "tokens": datasets.Sequence(datasets.Value("string")),
            "tags": datasets.Sequence(datasets.Value("int64")),
        }
    )

    def build(ds, split: str):
        words, ids = ds[tokens], []
        for i, (w, t) in enumerate(zip(words, ds[tags], strict=True)):
            if len(w) != len(t):
                raise ConfigError(
                    "data.columns.tags",
                    f"row {i} of the {split} split has {len(w)} tokens but {len(t)} tags",
                    "give one tag per token",
                )
            ids.append([_to_id(x, label2id, split, "tags") for x in t])
        return datasets.Dataset.from_dict(
            {"idx": list(range(len(ds))), "tokens": [[str(x) for x in w] for w in words], "tags": ids}, features=feats
        )

    return spec, build(train_raw, "train"), build(dev_raw, dev_name)
