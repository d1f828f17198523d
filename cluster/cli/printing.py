"""What the commands print: the metrics table, where a run is in MLflow, and the outcome of a training
job, a registration and a search."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mktn.metrics import RANKS, THRESHOLDS

if TYPE_CHECKING:
    from cluster.serve.registry import Registered
    from cluster.train.launcher import TrainOutcome
    from cluster.tune.search import SearchOutcome


def metrics_table(metrics: dict[str, float]) -> str:
    """R@1/R@5 at IoU 0.3/0.5/0.7 and mIoU (percent) as a small fixed-width table."""
    header = "        " + "".join(f"IoU={m:<7}" for m in THRESHOLDS)
    rows = [
        f"  R@{n}   " + "".join(f"{metrics.get(f'R{n}@{m}', float('nan')):<11.2f}" for m in THRESHOLDS)
        for n in RANKS
    ]
    return "\n".join([header, *rows, f"  mIoU  {metrics.get('mIoU', float('nan')):.2f}"])


def mlflow_ui_line(tracking_uri: str) -> str:
    """How to look at the run: the `mlflow ui` command for a local store, the server's address otherwise."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def print_training(outcome: TrainOutcome) -> None:
    """The final validation table, throughput, and where the run, model and MLflow data are."""
    folder = outcome.folder
    print(f"\nvalidation after {folder.job.train.epochs} epochs ({folder.job.data.val}):")
    print(metrics_table(outcome.metrics))
    print(
        f"train throughput: {outcome.train_qps:.1f} queries/s, {outcome.train_vps:.1f} videos/s "
        f"({folder.job.cluster.num_workers} workers, ZeRO-{folder.job.deepspeed.zero_stage}); "
        f"wall time {outcome.seconds:.0f} s"
    )
    print(f"model: {outcome.model_dir}\ncheckpoint: {outcome.checkpoint}")
    print(f"MLflow run {folder.run_id}: {mlflow_ui_line(folder.tracking_uri)}")


def print_registered(registered: Registered) -> None:
    """Name, version, alias and the tags recorded, then how to load it."""
    print(
        f"registered {registered.name} version {registered.version}"
        + (f" (alias {registered.alias})" if registered.alias else "")
        + (f" from run {registered.run_id}" if registered.run_id else "")
    )
    for key, value in sorted(registered.tags.items()):
        if key != "config":
            print(f"  {key}: {value}")
    print(
        f"load: mlflow.pyfunc.load_model({registered.uri!r})  (MLFLOW_TRACKING_URI={registered.tracking_uri})"
    )


def print_search(outcome: SearchOutcome) -> None:
    """Every trial's status and metric, the best trial, the files and the MLflow parent run."""
    folder, metric = outcome.folder, outcome.folder.spec.metric
    keys = list(folder.spec.space)
    print(f"\n{len(outcome.rows)} trials, validation {metric} (%):")
    for row in outcome.rows:
        values = ", ".join(f"{k}={row.values.get(k)!r}" for k in keys)
        print(
            f"  {row.trial_id}  {row.status:<8} epochs {row.epochs}  {metric} {row.metrics.get(metric, float('nan')):6.2f}"
            f"  {values}"
        )
    if outcome.best is None:
        print("no trial finished training, so there is no best model")
    else:
        print(
            f"best: trial {outcome.best.trial_id} ({metric} {outcome.best.metrics[metric]:.2f}), "
            f"MLflow run {outcome.best.run_id}, model {folder.trial_dir(outcome.best.trial_id) / 'model'}"
        )
    print(f"results: {', '.join(map(str, outcome.table))}; plot: {outcome.plot}")
    print(f"MLflow parent run {folder.parent_run_id}: {mlflow_ui_line(folder.tracking_uri)}")
    if outcome.registered:
        print_registered(outcome.registered)
