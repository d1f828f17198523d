"""Bad-input errors and the `--on-error` policy: raise at the first problem, or skip and count it."""

from __future__ import annotations

import reprlib
from dataclasses import dataclass, field
from typing import Any, Literal

OnError = Literal["raise", "skip"]


class DataError(ValueError):
    """A problem with input data; the message names the file and line/key/video and what was expected."""


class LineError(DataError):
    """A bad line of a text file: `str()` is `file:line: reason`; `line` and `reason` serve callers that
    report lines in their own format (the query rows of `mktn predict`)."""

    def __init__(self, url: str, line: int, reason: str):
        super().__init__(f"{url}:{line}: {reason}")
        self.line, self.reason = line, reason


_ECHO = reprlib.Repr()
_ECHO.maxlevel, _ECHO.maxstring, _ECHO.maxother = 3, 200, 200


def echo(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters, for quoting an untrusted value in a one-line error; nested
    containers are abbreviated by `reprlib` before the cut, so a huge value is never rendered whole."""
    text = _ECHO.repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


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
