"""Moment-DETR / Lighthouse JSONL: `{"qid", "query", "duration", "vid", "relevant_windows": [[s, e]]}`."""

from __future__ import annotations

from collections.abc import Iterator

from data_pipeline.errors import DataError, ErrorLog
from data_pipeline.readers.common import AnnotationRecord, number, read_jsonl, require, text


def read_moment_detr(url: str, log: ErrorLog) -> Iterator[AnnotationRecord]:
    """Records of a Moment-DETR style JSONL file, in seconds.

    Sentence grounding has one ground-truth moment per query, so a line with more than one
    relevant window (QVHighlights-style highlight data) is an error, not a silent pick.
    """
    for where, obj in read_jsonl(url, log):
        try:
            windows = require(obj, "relevant_windows", where)
            if not isinstance(windows, list) or len(windows) != 1:
                raise DataError(
                    f"{where}: expected exactly one relevant window [[start, end]], got {windows!r}"
                )
            window = windows[0]
            if not isinstance(window, list) or len(window) != 2:
                raise DataError(f"{where}: relevant window must be [start, end], got {window!r}")
            qid = require(obj, "qid", where)
            if isinstance(qid, bool) or not isinstance(qid, int | str):
                raise DataError(f"{where}: qid must be an int or a string, got {qid!r}")
            yield AnnotationRecord(
                video_id=text(require(obj, "vid", where), "vid", where),
                sentence=text(require(obj, "query", where), "query", where),
                start=number(window[0], "window start", where),
                end=number(window[1], "window end", where),
                where=where,
                duration=number(require(obj, "duration", where), "duration", where),
                query_id=str(qid),
            )
        except DataError as exc:
            log.fail(exc)
