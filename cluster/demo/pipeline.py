"""The demo pipeline: synthetic data -> video-grouped shards -> training on 2 Ray workers under ZeRO-2 ->
evaluation on the held-out shards, logged into the training run.

Running it again reuses what is already there: the shards, and the run once it finished (an interrupted run
is resumed from its last checkpoint).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from cluster.job.config import load_config
from cluster.job.run_folder import RUN_FILE, RunFolder
from cluster.job.storage import write_bytes_atomic
from cluster.serve.evaluate import EvalResult, evaluate, log_eval
from cluster.serve.predictor import Predictor
from cluster.train.launcher import TrainOutcome, train
from data_pipeline.prepare import prepare_synthetic

DEFAULTS = Path(__file__).resolve().parents[2] / "configs" / "synthetic.yaml"
SHARD_SIZE_MB = 1.0  # ~14 training shards: enough whole shards to balance over the workers


@dataclass
class DemoOutcome:
    """What the demo produced: the training outcome (None when a finished run was reused), the evaluation,
    where its metrics are, and the MLflow store."""

    trained: TrainOutcome | None
    run_dir: Path
    result: EvalResult
    metrics_file: Path
    tracking_uri: str


def run_demo(output: str) -> DemoOutcome:
    """Prepare (unless already there), train (unless finished; resume when interrupted), evaluate, log."""
    out = Path(output).resolve()
    data, run_dir = out / "data", out / "train"
    if not all((data / split / "dataset.json").exists() for split in ("train", "val")):
        prepare_synthetic(str(data), shard_size_mb=SHARD_SIZE_MB, overwrite=True)
    job = load_config(str(DEFAULTS), [f"data.train={data / 'train'}", f"data.val={data / 'val'}"])
    started = (run_dir / RUN_FILE).exists()
    trained = None
    if not (started and RunFolder.read(run_dir).status == "finished"):
        trained = train(job, str(run_dir), resume=started)
    torch.set_num_threads(1)  # as `mktn eval`: one thread per process
    predictor = Predictor.load(str(run_dir))
    result = evaluate(predictor, str(data / "val"))
    metrics_file = out / "metrics.json"
    write_bytes_atomic(str(metrics_file), json.dumps(result.to_json(), indent=2).encode())
    log_eval(predictor, result, str(data / "val"), str(run_dir))
    return DemoOutcome(trained, run_dir, result, metrics_file, predictor.tracking_uri or "")
