"""Bad-input errors and the `--on-error` policy: raise at the first problem, or skip and count it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

OnError = Literal["raise", "skip"]


class DataError(ValueError):
    """A problem with input data; the message names the file and line/key/video and what was expected."""


@dataclass
class ErrorLog:
    """Applies the `on_error` policy and keeps the record of every item skipped or changed.

    Nothing is dropped or altered silently: each skip keeps its message, each clamp is counted,
    and both appear in the prepare summary and in `dataset.json`.
    """

    on_error: OnError = "raise"
    skipped: list[str] = field(default_factory=list)
    skipped_queries: int = 0
    clamped_ends: int = 0

    def fail(self, error: DataError, queries: int = 1) -> None:
        """Raise `error` under `on_error="raise"`; otherwise record it with the queries it drops."""
        if self.on_error == "raise":
            raise error
        self.skipped.append(str(error))
        self.skipped_queries += queries

    def summary(self) -> dict[str, int | list[str]]:
        return {
            "skipped_queries": self.skipped_queries,
            "clamped_ends": self.clamped_ends,
            "skipped": self.skipped,
        }
