"""`mktn register`: put a trained model in the MLflow model registry as an `mlflow.pyfunc` model.

The model comes from anything `mktn eval` accepts (a run folder, a training checkpoint, an exported model
folder, `runs:/RUN_ID/model`). It is re-exported (safetensors + JSON, `mktn.export.save_model`) and logged
"from code" (`cluster/serve/pyfunc_entry.py`, see `cluster.serve.pyfunc_model`) into its training run, so the registered
version links back to the run; nothing in it is unpickled at load. The version's tags record what it is:
the validation metrics of the weights registered (the checkpoint's own, or the run's last validation), the
job config, the dataset and its manifest hashes, the git commit it was trained at, and the feature spec.
The alias (default `champion`) moves to the new version, so `models:/NAME@champion` always loads the latest
model promoted under that alias.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ParamSchema, ParamSpec

from cluster.job.run_folder import RunFolder
from cluster.serve.logged_model import INFERENCE_SETTINGS, MODEL_ARTIFACT, inference_settings
from cluster.serve.model_source import ModelSource, open_model
from cluster.tracking.retry import retrying
from cluster.tracking.runs import mlflow_key, open_run
from cluster.tracking.store import use_short_http_retries, using_tracking_uri
from cluster.train import checkpoint
from mktn.export import save_model
from mktn.metrics import METRIC_KEYS

ENTRY_FILE = Path(__file__).with_name("pyfunc_entry.py")
PYFUNC_NAME = "mktn_pyfunc"  # the logged model's name inside its run
REGISTER_EXPERIMENT = "mktn-register"
RUN_TAGS = ("git_commit", "dataset", "manifest_hash", "val_manifest_hash", "world_size", "zero_stage")
INFERENCE_PACKAGES = (
    "mlflow",
    "torch",
    "numpy",
    "pandas",
    "safetensors",
    "pyarrow",
    "fsspec",
    "h5py",
    "pydantic",
    "pyyaml",
    "webdataset",
    "matplotlib",
)
SIGNATURE = ModelSignature(params=ParamSchema([ParamSpec("top_k", "long", 5)]))
PATIENCE_S = 300.0


@dataclass
class Registered:
    """A registered model version and what was recorded with it."""

    name: str
    version: str
    alias: str | None
    run_id: str | None
    tracking_uri: str
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        """The URI that loads this version: by alias when it has one."""
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def register(
    source: str, name: str | None = None, alias: str | None = "champion", tracking_uri: str | None = None
) -> Registered:
    """Register the model at `source` as a new version of `name` (default `mktn-<dataset>`) and point `alias`
    at it. The registry is the store of the model's training run; `tracking_uri` (else MLFLOW_TRACKING_URI)
    is used only when the source does not name one."""
    found = open_model(source, tracking_uri)
    uri = found.tracking_uri or tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:
        raise ValueError(
            f"{source}: no MLflow run is recorded for this model; say which registry to use with "
            "--tracking-uri or MLFLOW_TRACKING_URI"
        )
    use_short_http_retries()
    client = MlflowClient(uri, registry_uri=uri)
    tags = version_tags(client, found, source)
    name = name or f"mktn-{tags.get('dataset', 'model')}"
    with tempfile.TemporaryDirectory(prefix="mktn-register-") as tmp, using_tracking_uri(uri):
        folder = str(Path(tmp) / "model")
        save_model(found.model, folder)
        version = _log_and_register(client, folder, found, name, source)
    for key, value in tags.items():
        retrying(
            client.set_model_version_tag,
            name,
            version,
            key,
            value,
            what=f"tagging {key}",
            patience_s=PATIENCE_S,
        )
    if alias:
        retrying(
            client.set_registered_model_alias,
            name,
            alias,
            version,
            what=f"setting alias {alias}",
            patience_s=PATIENCE_S,
        )
    return Registered(name, version, alias, found.run_id, uri, tags)


def register_trained(folder: RunFolder, name: str | None) -> Registered | None:
    """`mktn train --register NAME` (or the config's `mlflow.register_as`): register the finished run's model as
    NAME with the alias champion; None when neither names a model."""
    name = name or folder.job.mlflow.register_as
    return register(str(folder.path), name) if name else None


def version_tags(client: MlflowClient, found: ModelSource, source: str) -> dict[str, str]:
    """The tags of a new version: metrics, config, dataset/manifest hashes, git commit, feature spec, source."""
    model = found.model
    tags = {
        "source": source,
        "feature_dim": str(model.feature_dim),
        "tokens_per_clip": str(model.tokens_per_clip),
        "max_clips": str(model.max_clips),
        "text_encoder": json.dumps(model.text_encoder.identity(), sort_keys=True),
        "git_commit": "unknown",
    }
    metrics: dict[str, float] = {}
    config: dict[str, Any] = {"model": model.cfg.model_dump(mode="json")}
    if found.run_id:
        run = _training_run(client, found.run_id, source)
        tags |= {"run_id": found.run_id} | {k: run.data.tags[k] for k in RUN_TAGS if k in run.data.tags}
        metrics = {
            k: run.data.metrics[f"val/{mlflow_key(k)}"]
            for k in METRIC_KEYS
            if f"val/{mlflow_key(k)}" in run.data.metrics
        }
        # MLflow logs a pyfunc's model_config into the run as params: an earlier registration's are not config
        config = {k: v for k, v in sorted(run.data.params.items()) if k not in INFERENCE_SETTINGS}
    state_file = Path(source) / checkpoint.STATE_FILE
    if state_file.is_file():  # a checkpoint: its own validation, not the run's last one
        metrics = {k: v for k, v in checkpoint.TrainState.read(source).metrics.items() if k in METRIC_KEYS}
    tags["config"] = json.dumps(config, sort_keys=True)
    tags |= {f"val/{mlflow_key(k)}": repr(v) for k, v in metrics.items()}
    return tags


def _training_run(client: MlflowClient, run_id: str, source: str) -> Any:
    """The model's training run; a store that does not hold it is named (no long retries on a wrong store)."""
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        raise ValueError(
            f"{source}: its training run {run_id} is not in the MLflow store {client.tracking_uri} "
            f"({exc.message}); point --tracking-uri or MLFLOW_TRACKING_URI at the run's store"
        ) from exc


def _log_and_register(client: MlflowClient, folder: str, found: ModelSource, name: str, source: str) -> str:
    """Log the pyfunc model into the training run (or, for a model without one, into a new run of experiment
    `REGISTER_EXPERIMENT`) and register it; returns the new version."""
    kwargs: dict[str, Any] = dict(
        name=PYFUNC_NAME,
        python_model=str(ENTRY_FILE),
        artifacts={MODEL_ARTIFACT: folder},
        model_config=inference_settings(found.data_cfg) if found.data_cfg else None,
        signature=SIGNATURE,
        pip_requirements=_requirements(found),
        registered_model_name=name,
    )
    run_id = found.run_id or open_run(
        client,
        REGISTER_EXPERIMENT,
        tags={"source": source},
        run_name=f"register {name}",
        patience_s=PATIENCE_S,
    )
    # a training run keeps its status (FINISHED, or RUNNING while it still trains); a new one finishes here
    status = client.get_run(run_id).info.status if found.run_id else "FINISHED"
    mlflow.start_run(run_id=run_id)
    try:
        info = mlflow.pyfunc.log_model(**kwargs)
    except BaseException:
        mlflow.end_run(status=status if found.run_id else "FAILED")
        raise
    mlflow.end_run(status=status)
    return str(info.registered_model_version)


def _requirements(found: ModelSource) -> list[str]:
    """Pinned inference dependencies, plus the pretrained text packages the model was trained with."""
    identity = found.model.text_encoder.identity()
    text = [f"{part['package']}=={part['version']}" for part in identity.values() if "package" in part]
    return [f"{pkg}=={metadata.version(pkg)}" for pkg in INFERENCE_PACKAGES] + text
