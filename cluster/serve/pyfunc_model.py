"""The registered model: an `mlflow.pyfunc` model over an exported MKTN folder (safetensors + JSON).

Nothing is unpickled when it loads. It is logged "from code" (`cluster/serve/pyfunc_entry.py` is stored as the
model's code and run at load; MLflow pickles no Python object), its weights are safetensors and everything
else JSON, read by `mktn.export.load_model`.

Input: a table, one row per query, with the columns
    video_id    the video the sentence is about
    sentence    the query
    duration    the video's length in seconds (moments come back in seconds)
    features    the video's clip features: the path of a local `.npy` file, or the array itself,
                (clips, dim) or (clips, tokens, dim) as the model was trained; needed on at least one row
                of each video, the other rows may leave it empty or repeat it
    query_id, start, end    optional; start/end (the true moment) are passed through
and the parameter `top_k` (default 5). Output: one row per input row, in input order, with `video_id`,
`query_id`, `moments` (a list of {start, end, score}, best first), the top-1 `start`, `end`, `score`, and
`error` (None, or why this row got no prediction: every other row is still predicted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from cluster.serve.logged_model import MODEL_ARTIFACT
from cluster.serve.predictor import Predictor, PredictResult, moment_dicts
from cluster.serve.queries import Limits, Query, RowError, parse_query
from data_pipeline.config import DataConfig
from data_pipeline.features import load_npy
from mktn.export import load_model

OUTPUT_COLUMNS = ("video_id", "query_id", "moments", "start", "end", "score", "error")


class MKTNPyfunc(PythonModel):
    """Grounds a table of (video_id, sentence, duration, features) rows; see the module docstring."""

    predictor: Predictor

    def load_context(self, context: PythonModelContext) -> None:
        """Load the exported folder from the model's artifacts, with the training run's data settings
        (`INFERENCE_SETTINGS`, stored as the model config)."""
        data = DataConfig.model_validate(context.model_config or {})
        self.predictor = Predictor(load_model(context.artifacts[MODEL_ARTIFACT]), data)

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Ranked moments per row; bad rows get an `error` instead (see the module docstring)."""
        top_k = int((params or {}).get("top_k", 5))
        queries, errors, features = parse_table(model_input, self.predictor.limits)
        return result_table(
            self.predictor.predict_queries(queries, features.load, top_k, errors), len(model_input)
        )


@dataclass
class TableFeatures:
    """Each video's features as given in the table: a local `.npy` path or an array."""

    sources: dict[str, Any]

    def load(self, video_id: str) -> np.ndarray:
        """The raw array of `video_id` (checked afterwards by the predictor)."""
        source = self.sources.get(video_id)
        if source is None:
            raise ValueError(f"no row of video {video_id!r} has 'features' (a local .npy path or an array)")
        if isinstance(source, str):
            return _local_npy(source)
        try:
            return np.asarray(source, dtype=None if isinstance(source, np.ndarray) else np.float64)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"'features' of video {video_id!r} is not a numeric array ({exc})") from exc


def _local_npy(path: str) -> np.ndarray:
    """A local `.npy` file (never unpickled). Served models take requests from others: a URL (http, s3, ...)
    would make the server fetch it for them, so other locations must send the array itself."""
    local = path.removeprefix("file://")
    if "://" in local or not local.endswith(".npy"):
        raise ValueError(f"'features' path {path!r} must be a local .npy file; send other features as arrays")
    try:
        with open(local, "rb") as f:
            return load_npy(f.read(), path)
    except OSError as exc:
        raise ValueError(f"'features' path {path!r} cannot be read ({exc.strerror})") from exc


def parse_table(table: pd.DataFrame, limits: Limits) -> tuple[list[Query], list[RowError], TableFeatures]:
    """The queries of `table` (row numbers from 0), the rows refused, and each video's features."""
    queries: list[Query] = []
    errors: list[RowError] = []
    sources: dict[str, Any] = {}
    for row, record in enumerate(table.to_dict(orient="records")):
        record = {k: v for k, v in record.items() if not _missing(v)}
        try:
            query = parse_query(record, row, limits)
            _check_features(sources, query.video_id, record.get("features"))
        except ValueError as exc:
            errors.append(RowError(row, str(exc)))
            continue
        queries.append(query)
    return queries, errors, TableFeatures(sources)


def _check_features(sources: dict[str, Any], video_id: str, given: Any) -> None:
    """Record the first `features` given for `video_id`; a different one on a later row is an error."""
    if given is None:
        return
    if not isinstance(given, str | list | tuple | np.ndarray):
        raise ValueError(f"'features' must be a local .npy path or an array, got {type(given).__name__}")
    first = sources.setdefault(video_id, given)
    same = first == given if isinstance(first, str) or isinstance(given, str) else _same_array(first, given)
    if not same:
        raise ValueError(f"'features' differ from those of an earlier row of video {video_id!r}")


def _same_array(a: Any, b: Any) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except ValueError:  # ragged nested lists: compared as given
        return a == b


def _missing(value: Any) -> bool:
    """An empty cell (None, or the NaN pandas fills in where a column has no value)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def result_table(result: PredictResult, rows: int) -> pd.DataFrame:
    """One output row per input row (see the module docstring)."""
    out: list[dict[str, Any]] = [dict.fromkeys(OUTPUT_COLUMNS) for _ in range(rows)]
    for query in result.queries:
        out[query.row] |= {"video_id": query.video_id, "query_id": query.query_id}
        moments = result.moments.get(query.row)
        if moments is not None:
            top = moments[0] if moments else (None, None, None)
            out[query.row] |= {
                "moments": moment_dicts(moments),
                "start": top[0],
                "end": top[1],
                "score": top[2],
            }
    for error in result.errors:
        out[error.row]["error"] = error.message
    # object columns: a missing value stays None (JSON null when served), not NaN
    return pd.DataFrame(out, columns=list(OUTPUT_COLUMNS), dtype=object)
