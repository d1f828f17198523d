"""A deterministic synthetic TSG dataset with planted, learnable moments.

The world has a fixed vocabulary of objects and actions, each with a fixed random embedding
shared by every video and query (drawn from `world_seed`, so train and val sets generated with
different seeds live in the same world). A video is a timeline of non-overlapping *events*
(object, action, clip span). Inside an event:

- the global token (token 0) of each clip carries `action + 0.5 * object` embeddings,
- one patch token (fixed for the event, like an object staying in place) carries the object,

on top of a per-video scene vector, random clutter objects in patches and Gaussian noise.
With `num_patches=0` features are `(N, D)` and the global token carries both.

Some events are queried ("person opens the door" -> that event's span in seconds); the others
are distractors, often with the same object and another action or the same action and another
object, so a model must read both words. Queries per video follow the mix's mean (Charades-STA
~2.4, ActivityNet Captions ~3.7, TACoS ~130); in the TACoS mix, as in the real one, several
annotators describe the same event with different phrasings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from data_pipeline.types import QueryAnnotation, VideoGroup

QueryMix = Literal["charades", "activitynet", "tacos"]

OBJECTS = (
    "door",
    "window",
    "cup",
    "book",
    "laptop",
    "phone",
    "towel",
    "bag",
    "box",
    "shoe",
    "pillow",
    "blanket",
    "sandwich",
    "bottle",
    "chair",
    "dish",
    "broom",
    "mirror",
    "knife",
    "onion",
    "plate",
    "pan",
    "cucumber",
    "bread",
)
ACTIONS = (
    "opens",
    "closes",
    "holds",
    "picks up",
    "puts down",
    "washes",
    "throws",
    "looks at",
    "cleans",
    "carries",
    "cuts",
    "takes",
)
SUBJECTS = ("person", "a person", "the person", "someone", "the man", "a woman")
SUFFIXES = ("", " slowly", " quickly", " again", " carefully", " in the room")


@dataclass(frozen=True)
class MixProfile:
    """Shape of one dataset style: query count, durations, clip counts and moment lengths."""

    mean_queries: float
    min_queries: int
    duration_s: tuple[float, float]
    num_clips: tuple[int, int]
    moment_frac: tuple[float, float]  # event length as a fraction of the video
    queries_per_event: int  # distinct phrasings per queried event (TACoS: many annotators)


MIXES: dict[str, MixProfile] = {
    "charades": MixProfile(2.4, 1, (15.0, 45.0), (16, 48), (0.12, 0.4), 1),
    "activitynet": MixProfile(3.7, 2, (30.0, 240.0), (32, 96), (0.08, 0.35), 1),
    "tacos": MixProfile(130.0, 30, (60.0, 600.0), (128, 256), (0.015, 0.05), 6),
}


@dataclass(frozen=True)
class _Event:
    obj: int
    act: int
    first: int  # first clip (inclusive)
    last: int  # last clip (inclusive)
    patch: int  # patch token carrying the object


def generate(
    num_videos: int,
    seed: int,
    *,
    query_mix: QueryMix = "charades",
    mean_queries: float | None = None,
    num_clips: tuple[int, int] | None = None,
    feature_dim: int = 64,
    num_patches: int = 4,
    noise: float = 0.5,
    split: str = "train",
    world_seed: int = 0,
) -> list[VideoGroup]:
    """Generate `num_videos` video groups with planted moments, deterministically from `seed`.

    Video `i` depends only on `(seed, i)` and the world, so `generate(10, s)[:5] == generate(5, s)`.
    `mean_queries` and `num_clips` (inclusive range) override the mix's defaults; `noise` is the
    norm of the per-token Gaussian noise relative to a unit-norm evidence vector.
    """
    if query_mix not in MIXES:
        raise ValueError(f"unknown query mix {query_mix!r}; expected one of {sorted(MIXES)}")
    if num_videos < 0 or feature_dim < 1 or num_patches < 0:
        raise ValueError("num_videos >= 0, feature_dim >= 1 and num_patches >= 0 are required")
    profile = MIXES[query_mix]
    mean_q = profile.mean_queries if mean_queries is None else mean_queries
    clips = profile.num_clips if num_clips is None else num_clips
    if mean_q < 1 or not 2 <= clips[0] <= clips[1]:
        raise ValueError(
            f"need mean_queries >= 1 and 2 <= num_clips[0] <= num_clips[1], got {mean_q}, {clips}"
        )
    world = np.random.default_rng([world_seed, feature_dim])
    objects = _unit(world.standard_normal((len(OBJECTS), feature_dim)))
    actions = _unit(world.standard_normal((len(ACTIONS), feature_dim)))
    return [
        _video(
            np.random.default_rng([seed, i]),
            f"syn-{split}-s{seed}-{i:06d}",
            profile,
            mean_q,
            clips,
            objects,
            actions,
            num_patches,
            noise,
            query_mix,
            split,
        )
        for i in range(num_videos)
    ]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _video(
    rng: np.random.Generator,
    video_id: str,
    profile: MixProfile,
    mean_q: float,
    clip_range: tuple[int, int],
    objects: np.ndarray,
    actions: np.ndarray,
    num_patches: int,
    noise: float,
    query_mix: str,
    split: str,
) -> VideoGroup:
    n_clips = int(rng.integers(clip_range[0], clip_range[1] + 1))
    duration = round(float(rng.uniform(*profile.duration_s)), 2)
    n_queries = max(profile.min_queries, 1 + int(rng.poisson(mean_q - 1)))
    n_queried = min(-(-n_queries // profile.queries_per_event), (n_clips + 1) // 2)  # events that fit
    n_queries = min(n_queries, n_queried * profile.queries_per_event)
    pairs = _pick_pairs(rng, n_queried, len(OBJECTS), len(ACTIONS))
    events = _place(rng, pairs, n_queried, n_clips, profile.moment_frac, num_patches)
    features = _render(rng, events, n_clips, objects, actions, num_patches, noise)

    clip_s = duration / n_clips
    queried = events[:n_queried]
    phrasings = [rng.permutation(len(SUBJECTS) * len(SUFFIXES))[: profile.queries_per_event] for _ in queried]
    refs = [(e, int(p)) for e, ps in zip(queried, phrasings) for p in ps][:n_queries]
    queries = []
    for index, k in enumerate(rng.permutation(len(refs))):
        ev, phrasing = refs[k]
        jitter = rng.uniform(-0.2, 0.2, size=2) * clip_s
        start = round(float(np.clip(ev.first * clip_s + jitter[0], 0.0, duration)), 2)
        end = round(float(np.clip((ev.last + 1) * clip_s + jitter[1], start + 0.01, duration)), 2)
        subject, suffix = SUBJECTS[phrasing // len(SUFFIXES)], SUFFIXES[phrasing % len(SUFFIXES)]
        sentence = f"{subject} {ACTIONS[ev.act]} the {OBJECTS[ev.obj]}{suffix}"
        queries.append(QueryAnnotation(f"{video_id}_q{index}", sentence, start, end, index))
    return VideoGroup(
        video_id=video_id,
        duration=duration,
        features=features,
        queries=queries,
        dataset=f"synthetic-{query_mix}",
        split=split,
        meta={"generator": "mktn-synthetic-v1", "n_events": len(events)},
    )


def _pick_pairs(rng: np.random.Generator, n_queried: int, n_obj: int, n_act: int) -> list[tuple[int, int]]:
    """Distinct (object, action) pairs: the queried ones first, then distractors.

    About half the queried events get a distractor with the same object and another action, a
    third one with the same action and another object, plus one unrelated distractor.
    """
    pairs: list[tuple[int, int]] = []
    while len(pairs) < n_queried:
        pair = (int(rng.integers(n_obj)), int(rng.integers(n_act)))
        if pair not in pairs:
            pairs.append(pair)
    distractors: list[tuple[int, int]] = []
    for obj, act in pairs[
        :8
    ]:  # long (TACoS) videos: distractors for the first 8 only, room stays for queries
        if rng.random() < 0.5:
            distractors.append((obj, int(rng.integers(n_act))))
        if rng.random() < 0.33:
            distractors.append((int(rng.integers(n_obj)), act))
    distractors.append((int(rng.integers(n_obj)), int(rng.integers(n_act))))
    return pairs + [d for d in dict.fromkeys(distractors) if d not in pairs]


def _place(
    rng: np.random.Generator,
    pairs: list[tuple[int, int]],
    n_queried: int,
    n_clips: int,
    moment_frac: tuple[float, float],
    num_patches: int,
) -> list[_Event]:
    """Non-overlapping spans (one free clip between neighbours) in random order on the timeline.

    The first `n_queried` pairs always get a span (the longest shrink until they fit); a
    distractor is kept only if it still fits after them. Returned in the order of `pairs`.
    """
    lengths = [max(1, round(float(rng.uniform(*moment_frac)) * n_clips)) for _ in pairs]
    kept = lengths[:n_queried]
    while sum(kept) + len(kept) - 1 > n_clips:
        kept[int(np.argmax(kept))] -= 1
    spans = list(zip(pairs, kept))
    for pair, length in zip(pairs[n_queried:], lengths[n_queried:]):
        if sum(n for _, n in spans) + len(spans) + length <= n_clips:
            spans.append((pair, length))
    free = n_clips - (sum(n for _, n in spans) + len(spans) - 1)
    gaps = np.diff(np.sort(rng.integers(0, free + 1, size=len(spans))), prepend=0)
    events: list[_Event | None] = [None] * len(spans)
    cursor = 0
    for k, gap in zip(rng.permutation(len(spans)), gaps):
        (obj, act), length = spans[k]
        cursor += int(gap)
        patch = int(rng.integers(1, num_patches + 1)) if num_patches else 0
        events[k] = _Event(obj, act, cursor, cursor + length - 1, patch)
        cursor += length + 1
    return events


def _render(
    rng: np.random.Generator,
    events: list[_Event],
    n_clips: int,
    objects: np.ndarray,
    actions: np.ndarray,
    num_patches: int,
    noise: float,
) -> np.ndarray:
    """Clip features `(N, C+1, D)` (or `(N, D)` when C = 0) with every event's evidence planted."""
    dim = objects.shape[1]
    tokens = num_patches + 1
    scene = _unit(rng.standard_normal(dim))
    feats = np.broadcast_to(scene, (n_clips, tokens, dim)).copy()
    feats += rng.standard_normal((n_clips, tokens, dim)) * (noise / np.sqrt(dim))
    if num_patches:
        clutter = rng.random((n_clips, num_patches)) < 0.3
        picks = rng.integers(len(objects), size=(n_clips, num_patches))
        feats[:, 1:] += 0.5 * clutter[..., None] * objects[picks]
    for ev in events:
        span = slice(ev.first, ev.last + 1)
        feats[span, 0] += actions[ev.act] + 0.5 * objects[ev.obj]
        if num_patches:
            feats[span, ev.patch] += objects[ev.obj]
    feats = feats.astype(np.float32)
    return feats[:, 0] if num_patches == 0 else feats
