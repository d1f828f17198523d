"""Charades-STA: `VID START END##sentence` lines in seconds; durations from Charades metadata."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping

from data_pipeline.errors import DataError, ErrorLog
from data_pipeline.readers.common import AnnotationRecord, number, read_json, read_lines, read_text


def read_charades_sta(
    url: str, log: ErrorLog, durations: Mapping[str, float] | None = None
) -> Iterator[AnnotationRecord]:
    """Records of a `charades_sta_{train,test}.txt` file.

    With `durations` (from `read_charades_durations`) each record carries its video's length and
    a video missing from it is an error; without, the duration comes from the features (fps).
    """
    for line_no, line in read_lines(url, log):
        where = f"{url}:{line_no}"
        try:
            head, sep, sentence = line.partition("##")
            parts = head.split()
            if not sep or len(parts) != 3:
                raise DataError(f"{where}: expected 'VIDEO START END##sentence', got {line[:80]!r}")
            video_id, start, end = parts
            if durations is not None and video_id not in durations:
                raise DataError(f"{where}: unknown video id {video_id!r} (not in the durations metadata)")
            yield AnnotationRecord(
                video_id=video_id,
                sentence=sentence,
                start=number(_float(start), "START", where),
                end=number(_float(end), "END", where),
                where=where,
                duration=None if durations is None else durations[video_id],
            )
        except DataError as exc:
            log.fail(exc)


def read_charades_durations(url: str) -> dict[str, float]:
    """Video id -> seconds from `charades.json` (`{vid: {"duration": s}}`) or `Charades_v1_*.csv` (`length`).

    VSLNet reads the JSON and 2D-TAN the CSV; they agree to 0.02 s.
    """
    if url.endswith(".csv"):
        rows = csv.DictReader(io.StringIO(read_text(url), newline=""))
        try:
            if rows.fieldnames is None or not {"id", "length"} <= set(rows.fieldnames):
                raise DataError(f"{url}: expected a Charades CSV with 'id' and 'length' columns")
            return {row["id"]: number(_float(row["length"]), "length", f"{url}:{row['id']}") for row in rows}
        except csv.Error as exc:
            raise DataError(f"{url}:{rows.line_num}: malformed CSV ({exc})") from exc
    data = read_json(url)
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "duration" in v for v in data.values()):
        raise DataError(f"{url}: expected charades.json form {{video: {{'duration': seconds, ...}}}}")
    return {vid: number(v["duration"], "duration", f"{url}:{vid}") for vid, v in data.items()}


def _float(value: str | None) -> float | str | None:
    """`value` parsed as a float, or left as is (a string, or None for a short CSV row) so `number` reports it."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
