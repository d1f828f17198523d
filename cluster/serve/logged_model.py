"""The layout of an MKTN model logged to MLflow by `mktn register`, and reading one without running its code.

A logged MKTN pyfunc model holds the exported folder (safetensors + JSON) as its artifact `mktn_model`, and as
its model config the data settings of the training run that inference needs (`INFERENCE_SETTINGS`).
"""

from __future__ import annotations

from pathlib import Path

from data_pipeline.config import DataConfig
from mktn.export import load_model
from mktn.model import MKTN

MODEL_ARTIFACT = "mktn_model"  # the exported folder, in the pyfunc model's artifacts
INFERENCE_SETTINGS = ("max_words", "max_queries_per_batch", "max_videos_per_batch")  # of the run's DataConfig


def inference_settings(data: DataConfig) -> dict[str, int]:
    """The data settings a registered model keeps (its MLflow model config): sentence length and batch budget."""
    return data.model_dump(include=set(INFERENCE_SETTINGS))


def read_logged_model(local: str) -> tuple[MKTN, DataConfig, str | None]:
    """The model, data settings and training run id of a downloaded MKTN pyfunc model, without running its code.

    `mlflow.pyfunc.load_model` would run the code file stored with the model; this reads only its `MLmodel`
    (YAML), the exported folder (safetensors + JSON) and the model config, so a tampered artifact store can
    at worst fail to load."""
    from mlflow.models import Model  # imported here: a Predictor of a local model needs no MLflow
    from mlflow.pyfunc import MODEL_CONFIG  # the flavor's key of the model config: "config"

    logged = Model.load(local)
    flavor = logged.flavors.get("python_function", {})
    folder = flavor.get("artifacts", {}).get(MODEL_ARTIFACT, {}).get("path")
    root = Path(local).resolve()
    if not isinstance(folder, str) or not (root / folder).resolve().is_relative_to(root):
        raise ValueError(
            f"{local}: not an MKTN model registered by `mktn register` (no {MODEL_ARTIFACT} artifact "
            "inside the model folder)"
        )
    data = DataConfig.model_validate(flavor.get(MODEL_CONFIG) or {})
    return load_model(str(root / folder)), data, logged.run_id
