"""The synthetic world every generated video lives in: vocabulary, dataset-style mixes, event placement, rendering.

The world has a fixed vocabulary of objects and actions, each with a fixed random embedding shared by
every video and query (drawn from `world_seed`, so train and val sets generated with different seeds
live in the same world), and a fixed set of scenes (rooms, kitchens): each scene holds a few objects,
and for the shared-sentences structure a script of activities its videos perform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
NUM_SCENES, SCENE_OBJECTS, SCRIPT_ACTIONS = 8, 6, 2


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
class Event:
    obj: int
    act: int
    first: int  # first clip (inclusive)
    last: int  # last clip (inclusive)
    patch: int  # patch token carrying the object


@dataclass(frozen=True)
class World:
    """Unit embeddings of every object and action, and the scenes: object ids (NUM_SCENES, SCENE_OBJECTS) and
    scripts, the actions (NUM_SCENES, SCENE_OBJECTS, SCRIPT_ACTIONS) its videos perform on each of its objects."""

    objects: np.ndarray
    actions: np.ndarray
    scenes: np.ndarray
    scripts: np.ndarray

    @classmethod
    def make(cls, world_seed: int, feature_dim: int) -> World:
        rng = np.random.default_rng([world_seed, feature_dim])
        objects = unit(rng.standard_normal((len(OBJECTS), feature_dim)))
        actions = unit(rng.standard_normal((len(ACTIONS), feature_dim)))
        scene_rng = np.random.default_rng([world_seed, 7])  # scenes do not depend on the feature width
        scenes = np.stack([scene_rng.permutation(len(OBJECTS))[:SCENE_OBJECTS] for _ in range(NUM_SCENES)])
        scripts = np.stack(
            [
                np.stack([scene_rng.permutation(len(ACTIONS))[:SCRIPT_ACTIONS] for _ in range(SCENE_OBJECTS)])
                for _ in range(NUM_SCENES)
            ]
        )
        return cls(objects, actions, scenes, scripts)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def place(
    rng: np.random.Generator,
    pairs: list[tuple[int, int]],
    n_required: int,
    n_clips: int,
    moment_frac: tuple[float, float],
    num_patches: int,
) -> list[Event]:
    """Non-overlapping spans (one free clip between neighbours) in random order on the timeline.

    The first `n_required` pairs (the queried events, at least) always get a span (the longest shrink until
    they fit); any other is kept only if it still fits after them. Returned in the order of `pairs`.
    """
    lengths = [max(1, round(float(rng.uniform(*moment_frac)) * n_clips)) for _ in pairs]
    kept = lengths[:n_required]
    while sum(kept) + len(kept) - 1 > n_clips:
        kept[int(np.argmax(kept))] -= 1
    spans = list(zip(pairs, kept))
    for pair, length in zip(pairs[n_required:], lengths[n_required:]):
        if sum(n for _, n in spans) + len(spans) + length <= n_clips:
            spans.append((pair, length))
    free = n_clips - (sum(n for _, n in spans) + len(spans) - 1)
    gaps = np.diff(np.sort(rng.integers(0, free + 1, size=len(spans))), prepend=0)
    events: list[Event | None] = [None] * len(spans)
    cursor = 0
    for k, gap in zip(rng.permutation(len(spans)), gaps):
        (obj, act), length = spans[k]
        cursor += int(gap)
        patch = int(rng.integers(1, num_patches + 1)) if num_patches else 0
        events[k] = Event(obj, act, cursor, cursor + length - 1, patch)
        cursor += length + 1
    return events  # type: ignore[return-value]


def render(
    rng: np.random.Generator,
    events: list[Event],
    n_clips: int,
    world: World,
    num_patches: int,
    noise: float,
    *,
    clutter: np.ndarray | None = None,
    action_weight: float = 1.0,
    object_weight: float = 0.5,
) -> np.ndarray:
    """Clip features `(N, C+1, D)` (or `(N, D)` when C = 0) with every event's evidence planted.

    Inside an event the global token (token 0) carries `action_weight * action + object_weight * object`
    and one patch token (fixed for the event, like an object staying in place) the object, on top of a
    per-video background vector, clutter objects in patches (any object, or the ids in `clutter`: the
    scene's) and Gaussian noise of norm `noise`.
    """
    dim = world.objects.shape[1]
    tokens = num_patches + 1
    background = unit(rng.standard_normal(dim))
    feats = np.broadcast_to(background, (n_clips, tokens, dim)).copy()
    feats += rng.standard_normal((n_clips, tokens, dim)) * (noise / np.sqrt(dim))
    if num_patches:
        shown = rng.random((n_clips, num_patches)) < 0.3
        if clutter is None:
            picks = rng.integers(len(world.objects), size=(n_clips, num_patches))
        else:
            picks = clutter[rng.integers(len(clutter), size=(n_clips, num_patches))]
        feats[:, 1:] += 0.5 * shown[..., None] * world.objects[picks]
    for ev in events:
        span = slice(ev.first, ev.last + 1)
        feats[span, 0] += action_weight * world.actions[ev.act] + object_weight * world.objects[ev.obj]
        if num_patches:
            feats[span, ev.patch] += world.objects[ev.obj]
    feats = feats.astype(np.float32)
    return feats[:, 0] if num_patches == 0 else feats
