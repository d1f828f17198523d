"""grounding_metrics against hand-computed cases (Moment-DETR standalone_eval / VSLNet definitions)."""

from __future__ import annotations

import pytest

from mktn.metrics import grounding_metrics, temporal_iou

KEYS = {"R1@0.3", "R1@0.5", "R1@0.7", "R5@0.3", "R5@0.5", "R5@0.7", "mIoU"}


def test_temporal_iou_hand_cases() -> None:
    assert temporal_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert temporal_iou((2, 4), (0, 10)) == pytest.approx(0.2)
    assert temporal_iou((0, 1), (2, 3)) == 0.0  # disjoint
    assert temporal_iou((3, 3), (0, 10)) == 0.0  # zero-length prediction
    assert temporal_iou((3, 3), (3, 3)) == 0.0  # zero union: 0, as Moment-DETR's np.divide(where=union != 0)
    assert temporal_iou((-5, 5), (0, 10)) == pytest.approx(5 / 15)  # out of range scored as given


def test_recall_and_miou_hand_computed() -> None:
    gts = [(0.0, 10.0), (10.0, 20.0), (0.0, 4.0), (5.0, 6.0)]
    preds = [
        [(0.0, 10.0, 0.9)],  # IoU 1
        [(0.0, 12.0, 0.9), (10.0, 19.0, 0.8)],  # top-1 IoU 2/20 = 0.1, second 0.9
        [(0.0, 8.0, 0.9)],  # IoU 0.5 exactly: counts at 0.5 (>=), not at 0.7
        [],  # no prediction: a miss with IoU 0
    ]
    m = grounding_metrics(preds, gts)
    assert set(m) == KEYS
    assert m["R1@0.3"] == pytest.approx(50.0) and m["R1@0.5"] == pytest.approx(50.0)
    assert m["R1@0.7"] == pytest.approx(25.0)
    assert m["R5@0.3"] == pytest.approx(75.0) and m["R5@0.7"] == pytest.approx(50.0)
    assert m["mIoU"] == pytest.approx(100 * (1 + 0.1 + 0.5 + 0) / 4)


def test_threshold_tie_counts_and_order_not_score_decides() -> None:
    # IoU exactly 0.3 and 0.7 are hits (>=), as in VSLNet's calculate_iou_accuracy and Moment-DETR's compute_mr_r1.
    m = grounding_metrics([[(0.0, 3.0, 1.0)], [(0.0, 7.0, 1.0)]], [(0.0, 10.0), (0.0, 10.0)])
    assert m["R1@0.3"] == 100.0 and m["R1@0.7"] == 50.0
    # Equal scores: the list order (the decoder's ranking) decides the top-1; metrics never re-sort.
    tied = [[(0.0, 1.0, 0.5), (0.0, 10.0, 0.5)]]
    assert grounding_metrics(tied, [(0.0, 10.0)])["R1@0.5"] == 0.0
    assert grounding_metrics(tied, [(0.0, 10.0)])["R5@0.5"] == 100.0
    # A higher score later in the list does not move it up either.
    assert grounding_metrics([[(0.0, 1.0, 0.1), (0.0, 10.0, 0.9)]], [(0.0, 10.0)])["R1@0.5"] == 0.0


def test_only_first_five_count_for_r5() -> None:
    far = [(50.0, 60.0, 0.9)] * 5
    assert grounding_metrics([far + [(0.0, 10.0, 0.1)]], [(0.0, 10.0)])["R5@0.3"] == 0.0
    assert grounding_metrics([far[:4] + [(0.0, 10.0, 0.1)]], [(0.0, 10.0)])["R5@0.3"] == 100.0


def test_zero_length_and_out_of_range_predictions() -> None:
    gts = [(0.0, 10.0), (8.0, 10.0)]
    preds = [[(5.0, 5.0, 1.0)], [(8.0, 14.0, 1.0)]]  # zero-length; ends 4 s past a 10 s video
    m = grounding_metrics(preds, gts)
    assert m["R1@0.3"] == 50.0 and m["mIoU"] == pytest.approx(100 * (0 + 2 / 6) / 2)
    clipped = grounding_metrics(preds, gts, durations=[10.0, 10.0])  # clipped to [8, 10]: IoU 1
    assert clipped["R1@0.7"] == 50.0 and clipped["mIoU"] == pytest.approx(50.0)


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="prediction 0 of query 0: start 5.0 is after end 1.0"):
        grounding_metrics([[(5.0, 1.0, 1.0)]], [(0.0, 1.0)])
    with pytest.raises(ValueError, match="2 prediction lists but 1"):
        grounding_metrics([[], []], [(0.0, 1.0)])
    with pytest.raises(ValueError, match="no queries"):
        grounding_metrics([], [])
    with pytest.raises(ValueError, match="finite"):
        grounding_metrics([[(float("nan"), 1.0)]], [(0.0, 1.0)])
    with pytest.raises(ValueError, match="ground truth 0"):
        grounding_metrics([[]], [(3.0, 1.0)])
