"""`mktn train`: one distributed training job, from config to exported model; the same on a laptop or a cluster.

1. The run folder (a local path or any fsspec URL, see `cluster.job.run_folder`): a new one, or the one `--resume`
   continues (same config, same MLflow run). The run folder, the datasets and the tracking store are
   checked before Ray starts: an unreachable object store or a remote run folder without a tracking
   server fails at once with one line saying what to fix.
2. The datasets' manifests and vocabulary; `preflight` checks the job against the cluster; Ray is started
   locally with this machine's CPUs (and GPUs), or joined at `--address` / `RAY_ADDRESS`
   (`cluster.job.ray_session`).
3. The MLflow run (params, tags) and its metric sink (see `cluster.tracking.metric_sink`).
4. Ray Train's `TorchTrainer` runs `train_worker` on N workers; `FailureConfig(max_failures)` restarts a
   dead worker group from the last checkpoint; Ray keeps the best K checkpoints by the configured metric
   (and always the latest).
5. The final checkpoint is exported as a standalone model; the model and the figures are staged in a local
   temporary folder, logged as artifacts (with the checkpoint) and copied into the run folder; the run is
   closed.
"""

from __future__ import annotations

import hashlib
import posixpath
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import ray
from mlflow.tracking import MlflowClient
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from cluster.job.config import JobConfig
from cluster.job.ray_session import ray_session
from cluster.job.run_folder import RUN_FILE, RunFolder, resumed_config
from cluster.job.storage import (
    canonical_url,
    check_reachable,
    exists,
    join,
    pyarrow_filesystem,
    upload_folder,
)
from cluster.tracking import plots
from cluster.tracking.metric_sink import read_spool, remote_sink
from cluster.tracking.retry import TrackingUnavailable, retrying
from cluster.tracking.runs import open_run
from cluster.tracking.store import HTTP_ENV, tracking_uri, use_short_http_retries
from cluster.train import checkpoint, preflight
from cluster.train.assign import DatasetShards, read_dataset_shards
from cluster.train.export import export_checkpoint
from cluster.train.plan import build_plan
from cluster.train.worker import train_worker
from data_pipeline.shards import read_dataset_info
from data_pipeline.text import Vocab
from mktn.metrics import METRIC_KEYS

RAY_RUN_NAME = "train"


@dataclass
class TrainOutcome:
    """What a finished job produced and where to find it."""

    folder: RunFolder
    metrics: dict[str, float]  # the last validation (percent), as rank 0 reported it
    checkpoint: str  # the final checkpoint's URL
    model_dir: str
    train_qps: float
    train_vps: float
    seconds: float


def train(
    job: JobConfig | None,
    output: str,
    *,
    address: str | None = None,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    tags: dict[str, str] | None = None,
) -> TrainOutcome:
    """Run (or with `resume`, continue) the training job `job` with its run folder at `output`.

    `callbacks` go to the trainer's `RunConfig` and `tags` onto a new MLflow run (`mktn tune` passes
    `TuneReportCallback` and `mlflow.parentRunId`)."""
    started = time.perf_counter()
    url = canonical_url(output)
    check_reachable(url, "--output")
    job = _job_to_run(job, url, resume)
    uri = None if resume else tracking_uri(job, url)  # the resumed run's is in run.json
    _check_stores(job)
    train_data, val_data = read_dataset_shards(job.data.train), read_dataset_shards(job.data.val)
    features = _feature_spec(job)
    vocab_json = Vocab.load(f"{job.data.train.rstrip('/')}/vocab.json").to_json()
    with ray_session(
        address or job.cluster.address,
        lambda offered: preflight.check_job(job, train_data, val_data, offered),
    ):
        use_short_http_retries()
        run_tags = _run_tags(job, train_data, val_data, features) | (tags or {})
        folder, client = _open_run(job, url, uri, run_tags)
        sink = remote_sink(folder.tracking_uri, folder.run_id, folder.spool, HTTP_ENV)
        plan = build_plan(job, url, train_data, val_data, vocab_json, features, folder.run_id, sink)
        result = _fit(_trainer(job, folder, plan, callbacks), folder, client, sink)
        return _finish(client, folder, result, started)


def _job_to_run(job: JobConfig | None, url: str, resume: bool) -> JobConfig:
    """The given config for a new run folder; for `--resume`, the saved one with the resumable changes."""
    if resume:
        job = resumed_config(RunFolder.read(url).job, job)
    elif exists(join(url, RUN_FILE)):
        raise ValueError(
            f"{url} already holds a training run; pass --resume to continue it or choose another --output"
        )
    elif job is None:
        raise ValueError("a config is needed to start a new run")
    if not job.data.train or not job.data.val:
        raise ValueError("data.train and data.val must name prepared datasets (see `mktn prepare`)")
    return job


def _check_stores(job: JobConfig) -> None:
    """Every storage the job reads or writes answers (see `check_reachable`), before anything starts."""
    stores = {
        "data.train": job.data.train,
        "data.val": job.data.val,
        "cluster.storage_path": job.cluster.storage_path,
    }
    for key, location in stores.items():
        if location:
            check_reachable(location, key)


def _open_run(
    job: JobConfig, url: str, uri: str | None, tags: dict[str, str]
) -> tuple[RunFolder, MlflowClient]:
    """A new MLflow run (params, tags) at tracking URI `uri` recorded in a new `run.json`, or (`uri` None) the
    resumed run reopened."""
    patience = job.mlflow.patience_s
    if uri is None:
        folder = RunFolder.read(url)
        folder.job = job
        client = MlflowClient(folder.tracking_uri)
        retrying(
            client.update_run, folder.run_id, status="RUNNING", what="reopening the run", patience_s=patience
        )
    else:
        client = MlflowClient(uri)
        run_id = open_run(
            client,
            job.mlflow.experiment,
            tags=tags,
            params=job.flat(),
            run_name=job.mlflow.run_name,
            output=url,
            patience_s=patience,
        )
        folder = RunFolder(url, job, uri, run_id)
    folder.status = "running"
    folder.write()
    return folder, client


def _fit(trainer: TorchTrainer, folder: RunFolder, client: MlflowClient, sink: Any) -> Any:
    """`trainer.fit()`, then every metric into MLflow; a failed run is closed as FAILED (and stays resumable)."""
    patience = folder.job.mlflow.patience_s
    try:
        result = trainer.fit()
    except Exception:
        ray.get(sink.drain.remote(patience))
        retrying(client.set_terminated, folder.run_id, "FAILED", what="closing the run", patience_s=patience)
        folder.status = "failed"
        folder.write()
        raise
    if ray.get(sink.drain.remote(patience)):
        raise TrackingUnavailable(
            f"MLflow at {folder.tracking_uri} did not take every metric within mlflow.patience_s={patience:g}; "
            f"they are kept in {folder.spool}: run `mktn train --output {folder.path} --resume` to send them"
        )
    return result


def _trainer(job: JobConfig, folder: RunFolder, plan: Any, callbacks: Sequence[Any] = ()) -> TorchTrainer:
    cluster, train = job.cluster, job.train
    resources = {"CPU": cluster.cpus_per_worker} | (
        {"GPU": cluster.gpus_per_worker} if cluster.use_gpu else {}
    )
    storage_fs, storage_path = pyarrow_filesystem(folder.storage)
    return TorchTrainer(
        train_worker,
        train_loop_config={"plan": plan},
        scaling_config=ScalingConfig(
            num_workers=cluster.num_workers, use_gpu=cluster.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=RAY_RUN_NAME,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=cluster.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=train.keep_best,
                checkpoint_score_attribute=train.best_metric,
                checkpoint_score_order="max",
            ),
            worker_runtime_env={"env_vars": {"DS_ACCELERATOR": "cuda" if cluster.use_gpu else "cpu"}},
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=list(callbacks),
        ),
    )


def _finish(client: MlflowClient, folder: RunFolder, result: Any, started: float) -> TrainOutcome:
    """Export the final checkpoint, draw the figures, log the artifacts, copy the model and figures into the
    run folder and close the MLflow run."""
    patience = folder.job.mlflow.patience_s
    records = read_spool(Path(folder.spool) / "metrics.jsonl")
    with tempfile.TemporaryDirectory(prefix="mktn-finish-") as staging:
        with result.checkpoint.as_directory() as directory:
            export_checkpoint(directory, f"{staging}/model")
            predictions = checkpoint.read_json(directory, "val_predictions.json")
            retrying(
                client.log_artifacts,
                folder.run_id,
                directory,
                "checkpoint",
                what="logging the final checkpoint",
                patience_s=patience,
            )
        plots.training_curves(records, f"{staging}/plots/training_curves.png")
        plots.moments_figure(predictions, f"{staging}/plots/val_moments.png")
        for name in ("plots", "model"):
            upload_folder(f"{staging}/{name}", join(folder.path, name))
            retrying(
                client.log_artifacts,
                folder.run_id,
                f"{staging}/{name}",
                name,
                what=f"logging {name}",
                patience_s=patience,
            )
        folder.status = "finished"
        folder.write()
        Path(staging, RUN_FILE).write_bytes(folder.record())
        retrying(
            client.log_artifact,
            folder.run_id,
            f"{staging}/{RUN_FILE}",
            what="logging run.json",
            patience_s=patience,
        )
    retrying(client.set_terminated, folder.run_id, "FINISHED", what="closing the run", patience_s=patience)
    qps = [r["values"]["train/qps"] for r in records if "train/qps" in r["values"]]
    vps = [r["values"]["train/vps"] for r in records if "train/vps" in r["values"]]
    metrics = {k: v for k, v in result.metrics.items() if k in METRIC_KEYS}
    final = join(folder.storage, RAY_RUN_NAME, posixpath.basename(result.checkpoint.path))
    return TrainOutcome(
        folder,
        metrics,
        final,
        join(folder.path, "model"),
        _steady(qps),
        _steady(vps),
        time.perf_counter() - started,
    )


def _steady(values: list[float]) -> float:
    """Median throughput of the logging windows after the first (warm-up) one."""
    return statistics.median(values[1:] or values) if values else 0.0


def _feature_spec(job: JobConfig) -> dict[str, Any]:
    """The training set's feature dim, tokens per clip and name; the validation set must have the same features."""
    train, val = read_dataset_info(job.data.train), read_dataset_info(job.data.val)
    spec = {key: train[key] for key in ("feature_dim", "tokens_per_clip")}
    if {key: val[key] for key in spec} != spec:
        raise ValueError(
            f"data.val ({job.data.val}) has features {[val[k] for k in spec]} "
            f"but data.train has {list(spec.values())} (feature_dim, tokens_per_clip)"
        )
    return spec | {"dataset": train["dataset"]}


def _run_tags(
    job: JobConfig, train: DatasetShards, val: DatasetShards, features: dict[str, Any]
) -> dict[str, str]:
    """What the run is (`open_run` adds the git commit): world size, ZeRO stage, dataset, manifest hashes."""
    return {
        "world_size": str(job.cluster.num_workers),
        "zero_stage": str(job.deepspeed.zero_stage),
        "dataset": str(features["dataset"]),
        "manifest_hash": _manifest_sha256(train.url),
        "val_manifest_hash": _manifest_sha256(val.url),
    }


def _manifest_sha256(dataset_url: str) -> str:
    with fsspec.open(f"{dataset_url.rstrip('/')}/manifest.parquet", "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
