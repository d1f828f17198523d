"""Annotation readers for the standard TSG formats, one module each, behind `read_annotations`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from data_pipeline.errors import ErrorLog
from data_pipeline.readers.activitynet import read_activitynet
from data_pipeline.readers.charades_sta import read_charades_durations, read_charades_sta
from data_pipeline.readers.common import AnnotationRecord, TimeUnit
from data_pipeline.readers.generic import read_generic
from data_pipeline.readers.moment_detr import read_moment_detr
from data_pipeline.readers.tacos import read_tacos

AnnotationFormat = Literal["charades-sta", "activitynet", "tacos", "moment-detr", "generic"]
FORMATS: tuple[AnnotationFormat, ...] = ("charades-sta", "activitynet", "tacos", "moment-detr", "generic")

__all__ = [
    "FORMATS",
    "TimeUnit",
    "AnnotationFormat",
    "AnnotationRecord",
    "read_activitynet",
    "read_annotations",
    "read_charades_durations",
    "read_charades_sta",
    "read_generic",
    "read_moment_detr",
    "read_tacos",
]


def read_annotations(
    fmt: AnnotationFormat,
    url: str,
    log: ErrorLog,
    *,
    durations: Mapping[str, float] | None = None,
    tacos_unit: TimeUnit = "frames",
    keep_extension: bool = False,
) -> list[AnnotationRecord]:
    """All records of an annotation file in format `fmt` (the `mktn prepare` dataset names).

    `durations` applies to Charades-STA only, `tacos_unit`/`keep_extension` to TACoS only.
    """
    if fmt == "charades-sta":
        return list(read_charades_sta(url, log, durations))
    if fmt == "activitynet":
        return list(read_activitynet(url, log))
    if fmt == "tacos":
        return list(read_tacos(url, log, unit=tacos_unit, keep_extension=keep_extension))
    if fmt == "moment-detr":
        return list(read_moment_detr(url, log))
    if fmt == "generic":
        return list(read_generic(url, log))
    raise ValueError(f"unknown annotation format {fmt!r}; expected one of {list(FORMATS)}")
