"""What every annotation reader shares: the record type, strict text/JSON loading and field checks."""

from __future__ import annotations

import codecs
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import fsspec

from data_pipeline.errors import DataError, ErrorLog, LineError
from data_pipeline.ranges import check_fps

TimeUnit = Literal["seconds", "frames"]
_FLOAT_MAX = sys.float_info.max
MAX_LINE_BYTES = 1 << 20
"""Longest line of a line-based file (annotations, query rows); longer ones are refused without being held."""
MAX_LINE_ERRORS = 1000
"""Bad lines `read_rows` reports before it stops reading the file."""
T = TypeVar("T")


@dataclass(frozen=True)
class AnnotationRecord:
    """One query as read from a file, before validation. Times are seconds, as written (not clamped).

    `where` locates it for error messages (`file:line` or `file:video[index]`); `duration` is None
    when the format does not carry it (Charades-STA without metadata: taken from the features).
    """

    video_id: str
    sentence: str
    start: float
    end: float
    where: str
    duration: float | None = None
    query_id: str | None = None


def read_bytes(url: str) -> bytes:
    """The whole file at `url` (any fsspec URL) without a UTF-8 byte-order mark; an empty file is an error."""
    try:
        with fsspec.open(url, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{url}: annotation file not found") from exc
    data = data.removeprefix(codecs.BOM_UTF8)
    if not data.strip():
        raise DataError(f"{url}: file is empty (expected annotations)")
    return data


def stream_lines(url: str, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str | LineError]]:
    """(1-based line number, text) of each non-blank line of `url` (any fsspec URL), read 64 KiB at a time so
    that memory never holds more than one line, whatever the file's size. A line longer than `max_line_bytes`
    (never held whole) or not UTF-8 comes as a `LineError` instead of its text, for the caller to raise or
    count. A UTF-8 byte-order mark is dropped; a file without a non-blank line is a `DataError`."""
    try:
        f = fsspec.open(url, "rb").open()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{url}: annotation file not found") from exc
    seen = False
    with f:
        for number, raw in _chunked_lines(f, max_line_bytes):
            if raw is None:
                seen = True
                yield (
                    number,
                    LineError(url, number, f"line is longer than the limit max_line_bytes={max_line_bytes}"),
                )
                continue
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                line = raw.decode("utf-8").rstrip("\r")
            except UnicodeDecodeError as exc:
                seen = True
                yield number, LineError(url, number, f"not valid UTF-8 (byte {exc.start} of the line)")
                continue
            if line.strip():
                seen = True
                yield number, line
    if not seen:
        raise DataError(f"{url}: file is empty (expected annotations)")


def _chunked_lines(f: Any, limit: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes without the newline) per line of the binary file `f`, read in chunks; None instead
    of the bytes of a line longer than `limit`, which is skipped without ever being held whole."""
    number, buffer, too_long = 0, b"", False
    while chunk := f.read(1 << 16):
        *complete, buffer = (buffer + chunk).split(b"\n")
        for line in complete:
            number += 1
            yield number, None if too_long or len(line) > limit else line
            too_long = False
        if len(buffer) > limit:
            buffer, too_long = b"", True
    if buffer or too_long:
        yield number + 1, None if too_long else buffer


def read_lines(url: str, log: ErrorLog) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of each non-blank line, streamed; a bad line (see `stream_lines`) goes to `log`."""
    for number, line in stream_lines(url):
        if isinstance(line, LineError):
            log.fail(line)
        else:
            yield number, line


def read_text(url: str) -> str:
    """The whole file decoded as UTF-8; a bad byte is an error naming the file and line."""
    data = read_bytes(url)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{url}:{line}: not valid UTF-8 (byte offset {exc.start})") from exc


def read_json(url: str) -> Any:
    """Parse a whole JSON document (UTF-8); errors name the file, line and column.

    Numbers too long for Python's int conversion and nesting deeper than the recursion
    limit are JSON errors too (json raises ValueError/RecursionError for those).
    """
    text = read_text(url)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{url}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})") from exc
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{url}: invalid JSON ({exc})") from exc


def read_jsonl(url: str, log: ErrorLog) -> Iterator[tuple[str, dict[str, Any]]]:
    """(`file:line`, object) for each line of a JSON Lines file; malformed lines go to `log`."""
    for number, line in read_lines(url, log):
        where = f"{url}:{number}"
        try:
            obj = _json_line(line)
        except ValueError as exc:
            log.fail(DataError(f"{where}: {exc}"))
            continue
        if not isinstance(obj, dict):
            log.fail(DataError(f"{where}: expected a JSON object, got {type(obj).__name__}"))
            continue
        yield where, obj


def read_rows(
    url: str,
    parse: Callable[[Any, int], T],
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_errors: int = MAX_LINE_ERRORS,
) -> tuple[list[T], list[LineError]]:
    """`parse(value, line)` of each line's JSON value of a JSON Lines file, streamed, and a `LineError` per line
    that is too long, not UTF-8, not JSON or refused by `parse` (a `ValueError`). More than `max_errors` bad
    lines stop the read with a `DataError`: a file that is mostly refusals is not the expected kind, and its
    errors would otherwise fill memory (a million bad lines)."""
    rows: list[T] = []
    errors: list[LineError] = []
    for number, line in stream_lines(url, max_line_bytes):
        try:
            if isinstance(line, LineError):
                raise line
            rows.append(parse(_json_line(line), number))
        except ValueError as exc:
            errors.append(exc if isinstance(exc, LineError) else LineError(url, number, str(exc)))
            if len(errors) > max_errors:
                raise DataError(
                    f"{url}: more than max_errors={max_errors} bad lines, stopped at line {number} "
                    f"(first: {errors[0]})"
                ) from None
    return rows, errors


def _json_line(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"invalid JSON ({exc})") from None


def require(obj: dict[str, Any], key: str, where: str) -> Any:
    """`obj[key]`, or an error naming the missing key."""
    if key not in obj:
        raise DataError(f"{where}: missing key {key!r} (has {sorted(obj)})")
    return obj[key]


def number(value: Any, what: str, where: str) -> float:
    """`value` as a finite float; strings, booleans, NaN, infinities and ints beyond float range are errors."""
    if not isinstance(value, bool) and isinstance(value, int | float) and abs(value) <= _FLOAT_MAX:
        return float(value)  # NaN fails the comparison, so it lands below with the infinities
    raise DataError(f"{where}: {what} must be a finite number, got {value!r:.80}")


def text(value: Any, what: str, where: str) -> str:
    """`value` as a string (emptiness is checked by validation, which can count it)."""
    if not isinstance(value, str):
        raise DataError(f"{where}: {what} must be a string, got {value!r}")
    return value


def caption_records(
    url: str, log: ErrorLog, *, unit: TimeUnit = "seconds", strip_suffix: str = ""
) -> Iterator[AnnotationRecord]:
    """Records of the `{video: {timestamps: [[s, e], ...], sentences: [...], ...}}` JSON form.

    ActivityNet Captions and TACoS share it. With `unit="seconds"` times and `duration` are
    seconds; with `unit="frames"` times are frame indices, seconds = frame / fps and
    duration = num_frames / fps (the 2D-TAN TACoS form). `strip_suffix` is removed from
    video ids (e.g. ".avi", as Lighthouse does for TACoS).
    """
    data = read_json(url)
    if not isinstance(data, dict):
        raise DataError(f"{url}: expected a JSON object mapping video id -> annotations")
    for video, entry in data.items():
        where = f"{url}:{video}"
        try:
            stamps, sentences, duration, scale = _caption_entry(entry, where, unit)
        except DataError as exc:
            sentences = entry.get("sentences") if isinstance(entry, dict) else None
            log.fail(exc, queries=len(sentences) if isinstance(sentences, list) else 1)
            continue
        video_id = video.removesuffix(strip_suffix) if strip_suffix else video
        for k, (stamp, sentence) in enumerate(zip(stamps, sentences)):
            at = f"{where}[{k}]"
            try:
                if not isinstance(stamp, list) or len(stamp) != 2:
                    raise DataError(f"{at}: timestamp must be [start, end], got {stamp!r}")
                start, end = (number(t, "timestamp", at) * scale for t in stamp)
                yield AnnotationRecord(video_id, text(sentence, "sentence", at), start, end, at, duration)
            except DataError as exc:
                log.fail(exc)


def _caption_entry(entry: Any, where: str, unit: TimeUnit) -> tuple[list[Any], list[Any], float, float]:
    """(timestamps, sentences, duration in seconds, seconds per time unit) of one video entry."""
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object with 'timestamps' and 'sentences'")
    stamps, sentences = require(entry, "timestamps", where), require(entry, "sentences", where)
    if not isinstance(stamps, list) or not isinstance(sentences, list) or len(stamps) != len(sentences):
        raise DataError(f"{where}: 'timestamps' and 'sentences' must be lists of the same length")
    if unit == "seconds":
        return stamps, sentences, number(require(entry, "duration", where), "duration", where), 1.0
    fps = check_fps(number(require(entry, "fps", where), "fps", where), "fps", where)
    frames = number(require(entry, "num_frames", where), "num_frames", where)
    return stamps, sentences, frames / fps, 1.0 / fps
