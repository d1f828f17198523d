"""Grounding metrics: R@n, IoU=m for n in {1, 5}, m in {0.3, 0.5, 0.7}, and mIoU, in percent.

Definitions matched (and pinned by tests/test_metrics.py on hand-computed cases):
- Temporal IoU is Moment-DETR's `compute_temporal_iou_batch_paired` (standalone_eval/utils.py), which is
  also VSLNet's `calculate_iou`: intersection = max(0, min(e1, e2) - max(s1, s2)), union = max(e1, e2) -
  min(s1, s2), IoU = intersection / union, and 0 when the union is 0 (two identical zero-length moments).
- R@1, IoU=m is VSLNet's `calculate_iou_accuracy` / Moment-DETR's `compute_mr_r1`: the percentage of
  queries whose top-1 moment has IoU >= m (an IoU exactly at the threshold counts).
- R@5, IoU=m extends the same rule to the first 5 moments (a hit if any has IoU >= m), the usual R@n of
  the field (Gao et al. 2017); a query with fewer than 5 moments is judged on those it has.
- mIoU is VSLNet's: the mean top-1 IoU over queries, times 100.
Ties in score are resolved by the order of the given list (the decoder's ranking); metrics never re-sort.
A query with no predicted moment counts as a miss with IoU 0 (nothing is dropped from the denominator).
Out-of-range moments are scored as given (as both reference evaluators do) unless `durations` are passed,
in which case every moment is first clipped to [0, duration]. Values are not rounded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

THRESHOLDS = (0.3, 0.5, 0.7)
RANKS = (1, 5)
# The names `grounding_metrics` returns, in table order: R1@0.3 ... R5@0.7, then mIoU.
METRIC_KEYS = tuple(f"R{n}@{m}" for n in RANKS for m in THRESHOLDS) + ("mIoU",)


def temporal_iou(pred: tuple[float, float], gt: tuple[float, float]) -> float:
    """IoU of two [start, end] intervals in seconds (Moment-DETR / VSLNet definition)."""
    inter = max(0.0, min(pred[1], gt[1]) - max(pred[0], gt[0]))
    union = max(pred[1], gt[1]) - min(pred[0], gt[0])
    return inter / union if union > 0 else 0.0


def _checked(moment: Sequence[float], where: str) -> tuple[float, float]:
    if len(moment) < 2:
        raise ValueError(f"{where}: expected (start, end[, score]), got {moment!r}")
    start, end = float(moment[0]), float(moment[1])
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ValueError(f"{where}: start and end must be finite, got ({start}, {end})")
    if start > end:
        raise ValueError(f"{where}: start {start} is after end {end}")
    return start, end


def grounding_metrics(
    preds: Sequence[Sequence[Sequence[float]]],
    gts: Sequence[Sequence[float]],
    durations: Sequence[float] | None = None,
) -> dict[str, float]:
    """{'R1@0.3', 'R1@0.5', 'R1@0.7', 'R5@0.3', 'R5@0.5', 'R5@0.7', 'mIoU'} in percent.

    `preds[j]` is query j's ranked list of (start_s, end_s[, score]); `gts[j]` its (start_s, end_s).
    """
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} prediction lists but {len(gts)} ground-truth moments")
    if not gts:
        raise ValueError("no queries to evaluate")
    if durations is not None and len(durations) != len(gts):
        raise ValueError(f"{len(durations)} durations but {len(gts)} ground-truth moments")
    hits = {(n, m): 0 for n in RANKS for m in THRESHOLDS}
    iou_sum = 0.0
    for j, (ranked, gt) in enumerate(zip(preds, gts)):
        gt_moment = _checked(gt, f"ground truth {j}")
        moments = [_checked(p, f"prediction {k} of query {j}") for k, p in enumerate(ranked[: max(RANKS)])]
        if durations is not None:
            moments = [(min(max(s, 0.0), durations[j]), min(max(e, 0.0), durations[j])) for s, e in moments]
        ious = [temporal_iou(p, gt_moment) for p in moments]
        iou_sum += ious[0] if ious else 0.0
        for n, m in hits:
            hits[(n, m)] += any(iou >= m for iou in ious[:n])
    result = {f"R{n}@{m}": 100.0 * count / len(gts) for (n, m), count in hits.items()}
    result["mIoU"] = 100.0 * iou_sum / len(gts)
    return result
