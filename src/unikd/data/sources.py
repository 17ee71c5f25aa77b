"""Raw-text corpora: local ``.txt`` files and directories, or hub datasets with a ``text`` column.

``load_text_corpus`` returns a ``datasets.Dataset`` with one ``text`` column, one paragraph per row;
``unikd.data.tokenize.chunk_for_lm`` packs it into blocks for MLM/CLM.
"""

from __future__ import annotations

import glob
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


def load_text_corpus(
    paths: list[str] | str, limit_lines: int | None = None, *, field: str = "data.text"
) -> "datasets.Dataset":
    """Load raw text as a ``datasets.Dataset`` with one column, ``text`` (one paragraph per row).

    Each entry of ``paths`` is a ``.txt`` file, a directory (its ``*.txt`` files, sorted, not
    recursive) or a hub dataset ``"hub:<name>/<config>[@split]"`` (e.g.
    ``"hub:wikitext/wikitext-103-raw-v1"``, split ``train`` by default; ``"hub:<org>/<name>/<config>"``
    for namespaced repos) loaded with ``datasets.load_dataset`` (it must have a ``text`` column).

    Local files: blank (or whitespace-only) lines separate paragraphs; the wrapped lines of a
    paragraph are stripped and joined with single spaces. Hub rows are stripped and empty rows
    dropped. ``limit_lines`` caps the number of input lines (local) or rows (hub) read, in total.
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
            budget = _read_hub_text(entry[4:], budget, texts)
        else:
            budget = _read_local_text(_local_text_files(entry), budget, texts)
    if not texts:
        raise ConfigError(
            field,
            f"{paths} hold no text (the files are empty or blank)",
            f"point {field} at files with text, one paragraph per blank-line-separated block",
        )
    return datasets.Dataset.from_dict({"text": texts}, features=datasets.Features({"text": datasets.Value("string")}))


def _read_hub_text(spec: str, budget: int | None, texts: list[str]) -> int | None:
    """Append the stripped, non-empty ``text`` rows of hub dataset ``spec`` (``"hub:"`` removed) to
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
    if "text" not in hub.column_names:
        raise ConfigError(
            "data.text",
            f"hub dataset {name!r} has no 'text' column (columns: {hub.column_names})",
            "use a dataset with a 'text' column",
        )
    rows = hub["text"]
    if budget is not None:
        rows = rows[:budget]
        budget -= len(rows)
    texts.extend(t.strip() for t in rows if t and t.strip())
    return budget


def _local_text_files(entry: str) -> list[Path]:
    """The files a local entry names: the file itself, or a directory's ``*.txt`` files, sorted."""
    p = Path(entry).expanduser()
    if p.is_dir():
        files = sorted(Path(f) for f in glob.glob(str(p / "*.txt")))
        if not files:
            raise ConfigError(
                "data.text",
                f"directory {entry!r} has no *.txt files",
                "point at .txt files or a directory that holds them",
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
