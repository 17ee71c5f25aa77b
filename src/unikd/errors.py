"""User-facing errors. Every validation error names the config field and says how to fix it."""

from __future__ import annotations


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
