"""What every annotation reader shares: the record type, strict text/JSON loading and field checks."""

from __future__ import annotations

import codecs
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import fsspec

from data_pipeline.errors import DataError, ErrorLog

TimeUnit = Literal["seconds", "frames"]
_FLOAT_MAX = sys.float_info.max


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


def read_lines(url: str, log: ErrorLog) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of each non-blank line; a line that is not UTF-8 goes to `log`."""
    for number, raw in enumerate(read_bytes(url).split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            log.fail(DataError(f"{url}:{number}: not valid UTF-8 (byte {exc.start} of the line)"))
            continue
        if line.strip():
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
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            log.fail(DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})"))
            continue
        except (ValueError, RecursionError) as exc:
            log.fail(DataError(f"{where}: invalid JSON ({exc})"))
            continue
        if not isinstance(obj, dict):
            log.fail(DataError(f"{where}: expected a JSON object, got {type(obj).__name__}"))
            continue
        yield where, obj


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
    fps = number(require(entry, "fps", where), "fps", where)
    if fps <= 0:
        raise DataError(f"{where}: fps must be > 0, got {fps}")
    frames = number(require(entry, "num_frames", where), "num_frames", where)
    return stamps, sentences, frames / fps, 1.0 / fps
