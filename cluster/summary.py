"""Console output shared by `mktn train`, `mktn eval` and `mktn demo`: the metrics table and the MLflow UI line."""

from __future__ import annotations

from mktn.metrics import RANKS, THRESHOLDS


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
