"""The project's generic format: JSON Lines, one query per line, times in seconds.

    {"video_id": "v1", "duration": 30.5, "start": 2.0, "end": 7.5, "sentence": "a person opens a door"}

`query_id` (string) is optional; without it queries are numbered per video in file order.
"""

from __future__ import annotations

from collections.abc import Iterator

from data_pipeline.errors import DataError, ErrorLog
from data_pipeline.readers.common import AnnotationRecord, number, read_jsonl, require, text

FIELDS = ("video_id", "duration", "start", "end", "sentence")


def read_generic(url: str, log: ErrorLog) -> Iterator[AnnotationRecord]:
    """Records of a generic JSONL file; unknown keys are errors (they are usually typos)."""
    for where, obj in read_jsonl(url, log):
        try:
            unknown = set(obj) - {*FIELDS, "query_id"}
            if unknown:
                raise DataError(
                    f"{where}: unknown keys {sorted(unknown)}; expected {list(FIELDS)} (+ 'query_id')"
                )
            query_id = obj.get("query_id")
            yield AnnotationRecord(
                video_id=text(require(obj, "video_id", where), "video_id", where),
                sentence=text(require(obj, "sentence", where), "sentence", where),
                start=number(require(obj, "start", where), "start", where),
                end=number(require(obj, "end", where), "end", where),
                where=where,
                duration=number(require(obj, "duration", where), "duration", where),
                query_id=None if query_id is None else text(query_id, "query_id", where),
            )
        except DataError as exc:
            log.fail(exc)
