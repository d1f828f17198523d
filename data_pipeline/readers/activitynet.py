"""ActivityNet Captions: `{vid: {"duration", "timestamps": [[s, e]], "sentences"}}` in seconds."""

from __future__ import annotations

from collections.abc import Iterator

from data_pipeline.errors import ErrorLog
from data_pipeline.readers.common import AnnotationRecord, caption_records


def read_activitynet(url: str, log: ErrorLog) -> Iterator[AnnotationRecord]:
    """Records of `train.json`, `val_1.json` or `val_2.json` (sentences keep their text; validation strips)."""
    return caption_records(url, log, unit="seconds")
