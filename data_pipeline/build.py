"""Validate annotation records against their videos' features and assemble `VideoGroup`s.

Rules (each violation is a `DataError` naming the record's file and line/key, or the video):
- a non-empty sentence (surrounding whitespace is stripped), finite times, `0 <= start < end`;
- `end <= duration + end_tolerance_s`; an end past the duration but within the tolerance is
  clamped to the duration and counted (Charades-STA overshoots by up to 1.54 s, and every
  reference loader clamps); `start` must still be before the duration;
- no duplicate rows (same video, times and sentence) unless `allow_duplicates` (TACoS ships
  ~800 such rows written by different annotators), no repeated query id;
- features present, float, finite, non-empty, with the same dim and tokens per clip for every
  video (`feature_dim` when declared, else the first video's);
- one duration per video: from the annotations (lines must agree to 0.05 s) or, when the format
  has none, `num_clips / feature_fps`;
- durations, times and the feature fps within `data_pipeline.ranges` (judged in float32, as the model
  computes: 1e308 s or an fps of 1e-300 pass float64 checks and turn the loss into NaN).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from data_pipeline.errors import DataError, ErrorLog
from data_pipeline.features import FeatureStore, check_features
from data_pipeline.ranges import MAX_SECONDS, check_duration, check_fps, check_moment
from data_pipeline.readers import AnnotationRecord
from data_pipeline.types import QueryAnnotation, VideoGroup

DURATION_AGREEMENT_S = 0.05


@dataclass(frozen=True)
class BuildOptions:
    """How records become video groups (see the module docstring for the rules)."""

    dataset: str
    split: str = "train"
    end_tolerance_s: float = 2.0
    allow_duplicates: bool = False
    feature_dim: int | None = None
    feature_fps: float | None = None

    def __post_init__(self) -> None:
        if self.feature_fps is not None:
            check_fps(self.feature_fps, "feature fps", "--feature-fps")
        if not (math.isfinite(self.end_tolerance_s) and 0 <= self.end_tolerance_s <= MAX_SECONDS):
            raise DataError(
                f"--end-tolerance: expected seconds in [0, {MAX_SECONDS:g}], got {self.end_tolerance_s}"
            )


def build_video_groups(
    records: Iterable[AnnotationRecord], features: FeatureStore, options: BuildOptions, log: ErrorLog
) -> Iterator[VideoGroup]:
    """Group `records` by video (first-appearance order), attach features and yield valid `VideoGroup`s.

    Queries keep their file order; `index` is the position among the video's kept queries. Under
    `log.on_error == "skip"` a bad query is dropped alone and a bad video with all its queries.
    """
    by_video: dict[str, list[AnnotationRecord]] = {}
    for rec in records:
        by_video.setdefault(rec.video_id, []).append(rec)
    shape: tuple[int, ...] | None = None  # (tokens per clip, dim) of the first accepted video
    seen_ids: dict[str, str] = {}
    for video_id, recs in by_video.items():
        try:
            feats = check_features(
                features.load(video_id), f"{features.url} [{video_id}]", options.feature_dim
            )
            if shape is None:
                shape = feats.shape[1:]
            elif feats.shape[1:] != shape:
                raise DataError(
                    f"{features.url} [{video_id}]: features shape {feats.shape} disagrees with the dataset's "
                    f"(clips, {', '.join(map(str, shape))})"
                )
            duration = _duration(video_id, recs, feats, options)
        except DataError as exc:
            log.fail(exc, queries=len(recs))
            continue
        queries = list(_valid_queries(video_id, recs, duration, options, log, seen_ids))
        if queries:
            yield VideoGroup(video_id, duration, feats, queries, options.dataset, options.split)


def _duration(video_id: str, recs: list[AnnotationRecord], feats: np.ndarray, options: BuildOptions) -> float:
    """The video's duration in seconds: from its records (all agreeing) or from clips / fps."""
    given = [r for r in recs if r.duration is not None]
    if not given:
        if options.feature_fps is None:
            raise DataError(
                f"video {video_id!r}: no duration in the annotations; give durations or a feature fps"
            )
        return check_duration(
            feats.shape[0] / options.feature_fps, f"video {video_id!r} ({feats.shape[0]} clips / feature fps)"
        )
    first = given[0]
    for rec in given[1:]:
        if abs(rec.duration - first.duration) > DURATION_AGREEMENT_S:
            raise DataError(
                f"{rec.where}: duration {rec.duration} disagrees with {first.duration} at {first.where}"
            )
    return check_duration(first.duration, first.where)


def _valid_queries(
    video_id: str,
    recs: list[AnnotationRecord],
    duration: float,
    options: BuildOptions,
    log: ErrorLog,
    seen_ids: dict[str, str],
) -> Iterator[QueryAnnotation]:
    seen_rows: dict[tuple[float, float, str], str] = {}
    index = 0
    for rec in recs:
        try:
            sentence = rec.sentence.strip()
            if not sentence:
                raise DataError(f"{rec.where}: empty sentence")
            row = (rec.start, rec.end, sentence)
            if row in seen_rows and not options.allow_duplicates:
                raise DataError(
                    f"{rec.where}: duplicate of {seen_rows[row]} (same video, times and sentence); "
                    "keep such rows with --allow-duplicates or drop them with --on-error skip"
                )
            end = _checked_end(rec, duration, options.end_tolerance_s)
            query_id = rec.query_id if rec.query_id is not None else f"{video_id}#{index}"
            if query_id in seen_ids:
                raise DataError(f"{rec.where}: query id {query_id!r} already used at {seen_ids[query_id]}")
        except DataError as exc:
            log.fail(exc)
            continue
        if end < rec.end:
            log.clamped_ends += 1
        seen_rows.setdefault(row, rec.where)
        seen_ids[query_id] = rec.where
        yield QueryAnnotation(query_id, sentence, rec.start, end, index)
        index += 1


def _checked_end(rec: AnnotationRecord, duration: float, tolerance: float) -> float:
    """`rec.end`, clamped to `duration` when it overshoots by at most `tolerance` seconds."""
    if rec.start < 0:
        raise DataError(f"{rec.where}: negative start {rec.start}")
    if rec.start >= rec.end:
        raise DataError(f"{rec.where}: start {rec.start} >= end {rec.end} (expected start < end)")
    if rec.end > duration + tolerance:
        raise DataError(
            f"{rec.where}: end {rec.end} is past the video duration {duration} by more than {tolerance} s"
        )
    if rec.start >= duration:
        raise DataError(f"{rec.where}: start {rec.start} is not before the video duration {duration}")
    end = min(rec.end, duration)
    check_moment(rec.start, end, duration, rec.where)
    return end
