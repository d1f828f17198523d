"""The shard sample of one video group: `<key>.npy` (features) + `<key>.json` (queries and metadata).

Keys are the video id with every character outside `[A-Za-z0-9_-]` replaced by `_` (WebDataset
splits keys at dots); the original id travels in the JSON. Decoding is strict: exactly those
two members, a JSON matching the schema, a plain numeric `.npy` (never unpickled).
"""

from __future__ import annotations

import io
import json
import re
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from data_pipeline.errors import DataError
from data_pipeline.features import check_features, load_npy
from data_pipeline.ranges import check_duration, check_moment
from data_pipeline.types import QueryAnnotation, VideoGroup

SAMPLE_FORMAT = "mktn-video-v1"
KEY = re.compile(r"^[A-Za-z0-9_-]+$")
MEMBERS = {"npy", "json"}


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    query_id: str
    sentence: str
    start: float
    end: float
    index: int


class _Video(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    format: Literal["mktn-video-v1"]
    video_id: str
    duration: float
    dataset: str
    split: str
    meta: dict[str, Any]
    queries: list[_Query]


def sample_key(video_id: str) -> str:
    """The WebDataset key of a video: its id with characters outside `[A-Za-z0-9_-]` replaced by `_`."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", video_id) or "_"


def encode_sample(group: VideoGroup, key: str) -> dict[str, Any]:
    """The tar members of `group` under `key` (bytes, written as-is by the shard writer)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(group.features, dtype=np.float32), allow_pickle=False)
    doc = {
        "format": SAMPLE_FORMAT,
        "video_id": group.video_id,
        "duration": group.duration,
        "dataset": group.dataset,
        "split": group.split,
        "meta": group.meta,
        "queries": [
            {"query_id": q.query_id, "sentence": q.sentence, "start": q.start, "end": q.end, "index": q.index}
            for q in group.queries
        ],
    }
    return {"__key__": key, "npy": buf.getvalue(), "json": json.dumps(doc, allow_nan=False).encode("utf-8")}


def decode_sample(sample: dict[str, Any], feature_shape: tuple[int, int] | None = None) -> VideoGroup:
    """A `VideoGroup` from a raw WebDataset sample (`__key__`, `__url__`, `npy`, `json` bytes).

    Raises `DataError` naming the shard and key for any deviation from the schema, and for features other
    than `feature_shape` (tokens per clip, dim: the dataset's) when given; times are checked in float32.
    """
    key, url = sample.get("__key__"), sample.get("__url__", "<shard>")
    where = f"{url} [{key}]"
    if not isinstance(key, str) or not KEY.match(key):
        raise DataError(f"{where}: sample key must match {KEY.pattern} (no paths, no dots)")
    members = {k for k in sample if not k.startswith("__")}
    if members != MEMBERS:
        raise DataError(f"{where}: members {sorted(members)}, expected exactly {sorted(MEMBERS)}")
    try:
        doc = _Video.model_validate_json(sample["json"])
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        raise DataError(f"{where}: JSON does not match the sample schema ({problems})") from exc
    features = check_features(load_npy(sample["npy"], f"{where}.npy"), f"{where}.npy")
    shape = (1 if features.ndim == 2 else features.shape[1], features.shape[-1])
    if feature_shape is not None and shape != tuple(feature_shape):
        raise DataError(
            f"{where}: video {doc.video_id!r} has features of {shape[0]} tokens x {shape[1]} dims per clip; "
            f"its dataset's are {feature_shape[0]} x {feature_shape[1]} (dataset.json)"
        )
    check_duration(doc.duration, where)
    if not doc.queries:
        raise DataError(f"{where}: expected at least one query")
    for q in doc.queries:
        check_moment(q.start, q.end, doc.duration, f"{where} query {q.query_id!r}")
    return VideoGroup(
        video_id=doc.video_id,
        duration=doc.duration,
        features=features,
        queries=[QueryAnnotation(q.query_id, q.sentence, q.start, q.end, q.index) for q in doc.queries],
        dataset=doc.dataset,
        split=doc.split,
        meta=doc.meta,
    )
