"""TACoS in its two common JSON forms, chosen explicitly (frames are never guessed from magnitudes)."""

from __future__ import annotations

from collections.abc import Iterator

from data_pipeline.errors import ErrorLog
from data_pipeline.readers.common import AnnotationRecord, TimeUnit, caption_records


def read_tacos(
    url: str, log: ErrorLog, *, unit: TimeUnit = "frames", keep_extension: bool = False
) -> Iterator[AnnotationRecord]:
    """Records of a TACoS `train/val/test.json`.

    `unit="frames"`: the 2D-TAN/TALL form `{"s17-d69.avi": {timestamps (frames), sentences, fps,
    num_frames}}`; `unit="seconds"`: `{vid: {timestamps (s), sentences, duration}}`. Video ids
    lose their `.avi` unless `keep_extension` (as Lighthouse does), so features are `s17-d69.npy`.
    """
    return caption_records(url, log, unit=unit, strip_suffix="" if keep_extension else ".avi")
