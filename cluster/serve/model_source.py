"""Find the model a command was pointed at: a run folder, a training checkpoint, a model folder or an MLflow URI.

Each answer also says which MLflow run the model came from (when that is known), so evaluation metrics
land next to the training run's, and the data settings it was trained with.
"""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fsspec.registry import known_implementations

from cluster.job.config import JobConfig
from cluster.job.run_folder import RUN_FILE, RunFolder
from cluster.job.storage import (
    canonical_url,
    check_reachable,
    download_folder,
    exists,
    filesystem_for,
    is_local,
    join,
)
from cluster.serve.logged_model import read_logged_model
from cluster.tracking.store import using_tracking_uri
from cluster.train import checkpoint
from cluster.train.export import model_from_checkpoint
from data_pipeline.config import DataConfig
from mktn.export import CONFIG, load_model
from mktn.model import MKTN


@dataclass
class ModelSource:
    """A loaded model and, where known, its MLflow run and training-time data settings."""

    model: MKTN
    tracking_uri: str | None = None
    run_id: str | None = None
    data_cfg: DataConfig | None = None


def open_model(source: str, tracking_uri: str | None = None) -> ModelSource:
    """Load the model named by `source` (see the module docstring), a local path or any fsspec URL
    (`s3://bucket/runs/r1`); a wrong path says what was expected. MLflow URIs are resolved in the store at
    `tracking_uri`, else MLFLOW_TRACKING_URI."""
    scheme = re.match(r"([A-Za-z][\w+.-]*):/", source)
    if scheme and scheme.group(1) not in known_implementations:
        return _from_mlflow(source, tracking_uri)  # runs:/..., models:/..., mlflow-artifacts:/...
    url = canonical_url(source)
    check_reachable(url, "model")
    if exists(join(url, RUN_FILE)):
        folder = RunFolder.read(url)
        if not exists(join(url, "model", CONFIG)):
            raise FileNotFoundError(
                f"{url}: the run has no exported model yet (still training, or stopped early); evaluate one of "
                f"its checkpoints instead: {folder.storage}/train/checkpoint_*"
            )
        return ModelSource(
            load_model(join(url, "model")), folder.tracking_uri, folder.run_id, folder.job.data
        )
    if exists(join(url, checkpoint.STATE_FILE)):
        if is_local(url):
            return _from_checkpoint(url, _run_of_checkpoint(url))
        with tempfile.TemporaryDirectory(prefix="mktn-checkpoint-") as local:  # DeepSpeed reads local files
            download_folder(url, local)
            return _from_checkpoint(local, _run_of_checkpoint(url))
    if exists(join(url, CONFIG)):
        return ModelSource(load_model(url))
    if exists(join(url, "MLmodel")):  # a model logged to MLflow, read from its artifact store
        return _from_mlflow(url, tracking_uri)
    raise FileNotFoundError(
        f"{source}: expected a run folder (with {RUN_FILE}), a training checkpoint (with {checkpoint.STATE_FILE}), "
        "an exported model folder, or an MLflow URI (runs:/RUN_ID/model, models:/NAME@ALIAS)"
    )


def _from_checkpoint(directory: str, run: RunFolder | None) -> ModelSource:
    """The model of the training checkpoint in the local `directory`, with its run's tracking URI if known."""
    state = checkpoint.TrainState.read(directory)
    job = JobConfig.model_validate(checkpoint.read_json(directory, "job.json"))
    uri = run.tracking_uri if run else None
    return ModelSource(model_from_checkpoint(directory), uri, state.run_id, job.data)


def _run_of_checkpoint(url: str) -> RunFolder | None:
    """The run folder a checkpoint (`<run>/ray/train/checkpoint_*`) sits in, if it does."""
    fs, path = filesystem_for(url)
    parents = [str(p) for p in PurePosixPath(path).parents[:3] if str(p) != "."]
    return next(
        (RunFolder.read(fs.unstrip_protocol(p)) for p in parents if fs.exists(f"{p}/{RUN_FILE}")), None
    )


def _from_mlflow(uri: str, tracking_uri: str | None) -> ModelSource:
    """Download an exported model logged to MLflow (`runs:/ID/model`, `models:/NAME@ALIAS`, ...) and load it."""
    import mlflow.artifacts

    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    # models:/ URIs resolve in the registry of the fluent API's tracking store, not of `tracking_uri=`
    with using_tracking_uri(tracking_uri) if tracking_uri else nullcontext():
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=tempfile.mkdtemp(prefix="mktn-model-"), tracking_uri=tracking_uri
        )
    if Path(local, "MLmodel").exists():
        # registered by `mktn register`: its folder is read, none of its code run
        model, data, run_id = read_logged_model(local)
        return ModelSource(model, tracking_uri, run_id, data)
    if Path(local, checkpoint.STATE_FILE).exists():
        # a checkpoint logged as an artifact (runs:/ID/checkpoint)
        return open_model(local)
    run_id = uri.split("/")[1] if uri.startswith("runs:/") else None
    return ModelSource(load_model(local), tracking_uri, run_id)
