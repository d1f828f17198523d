"""Sentence queries as rows: parsed and checked one by one, each problem a `RowError` naming its row.

A row names a video, a sentence and the video's duration in seconds (the `generic` JSONL format of
`mktn prepare`, where `query_id` and the true `start`/`end` are optional). `read_queries` reads a JSONL file
(any fsspec URL) line by line within `Limits`; the pyfunc model parses its table rows with `parse_query`.
Bad rows never cost the good ones their results: bad JSON, a missing or wrong-typed field, an empty
sentence or a line over the size limit becomes a `RowError`, and every other row is kept.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import fsspec

from data_pipeline.text import tokenize


@dataclass(frozen=True)
class Limits:
    """The largest inputs accepted; anything bigger is refused with the limit's name, not attempted."""

    max_clips_per_video: int = 20_000
    max_queries_per_video: int = 1_024
    max_sentence_chars: int = 2_000
    max_line_bytes: int = 1 << 20


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Query:
    """One parsed input row; `row` is its line number (JSONL) or index (table), `truth` its true moment."""

    row: int
    video_id: str
    sentence: str
    duration: float
    query_id: str
    truth: tuple[float, float] | None = None


@dataclass(frozen=True)
class RowError:
    """Why input row `row` got no prediction."""

    row: int
    message: str


def parse_query(obj: Any, row: int, limits: Limits) -> Query:
    """A `Query` from one row's mapping; ValueError names the field and what was expected."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    video_id = _field(obj, "video_id", str)
    if not video_id.strip():
        raise ValueError("'video_id' is empty")
    sentence = _field(obj, "sentence", str)
    if len(sentence) > limits.max_sentence_chars:
        raise ValueError(
            f"'sentence' has {len(sentence)} characters, over the limit "
            f"max_sentence_chars={limits.max_sentence_chars}"
        )
    if not sentence.strip():
        raise ValueError("'sentence' is empty")
    if not tokenize(sentence):
        raise ValueError(f"'sentence' {sentence!r} has no words")
    duration = _number(obj, "duration")
    if duration <= 0:
        raise ValueError(f"'duration' must be > 0 seconds, got {duration}")
    query_id = obj.get("query_id")
    if query_id is not None and (isinstance(query_id, bool) or not isinstance(query_id, str | int)):
        raise ValueError(f"'query_id' must be a string or an integer, got {type(query_id).__name__}")
    truth = None
    if obj.get("start") is not None or obj.get("end") is not None:
        start, end = _number(obj, "start"), _number(obj, "end")
        if not 0 <= start < end <= duration:
            raise ValueError(
                f"true moment ({start}, {end}) must satisfy 0 <= start < end <= duration ({duration})"
            )
        truth = (start, end)
    return Query(row, video_id, sentence, duration, str(row) if query_id is None else str(query_id), truth)


def _field(obj: Mapping, key: str, kind: type) -> Any:
    if obj.get(key) is None:
        raise ValueError(f"missing '{key}'")
    value = obj[key]
    if not isinstance(value, kind):
        raise ValueError(f"'{key}' must be a {kind.__name__}, got {type(value).__name__} {value!r:.60}")
    return value


def _number(obj: Mapping, key: str) -> float:
    value = obj.get(key)
    if value is None:
        raise ValueError(f"missing '{key}'")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"'{key}' must be a finite number of seconds, got {value!r:.60}")
    return float(value)


def read_queries(url: str, limits: Limits = DEFAULT_LIMITS) -> tuple[list[Query], list[RowError]]:
    """Parse a JSONL query file (any fsspec URL); each bad line becomes a `RowError` with its line number.

    Blank lines are skipped; a line over `max_line_bytes` is refused without being read into memory.
    """
    queries: list[Query] = []
    errors: list[RowError] = []
    with fsspec.open(url, "rb") as f:
        for line_no, line in _lines(f, limits.max_line_bytes):
            try:
                if line is None:
                    raise ValueError(f"line is longer than the limit max_line_bytes={limits.max_line_bytes}")
                text = line.decode("utf-8").lstrip("\ufeff") if line_no == 1 else line.decode("utf-8")
                if not text.strip():
                    continue
                queries.append(parse_query(_json(text), line_no, limits))
            except (ValueError, UnicodeDecodeError) as exc:
                errors.append(RowError(line_no, str(exc)))
    return queries, errors


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from exc
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _lines(f: Any, limit: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes without the newline) per line, read in chunks; None instead of the bytes of a line
    longer than `limit`, which is skipped without ever being held whole."""
    line_no, buffer, too_long = 0, b"", False
    while chunk := f.read(1 << 16):
        *complete, buffer = (buffer + chunk).split(b"\n")
        for line in complete:
            line_no += 1
            yield line_no, None if too_long or len(line) > limit else line
            too_long = False
        if len(buffer) > limit:
            buffer, too_long = b"", True
    if buffer or too_long:
        yield line_no + 1, None if too_long else buffer
