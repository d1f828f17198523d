"""Find the model `mktn eval` was pointed at: a run folder, a training checkpoint, a model folder or an MLflow URI.

Each answer also says which MLflow run the model came from (when that is known), so evaluation metrics
land next to the training run's, and the data settings it was trained with.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cluster import checkpoint
from cluster.config import JobConfig
from cluster.export import model_from_checkpoint
from cluster.run_folder import RUN_FILE, RunFolder
from data_pipeline.config import DataConfig
from mktn.export import load_model
from mktn.model import MKTN


@dataclass
class ModelSource:
    """A loaded model and, where known, its MLflow run and training-time data settings."""

    model: MKTN
    tracking_uri: str | None = None
    run_id: str | None = None
    data_cfg: DataConfig | None = None


def open_model(source: str) -> ModelSource:
    """Load the model named by `source` (see the module docstring); a wrong path says what was expected."""
    path = Path(source)
    if path.is_dir() and (path / RUN_FILE).exists():
        folder = RunFolder.read(path)
        if not (path / "model").is_dir():
            raise FileNotFoundError(
                f"{path}: the run has no exported model yet (still training, or stopped early); evaluate one of "
                f"its checkpoints instead: {folder.storage}/train/checkpoint_*"
            )
        return ModelSource(
            load_model(str(path / "model")), folder.tracking_uri, folder.run_id, folder.job.data
        )
    if path.is_dir() and (path / checkpoint.STATE_FILE).exists():
        state = checkpoint.TrainState.read(str(path))
        job = JobConfig.model_validate(checkpoint.read_json(str(path), "job.json"))
        runs = [RunFolder.read(p) for p in path.resolve().parents[:3] if (p / RUN_FILE).exists()]
        uri = runs[0].tracking_uri if runs else None
        return ModelSource(model_from_checkpoint(str(path)), uri, state.run_id, job.data)
    if path.is_dir():
        return ModelSource(load_model(str(path)))
    if ":/" in source:
        return _from_mlflow(source)
    raise FileNotFoundError(
        f"{source}: expected a run folder (with {RUN_FILE}), a training checkpoint (with {checkpoint.STATE_FILE}), "
        "an exported model folder, or an MLflow URI (runs:/RUN_ID/model, models:/NAME@ALIAS)"
    )


def _from_mlflow(uri: str) -> ModelSource:
    """Download an exported model logged to MLflow (`runs:/ID/model`, `models:/NAME@ALIAS`, ...) and load it."""
    import mlflow.artifacts

    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tempfile.mkdtemp(prefix="mktn-model-"),
                                                tracking_uri=tracking_uri)  # fmt: skip
    if Path(
        local, "MLmodel"
    ).exists():  # registered by `mktn register`: its folder is read, none of its code run
        from cluster.pyfunc_model import read_logged_model

        return read_logged_model(local, tracking_uri)
    if Path(local, checkpoint.STATE_FILE).exists():  # a training checkpoint on an object store (s3://.../checkpoint_*)
        return open_model(local)
    run_id = uri.split("/")[1] if uri.startswith("runs:/") else None
    return ModelSource(load_model(local), tracking_uri, run_id)
