"""`Predictor`: the Python API of a trained model. Load it from anything `mktn predict` takes, give it a
video's features and sentences, get ranked moments in seconds.

    from mktn import Predictor           # (re-exported lazily from here, see mktn/__init__.py)
    predictor = Predictor.load("models:/mktn-charades@champion")   # or a run folder, checkpoint, ...
    moments = predictor.predict("features/v1.npy", ["person opens the door"], duration=30.0)

Multi-pair inference, one encoding per video: `predict_queries` (the path `mktn predict` and the pyfunc
model take) groups rows by video, loads and checks each video's features once, and packs whole video groups
into batches under a query and a video budget, so a video is encoded once however many queries it has
(paper Table 2, VPS) and CSM sees all of a video's queries together, as in training; `ground` is the one
forward pass and decoding of a batch, which `evaluate` uses on prepared shards too. A row whose video cannot
be read, or whose features do not fit the model (wrong dim or tokens, NaN/inf, over the size limits),
becomes a `RowError` naming its row; every other row is predicted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import torch

from cluster.serve.model_source import open_model
from cluster.serve.queries import DEFAULT_LIMITS, Limits, Query, RowError, parse_query
from data_pipeline.batch import Batch, budget_batches, collate
from data_pipeline.config import DataConfig
from data_pipeline.features import check_features, load_npy
from data_pipeline.types import QueryAnnotation, VideoGroup
from mktn.decode import Moment
from mktn.metrics import grounding_metrics
from mktn.model import MKTN


@dataclass(frozen=True)
class Budget:
    """Whole video groups per batch: at most `max_videos` videos and `max_queries` queries (a single video
    with more queries gets a batch of its own: a video's queries are never split)."""

    max_queries: int = 64
    max_videos: int = 16


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

    def metrics(self) -> dict[str, float] | None:
        """R@n IoU=m and mIoU (percent) of the predicted rows when every one came with its true moment."""
        scored = [q for q in self.queries if q.row in self.moments]
        if not scored or any(q.truth is None for q in scored):
            return None
        return grounding_metrics([self.moments[q.row] for q in scored], [q.truth for q in scored])


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


class Predictor:
    """A trained model ready to ground sentences, with the data settings of its training run.

    `data` is the training run's `DataConfig` (where known; else the defaults): sentences are truncated to its
    `max_words` and videos batched under its query and video budgets (`budget`, which a caller may replace),
    as in validation. `limits` bounds what one request may ask. `run_id` and `tracking_uri` name the MLflow
    run the model came from, where known (`mktn eval` logs its metrics there).
    """

    def __init__(
        self,
        model: MKTN,
        data: DataConfig | None = None,
        limits: Limits = DEFAULT_LIMITS,
        run_id: str | None = None,
        tracking_uri: str | None = None,
    ):
        self.model, self.data, self.limits = model.eval(), data or DataConfig(), limits
        self.budget = Budget(self.data.max_queries_per_batch, self.data.max_videos_per_batch)
        self.run_id, self.tracking_uri = run_id, tracking_uri

    @classmethod
    def load(cls, source: str, limits: Limits = DEFAULT_LIMITS, tracking_uri: str | None = None) -> Predictor:
        """The model at `source`: a registered model (`models:/NAME@ALIAS`, `models:/NAME/VERSION`), a run folder
        (`mktn train --output`), a training checkpoint, an exported model folder, or `runs:/RUN_ID/model`; local
        paths or any fsspec URL. MLflow URIs use `tracking_uri`, else MLFLOW_TRACKING_URI."""
        found = open_model(source, tracking_uri)
        return cls(found.model, found.data_cfg, limits, found.run_id, found.tracking_uri)

    def predict(
        self,
        features: np.ndarray | str | os.PathLike[str],
        sentences: Sequence[str],
        duration: float,
        top_k: int = 5,
    ) -> list[list[Moment]]:
        """Ranked moments `(start_s, end_s, score)`, best first, for each sentence about one video.

        `features` are the video's clip features as the model was trained on them, `(clips, dim)` or
        `(clips, tokens, dim)`: an array, or the path/URL of a `.npy` file (never unpickled); `duration` is the
        video's length in seconds. All sentences are grounded together (the video is encoded once). A bad
        input raises ValueError naming it (and which sentences, by position)."""
        queries = self._one_video(sentences, duration)
        path = features if isinstance(features, str | os.PathLike) else None
        array = np.asarray(features) if path is None else _read_npy(os.fspath(path))
        result = self.predict_queries(queries, lambda _: array, top_k)
        if result.errors:
            raise ValueError(result.errors[0].message)
        return [result.moments[q.row] for q in queries]

    def predict_queries(
        self,
        queries: Sequence[Query],
        load: Callable[[str], np.ndarray],
        top_k: int = 5,
        errors: Sequence[RowError] = (),
    ) -> PredictResult:
        """Ground `queries` of any number of videos; `load(video_id)` returns a video's raw features (raising
        ValueError when it cannot). Rows that fail, plus the given `errors`, are reported; every other row is
        predicted."""
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

    @torch.inference_mode()
    def ground(self, batch: Batch, top_k: int = 5) -> list[list[Moment]]:
        """Ranked moments of every query of a collated batch: one forward pass on the model's device, decoded."""
        batch = batch.to(next(self.model.parameters()).device)
        return self.model.decode(self.model(batch, compute_loss=False), batch, top_k=top_k)

    def _one_video(self, sentences: Sequence[str], duration: float) -> list[Query]:
        """One query per sentence about one video; ValueError naming every problem and where it is."""
        if isinstance(sentences, str):
            raise ValueError("sentences must be a list of strings, got one string")
        queries, problems = [], {}
        for i, sentence in enumerate(sentences):
            row = {"video_id": "video", "sentence": sentence, "duration": duration}
            try:
                queries.append(parse_query(row, i, self.limits))
            except ValueError as exc:
                problems.setdefault(str(exc), []).append(i)
        if problems:
            raise ValueError(
                "; ".join(f"sentences at positions {at}: {what}" for what, at in problems.items())
            )
        if not queries:
            raise ValueError("no sentences given")
        return queries

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

    def _infer(
        self, groups: list[VideoGroup], rows: dict[str, list[Query]], top_k: int, result: PredictResult
    ) -> None:
        model, start = self.model, time.perf_counter()
        for chunk in budget_batches(
            groups, self.budget.max_queries, self.budget.max_videos, oversized="alone"
        ):
            batch = collate(chunk, model.vocab, model.max_clips, self.data.max_words)
            ranked = self.ground(batch, top_k)
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


def _read_npy(path: str) -> np.ndarray:
    """The array of the `.npy` file at `path` (any fsspec URL), never unpickled."""
    try:
        with fsspec.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: features file not found") from exc
    return load_npy(data, path)
