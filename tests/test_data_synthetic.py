"""The synthetic generator: deterministic, well-formed, and matching each mix's query counts."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipeline.synthetic import ACTIONS, OBJECTS, generate


def test_deterministic_and_prefix_stable() -> None:
    a, b = generate(12, seed=3), generate(12, seed=3)
    for x, y in zip(a, b):
        assert x.video_id == y.video_id and x.queries == y.queries
        np.testing.assert_array_equal(x.features, y.features)
    for x, y in zip(generate(5, seed=3), a):
        assert x.queries == y.queries
        np.testing.assert_array_equal(x.features, y.features)
    assert generate(1, seed=4)[0].queries != a[0].queries


@pytest.mark.parametrize("patches", [4, 0])
def test_shapes_and_ground_truth(patches: int) -> None:
    groups = generate(40, seed=0, feature_dim=32, num_patches=patches, num_clips=(10, 20), split="val")
    for g in groups:
        expected = (g.num_clips, patches + 1, 32) if patches else (g.num_clips, 32)
        assert g.features.shape == expected and g.features.dtype == np.float32
        assert 10 <= g.num_clips <= 20 and g.split == "val"
        assert np.isfinite(g.features).all()
        assert [q.index for q in g.queries] == list(range(g.num_queries))
        assert len({q.query_id for q in g.queries}) == g.num_queries
        for q in g.queries:
            assert 0 <= q.start < q.end <= g.duration
            words = q.sentence.split()
            assert any(a in q.sentence for a in ACTIONS) and any(o in words for o in OBJECTS)
    assert len({g.video_id for g in groups}) == 40


@pytest.mark.parametrize(
    ("mix", "videos", "low", "high"),
    [("charades", 400, 2.2, 2.6), ("activitynet", 300, 3.4, 4.0), ("tacos", 20, 110, 150)],
)
def test_queries_per_video_match_mix(mix: str, videos: int, low: float, high: float) -> None:
    groups = generate(videos, seed=1, query_mix=mix)
    assert low <= np.mean([g.num_queries for g in groups]) <= high
    assert all(g.dataset == f"synthetic-{mix}" for g in groups)


def test_configurable_mean_and_evidence_planted() -> None:
    groups = generate(30, seed=2, query_mix="tacos", mean_queries=40)
    assert 32 <= np.mean([g.num_queries for g in groups]) <= 48
    # Inside a moment the global token is far from the video's background (scene + noise).
    g = generate(1, seed=5, noise=0.0, num_patches=0)[0]
    q = g.queries[0]
    clip_s = g.duration / g.num_clips
    inside = g.features[int(round(q.start / clip_s)) : int(round(q.end / clip_s))]
    background = np.median(g.features, axis=0)
    assert np.linalg.norm(inside - background, axis=-1).min() > 0.5


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown query mix"):
        generate(1, 0, query_mix="youcook")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_clips"):
        generate(1, 0, num_clips=(1, 4))
