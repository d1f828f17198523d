"""Ground sentence queries in videos with a trained model: multi-pair inference, one encoding per video.

Input rows name a video, a sentence and the video's duration in seconds (the `generic` JSONL format of
`mktn prepare`, where `query_id` and the true `start`/`end` are optional); features come per video from
a feature store (`.npy` directory or HDF5, `data_pipeline.features`) or with the rows (the pyfunc model).
Rows are grouped by video, each video's features are loaded and checked once, and whole video groups are
packed into batches under a query and a video budget, so a video is encoded once however many queries it
has (paper Table 2, VPS) and CSM sees all of a video's queries together, as in training.

Bad rows never cost the good ones their results: each problem (bad JSON, a missing or wrong-typed field,
an empty sentence, an unknown video, features of the wrong dim/tokens or with NaN/inf, a video over the
size limits) becomes a `RowError` naming its row, and every other row is predicted.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import torch

from data_pipeline.batch import collate
from data_pipeline.features import check_features
from data_pipeline.loader import budget_batches
from data_pipeline.text import tokenize
from data_pipeline.types import QueryAnnotation, VideoGroup
from mktn.decode import Moment
from mktn.model import MKTN


@dataclass(frozen=True)
class Limits:
    """The largest inputs accepted; anything bigger is refused with the limit's name, not attempted."""

    max_clips_per_video: int = 20_000
    max_queries_per_video: int = 1_024
    max_sentence_chars: int = 2_000
    max_line_bytes: int = 1 << 20


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Budget:
    """Whole video groups per batch: at most `max_videos` videos and `max_queries` queries (a single video
    with more queries gets a batch of its own: a video's queries are never split)."""

    max_queries: int = 64
    max_videos: int = 16


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


@dataclass
class InferenceStats:
    """What the model processed and the wall time of batching, forward passes and decoding."""

    queries: int = 0
    videos: int = 0
    batches: int = 0
    seconds: float = 0.0

    @property
    def qps(self) -> float:
        return self.queries / self.seconds if self.seconds > 0 else 0.0

    @property
    def vps(self) -> float:
        return self.videos / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"inference: {self.queries} queries over {self.videos} videos in {self.batches} batches, "
            f"{self.seconds:.3f} s: {self.qps:.1f} queries/s, {self.vps:.1f} videos/s"
        )


@dataclass
class PredictResult:
    """Ranked moments per predicted row, the rows refused, and the inference statistics."""

    queries: list[Query]
    moments: dict[int, list[Moment]] = field(default_factory=dict)
    errors: list[RowError] = field(default_factory=list)
    stats: InferenceStats = field(default_factory=InferenceStats)

    def records(self) -> list[dict[str, Any]]:
        """One JSON-able record per input row, in row order: the prediction, or the row's error."""
        by_row: dict[int, dict[str, Any]] = {e.row: {"row": e.row, "error": e.message} for e in self.errors}
        for q in self.queries:
            if q.row in self.moments:
                by_row[q.row] = prediction_record(q, self.moments[q.row])
        return [by_row[row] for row in sorted(by_row)]


def prediction_record(query: Query, moments: Sequence[Moment]) -> dict[str, Any]:
    """The output record of one predicted query: ids, sentence and ranked moments in seconds with scores."""
    record: dict[str, Any] = {
        "row": query.row,
        "query_id": query.query_id,
        "video_id": query.video_id,
        "sentence": query.sentence,
        "duration": query.duration,
        "moments": moment_dicts(moments),
    }
    if query.truth is not None:
        record["truth"] = list(query.truth)
    return record


def moment_dicts(moments: Sequence[Moment]) -> list[dict[str, float]]:
    """Ranked moments as `{"start", "end", "score"}` (seconds; score = the decoder's probability), best first."""
    return [{"start": s, "end": e, "score": p} for s, e, p in moments]


# ---- parsing rows --------------------------------------------------------------------------------


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


# ---- the predictor -------------------------------------------------------------------------------


class Predictor:
    """A trained model with its sentence length, batch budget and input limits: rows in, ranked moments out.

    `max_words` and `budget` should be the training run's (`data.max_words`, `data.max_queries_per_batch`,
    `data.max_videos_per_batch`): then a video's queries are truncated and batched as in validation.
    """

    def __init__(
        self, model: MKTN, max_words: int = 30, budget: Budget = Budget(), limits: Limits = DEFAULT_LIMITS
    ):
        self.model, self.max_words, self.budget, self.limits = model.eval(), max_words, budget, limits

    def predict(
        self,
        queries: Sequence[Query],
        load: Callable[[str], np.ndarray],
        top_k: int = 5,
        errors: Sequence[RowError] = (),
    ) -> PredictResult:
        """Ground `queries`; `load(video_id)` returns a video's raw features (raising ValueError when it
        cannot). Rows that fail, plus the given `errors`, are reported; every other row is predicted."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        result = PredictResult(list(queries), errors=list(errors))
        groups: list[VideoGroup] = []
        rows: dict[str, list[Query]] = {}
        for video_id, members in _by_video(queries, result.errors).items():
            try:
                groups.append(self._group(video_id, members, load))
                rows[video_id] = members
            except (ValueError, OSError) as exc:  # OSError: the feature store could not be read
                result.errors += [RowError(q.row, str(exc)) for q in members]
        self._infer(groups, rows, top_k, result)
        result.errors.sort(key=lambda e: e.row)
        return result

    def _group(self, video_id: str, queries: list[Query], load: Callable[[str], np.ndarray]) -> VideoGroup:
        """The checked `VideoGroup` of one video; ValueError when its features or size do not fit the model."""
        limits = self.limits
        if len(queries) > limits.max_queries_per_video:
            raise ValueError(
                f"video {video_id!r} has {len(queries)} queries, over the limit "
                f"max_queries_per_video={limits.max_queries_per_video}"
            )
        raw = load(video_id)
        if raw.ndim and raw.shape[0] > limits.max_clips_per_video:  # before any copy of the array
            raise ValueError(
                f"features of video {video_id!r} have {raw.shape[0]} clips, over the limit "
                f"max_clips_per_video={limits.max_clips_per_video}"
            )
        feats = check_features(raw, f"features of video {video_id!r}", self.model.feature_dim)
        tokens = 1 if feats.ndim == 2 else feats.shape[1]
        if tokens != self.model.tokens_per_clip:
            raise ValueError(
                f"features of video {video_id!r} have {tokens} tokens per clip; the model was "
                f"trained on {self.model.tokens_per_clip}"
            )
        duration = queries[0].duration
        annotations = [
            QueryAnnotation(q.query_id, q.sentence, *(q.truth or (0.0, duration)), index=i)
            for i, q in enumerate(queries)
        ]  # the moments only feed collate's training targets, unused at inference
        return VideoGroup(video_id, duration, feats, annotations)

    @torch.inference_mode()
    def _infer(
        self, groups: list[VideoGroup], rows: dict[str, list[Query]], top_k: int, result: PredictResult
    ) -> None:
        model, start = self.model, time.perf_counter()
        for chunk in budget_batches(
            groups, self.budget.max_queries, self.budget.max_videos, oversized="alone"
        ):
            batch = collate(chunk, model.vocab, model.max_clips, self.max_words)
            ranked = model.decode(model(batch, compute_loss=False), batch, top_k=top_k)
            members = [q for g in chunk for q in rows[g.video_id]]
            result.moments.update((q.row, moments) for q, moments in zip(members, ranked))
            result.stats.batches += 1
            result.stats.queries += batch.num_queries
            result.stats.videos += batch.num_videos
        result.stats.seconds = time.perf_counter() - start


def _by_video(queries: Sequence[Query], errors: list[RowError]) -> dict[str, list[Query]]:
    """Queries grouped by video in first-seen order; a repeated query id or a duration that disagrees with
    the video's first row becomes an error of that row."""
    groups: dict[str, list[Query]] = {}
    seen: dict[tuple[str, str], int] = {}
    for q in queries:
        first = groups.get(q.video_id, [q])[0]
        key = (q.video_id, q.query_id)
        if key in seen:
            errors.append(
                RowError(q.row, f"query id {q.query_id!r} of video {q.video_id!r} repeats row {seen[key]}")
            )
        elif q.duration != first.duration:
            errors.append(
                RowError(
                    q.row,
                    f"duration {q.duration} of video {q.video_id!r} disagrees "
                    f"with {first.duration} on row {first.row}",
                )
            )
        else:
            seen[key] = q.row
            groups.setdefault(q.video_id, []).append(q)
    return groups
