"""Raw-text corpora: local text, JSON(L), CSV/TSV and Parquet files, directories of them, ``save_to_disk``
directories, or hub datasets, with a text column.

``load_text_corpus`` returns a ``datasets.Dataset`` with one ``text`` column, one paragraph (or row) per row;
``unikd.data.tokenize.chunk_for_lm`` packs it into blocks for MLM/CLM. Structured files go through
``datasets``' json/csv/parquet builders and give their text column, never their braces or header. Plain ``.txt``
keeps unikd's own paragraph reader: ``load_dataset("text", sample_by="paragraph")`` splits on empty lines only
(a line holding spaces does not end its paragraph) and keeps the line breaks inside a paragraph, so it does not
give the same rows (tests/data/test_labelled.py shows the difference).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from unikd.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import datasets


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
        raise ConfigError(
            "data.text",
            f"bad hub dataset spec {spec!r}",
            "write hub:<name>/<config>[@split], e.g. hub:wikitext/wikitext-103-raw-v1",
        )
    if len(parts) == 1:
        path, config = parts[0], None
    elif len(parts) == 2:
        path, config = parts[0], parts[1]
    elif len(parts) == 3:
        path, config = f"{parts[0]}/{parts[1]}", parts[2]
    else:
        raise ConfigError(
            "data.text",
            f"bad hub dataset spec {spec!r}",
            "write hub:<name>/<config>[@split] or hub:<org>/<name>/<config>[@split]",
        )
    return path, config, split or "train"


_STRUCTURED = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
_TEXT_SUFFIXES = (".txt", *_STRUCTURED)


def load_text_corpus(
    paths: list[str] | str, limit_lines: int | None = None, text_column: str = "text", *, field: str = "data.text"
) -> "datasets.Dataset":
    """Load raw text as a ``datasets.Dataset`` with one column, ``text`` (one paragraph per row).

    Each entry of ``paths`` is a ``.txt``, ``.json``/``.jsonl``, ``.csv``/``.tsv`` or ``.parquet`` file (the
    structured ones give their ``text_column``), a directory (those files in it and below, sorted; a
    ``save_to_disk`` directory gives its train split's ``text_column``) or a hub dataset ``"hub:<name>/<config>[@split]"`` (e.g.
    ``"hub:wikitext/wikitext-103-raw-v1"``, split ``train`` by default; ``"hub:<org>/<name>/<config>"``
    for namespaced repos) loaded with ``datasets.load_dataset`` (it must have the ``text_column``).

    Local files: blank (or whitespace-only) lines separate paragraphs; the wrapped lines of a
    paragraph are stripped and joined with single spaces. Rows of datasets and structured files are stripped and
    empty rows dropped. ``limit_lines`` caps the number of input lines (.txt) or rows read, in total.
    A corpus with no text at all (empty or blank files) is a ``ConfigError`` naming ``field``.
    """
    import datasets

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [str(p) for p in paths]
    if not paths:
        raise ConfigError(
            "data.text",
            "no text files or datasets given",
            "pass a .txt file, a directory of .txt files or hub:<name>/<config>",
        )
    if limit_lines is not None and (not isinstance(limit_lines, int) or limit_lines < 0):
        raise ConfigError(
            "data.limit_lines", f"must be a non-negative integer or None, got {limit_lines!r}", "use e.g. 10000"
        )

    texts: list[str] = []
    budget = limit_lines
    for entry in paths:
        if budget is not None and budget <= 0:
            break
        if entry.startswith("hub:"):
            budget = _read_hub_text(entry[4:], budget, texts, text_column)
        elif _is_saved_dataset(Path(entry).expanduser()):
            budget = _take_rows(_saved_train_split(entry), f"{entry!r}", budget, texts, text_column)
        else:
            for file in _local_text_files(entry):
                if budget is not None and budget <= 0:
                    break
                if file.suffix.lower() in _STRUCTURED:
                    budget = _read_structured(file, budget, texts, text_column)
                else:
                    budget = _read_local_text([file], budget, texts)
    if not texts:
        raise ConfigError(
            field,
            f"{paths} hold no text (the files are empty or blank)",
            f"point {field} at files with text, one paragraph per blank-line-separated block",
        )
    return datasets.Dataset.from_dict({"text": texts}, features=datasets.Features({"text": datasets.Value("string")}))


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def _saved_train_split(entry: str) -> "datasets.Dataset":
    import datasets

    loaded = datasets.load_from_disk(str(Path(entry).expanduser()))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise ConfigError("data.text", f"{entry!r} has no train split ({sorted(loaded)})", "save a train split")
        loaded = loaded["train"]
    return loaded


def _take_rows(ds, what: str, budget: int | None, texts: list[str], text_column: str) -> int | None:
    """Append the stripped, non-empty ``text_column`` rows of ``ds`` (at most ``budget``); the budget left."""
    if text_column not in ds.column_names:
        raise ConfigError(
            "data.text_column",
            f"{what} has no column {text_column!r} (its columns: {ds.column_names})",
            f"set data.text_column to one of {ds.column_names}",
        )
    rows = ds[text_column] if budget is None else ds.select(range(min(budget, len(ds))))[text_column]
    if budget is not None:
        budget -= len(rows)
    texts.extend(t.strip() for t in rows if isinstance(t, str) and t.strip())
    return budget


def _read_structured(file: Path, budget: int | None, texts: list[str], text_column: str) -> int | None:
    """A JSON(L)/CSV/TSV/Parquet file through datasets' own builder: its ``text_column``, not its syntax."""
    import datasets

    builder = _STRUCTURED[file.suffix.lower()]
    kwargs = {"keep_default_na": False} if builder == "csv" else {}
    if file.suffix.lower() == ".tsv":
        kwargs["sep"] = "\t"
    try:
        ds = datasets.load_dataset(builder, data_files={"train": str(file)}, split="train", **kwargs)
    except Exception as exc:  # pyarrow/pandas each raise their own types for a file they cannot read
        raise ConfigError(
            "data.text", f"could not read {str(file)!r} ({type(exc).__name__}: {exc})", "check the file's format"
        ) from exc
    return _take_rows(ds, repr(str(file)), budget, texts, text_column)


def _read_hub_text(spec: str, budget: int | None, texts: list[str], text_column: str = "text") -> int | None:
    """Append the stripped, non-empty ``text_column`` rows of hub dataset ``spec`` (``"hub:"`` removed) to
    ``texts``, at most ``budget`` rows; return the budget left (``None``: unlimited)."""
    import datasets

    name, config, split = _parse_hub_spec(spec)
    split_arg = split if budget is None else f"{split}[:{budget}]"
    try:
        hub = datasets.load_dataset(name, config, split=split_arg)
    except Exception as exc:
        raise ConfigError(
            "data.text",
            f"loading hub dataset {name!r} (config {config!r}, split {split!r}) failed: {type(exc).__name__}: {exc}",
            "check the name and the internet connection, or pass local .txt files",
        ) from exc
    if text_column not in hub.column_names:
        raise ConfigError(
            "data.text" if text_column == "text" else "data.text_column",
            f"hub dataset {name!r} has no {text_column!r} column (columns: {hub.column_names})",
            "use a dataset with a 'text' column, or set data.text_column to one of its columns",
        )
    return _take_rows(hub, repr(name), budget, texts, text_column)


def _local_text_files(entry: str) -> list[Path]:
    """The files a local entry names: the file itself, or a directory's text files (in it and below), sorted."""
    p = Path(entry).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _TEXT_SUFFIXES)
        if not files:
            raise ConfigError(
                "data.text",
                f"directory {entry!r} has no text files ({', '.join('*' + s for s in _TEXT_SUFFIXES)})",
                "point at text files or a directory that holds them",
            )
    elif p.is_file():
        files = [p]
    else:
        raise ConfigError(
            "data.text",
            f"text path {entry!r} does not exist",
            "pass existing .txt files or directories, or hub:<name>/<config>",
        )
    return files


def _read_local_text(files: list[Path], budget: int | None, texts: list[str]) -> int | None:
    """Append the paragraphs of ``files`` to ``texts``, reading at most ``budget`` lines in all;
    return the budget left (``None``: unlimited)."""
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
    return budget
