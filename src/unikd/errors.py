"""User-facing errors. Every validation error names the config field and says how to fix it."""

from __future__ import annotations

import os
import sys


class ConfigError(ValueError):
    """A configuration or input problem found before training starts.

    The message reads ``<field>: <what is wrong>. Fix: <what to do>`` so a user can act on it
    without reading the source.
    """

    def __init__(self, field: str, problem: str, fix: str | None = None):
        self.field = field
        self.problem = problem
        self.fix = fix
        message = f"{field}: {problem}"
        if fix:
            message += f". Fix: {fix}"
        super().__init__(message)

    def headline(self) -> tuple[str, str]:
        """The error in one line (``<field>: <problem's first line>. Fix: <fix>``) and the rest of a problem that
        spans several lines (a YAML excerpt, torch's loading text), '' when it has none."""
        first, _, rest = self.problem.strip().partition("\n")
        line = f"{self.field}: {first.rstrip(':').rstrip()}" + (" (details below)" if rest.strip() else "")
        if self.fix:
            line += f". Fix: {self.fix}"
        return line, rest.strip()


class DataError(ConfigError):
    """An input-data problem (a dataset file, a split, a corpus): the CLI exits with code 3 for it."""


class TrainingError(ConfigError):
    """Training itself broke (a non-finite loss or weights): the run is stopped, no result is written and the last
    good checkpoint is kept. The CLI exits with code 4 for it; ``field`` names the term (its log name)."""

    def __init__(self, field: str, problem: str, fix: str | None = None, *, step: int | None = None):
        self.step = step
        super().__init__(field, problem, fix)


def exit_code(exc: BaseException) -> int:
    """The CLI's exit status for an error (README "Exit codes"): 4 non-finite training, 3 a data problem (a
    ``DataError`` or a ``ConfigError`` whose field is under ``data``), 2 any other configuration error."""
    if isinstance(exc, TrainingError):
        return 4
    if isinstance(exc, DataError) or (isinstance(exc, ConfigError) and exc.field.split(".")[0] == "data"):
        return 3
    return 2


def is_main_process() -> bool:
    """Rank 0 of a launch (torchrun and `accelerate launch` set RANK), or a plain single process. Usable before an
    Accelerator exists (config validation runs first)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def warn(message: str) -> None:
    """A user-facing warning on stderr, once per launch (rank 0 only). Printed, not ``warnings.warn``: the CLI hides
    library UserWarnings unless --verbose."""
    if is_main_process():
        print(f"warning: {message}", file=sys.stderr)
