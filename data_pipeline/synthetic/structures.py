"""Videos with the cross-pair structure the paper credits for its gains (its Table 1 discussion).

Each structure has a single-pair-hard case, something only another pair of the batch disambiguates:

- shared-sentences (Charades-STA: the same sentences recur across videos; easy pairs teach hard ones).
  A video performs activities from its scene's script, so the same sentences, worded alike, recur across
  videos. The object is the salient cue (global token: object 1.0, action 0.5). In training every event
  of a video has its own object, so grounding a pair alone never needs the action; held-out videos add,
  for most queries, a distractor with the same object and another action. What teaches the action is the
  batch's other videos: the same objects in other activities, which the video-level alignments (APA's
  activity-sentence, AVM's video-query) can only tell apart by the action.
- sequences (ActivityNet Captions: a video's queries share nouns and follow each other, "then", "after
  that"). Queries come in temporal order, the events often share one object, every query but the first
  starts with a sequencing word, and one event happens twice with the same sentence for both occurrences
  (never the first event). Alone, the two queries are identical; their order among the video's other
  queries (CSM's temporal and contextual relations) tells which occurrence each one is.
- shared-objects (TACoS: the videos of a kitchen share its objects under different activities). Events
  use the scene's objects; the action is the salient cue (1.0, object 0.5). In training every event of a
  video has its own action; held-out videos add, for most queries, a distractor with the same action on
  another object of the scene. What teaches the objects is the batch's other videos: the same activities
  on other objects, which the object-phrase alignment (OPM) can only tell apart by the object.
- all: each video takes one of the three at random.

Clutter objects in patches come from the video's scene, so what a video shows identifies it among others.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from data_pipeline.synthetic.world import (
    ACTIONS,
    NUM_SCENES,
    OBJECTS,
    SUBJECTS,
    SUFFIXES,
    Event,
    MixProfile,
    World,
    place,
    render,
)
from data_pipeline.types import QueryAnnotation

Structure = Literal["none", "shared-sentences", "sequences", "shared-objects", "all"]
STRUCTURES: tuple[str, ...] = ("none", "shared-sentences", "sequences", "shared-objects", "all")
HARD_SHARE = {
    "train": 0.15,
    "held-out": 0.7,
}  # share of queried events given their structure's hard distractor
SEQUENCE_WORDS = ("then", "after that", "next", "later")
PLACEMENT_TRIES = 20


def structured_video(
    rng: np.random.Generator,
    video_id: str,
    structure: str,
    profile: MixProfile,
    mean_q: float,
    clip_range: tuple[int, int],
    world: World,
    num_patches: int,
    noise: float,
    split: str,
) -> tuple[np.ndarray, float, list[QueryAnnotation], dict]:
    """Features, duration, queries and metadata of one video with `structure` (not "none")."""
    kind = str(rng.choice(STRUCTURES[1:4])) if structure == "all" else structure
    n_clips = int(rng.integers(clip_range[0], clip_range[1] + 1))
    duration = round(float(rng.uniform(*profile.duration_s)), 2)
    n_queries = max(profile.min_queries, 1 + int(rng.poisson(mean_q - 1)))
    scene = int(rng.integers(NUM_SCENES))
    hard = HARD_SHARE["train" if split == "train" else "held-out"]
    builder = {
        "shared-sentences": _shared_sentences,
        "sequences": _sequences,
        "shared-objects": _shared_objects,
    }
    events, refs, weights = builder[kind](rng, profile, n_queries, n_clips, world, scene, num_patches, hard)
    features = render(rng, events, n_clips, world, num_patches, noise, clutter=world.scenes[scene], **weights)
    clip_s = duration / n_clips
    cue = {"shared-sentences": "obj", "shared-objects": "act", "sequences": "both"}[kind]
    queries = []
    for index, (ev, sentence) in enumerate(refs):
        jitter = rng.uniform(-0.2, 0.2, size=2) * clip_s
        start = round(float(np.clip(ev.first * clip_s + jitter[0], 0.0, duration)), 2)
        end = round(float(np.clip((ev.last + 1) * clip_s + jitter[1], start + 0.01, duration)), 2)
        queries.append(QueryAnnotation(f"{video_id}_q{index}", sentence, start, end, index))
    hard_queries = [q.index for q, (ev, _) in zip(queries, refs) if _confusable(ev, events, cue)]
    return (
        features,
        duration,
        queries,
        {"structure": kind, "scene": scene, "n_events": len(events), "hard_queries": hard_queries},
    )


def _confusable(ev: Event, events: list[Event], cue: str) -> bool:
    """Whether another event of the video shares `ev`'s salient cue ("obj", "act", or "both": a twin), so that
    the cue alone does not identify its moment: the structure's single-pair-hard case."""
    same = {"obj": lambda o: o.obj == ev.obj, "act": lambda o: o.act == ev.act}
    match = same.get(cue, lambda o: o.obj == ev.obj and o.act == ev.act)
    return any(match(other) for other in events if other is not ev)


Refs = list[tuple[Event, str]]


def _sentence(act: int, obj: int, subject: str = "person", suffix: str = "") -> str:
    return f"{subject} {ACTIONS[act]} the {OBJECTS[obj]}{suffix}"


def _phrasings(rng: np.random.Generator, profile: MixProfile, ev: Event) -> list[str]:
    """The mix's number of distinct phrasings of an event (TACoS: several annotators)."""
    picks = rng.permutation(len(SUBJECTS) * len(SUFFIXES))[: profile.queries_per_event]
    return [
        _sentence(ev.act, ev.obj, SUBJECTS[p // len(SUFFIXES)], SUFFIXES[p % len(SUFFIXES)]) for p in picks
    ]


def _events_and_queries(
    rng: np.random.Generator,
    profile: MixProfile,
    n_queries: int,
    n_clips: int,
    queried: list[tuple[int, int]],
    distractors: list[tuple[int, int]],
    n_hard: int,
    num_patches: int,
    canonical: bool,
) -> tuple[list[Event], Refs]:
    """Place queried events and distractors (the first `n_hard` of them always); one query per phrasing,
    shuffled (annotation order says nothing)."""
    required = len(queried) + n_hard  # queried events and their hard distractors always get a span
    events = place(rng, queried + distractors, required, n_clips, profile.moment_frac, num_patches)
    refs = [
        (ev, s)
        for ev in events[: len(queried)]
        for s in ([_sentence(ev.act, ev.obj)] if canonical else _phrasings(rng, profile, ev))
    ]
    refs = refs[: max(n_queries, len(queried))]
    return events, [refs[k] for k in rng.permutation(len(refs))]


def _n_events(profile: MixProfile, n_queries: int, n_clips: int, limit: int) -> int:
    return max(1, min(-(-n_queries // profile.queries_per_event), (n_clips + 1) // 2, limit))


def _shared_sentences(
    rng: np.random.Generator,
    profile: MixProfile,
    n_queries: int,
    n_clips: int,
    world: World,
    scene: int,
    num_patches: int,
    hard: float,
) -> tuple[list[Event], Refs, dict[str, float]]:
    script = [(int(o), int(a)) for o, a in world.scripts[scene]]
    queried: list[tuple[int, int]] = []
    for k in rng.permutation(len(script)):  # script activities, each object once
        if script[k][0] not in {o for o, _ in queried}:
            queried.append(script[k])
    queried = queried[: _n_events(profile, n_queries, n_clips, len(queried))]
    distractors = []
    for obj, act in queried:
        if rng.random() < hard:
            distractors.append((obj, int(rng.choice([a for a in range(len(ACTIONS)) if a != act]))))
    n_hard = len(distractors)
    free = [int(o) for o in world.scenes[scene] if int(o) not in {o for o, _ in queried}]
    if free:
        distractors.append((int(rng.choice(free)), int(rng.integers(len(ACTIONS)))))
    events, refs = _events_and_queries(
        rng, profile, n_queries, n_clips, queried, distractors, n_hard, num_patches, True
    )
    return events, refs, {"action_weight": 0.5, "object_weight": 1.0}


def _shared_objects(
    rng: np.random.Generator,
    profile: MixProfile,
    n_queries: int,
    n_clips: int,
    world: World,
    scene: int,
    num_patches: int,
    hard: float,
) -> tuple[list[Event], Refs, dict[str, float]]:
    objects = [int(o) for o in world.scenes[scene]]
    actions = rng.permutation(len(ACTIONS))[: _n_events(profile, n_queries, n_clips, len(ACTIONS))]
    queried = [(int(rng.choice(objects)), int(a)) for a in actions]  # each action once
    distractors = []
    for obj, act in queried:
        if rng.random() < hard:
            distractors.append((int(rng.choice([o for o in objects if o != obj])), act))
    n_hard = len(distractors)
    unused = [a for a in range(len(ACTIONS)) if a not in set(actions.tolist())]
    if unused:
        distractors.append((int(rng.choice(objects)), int(rng.choice(unused))))
    events, refs = _events_and_queries(
        rng, profile, n_queries, n_clips, queried, distractors, n_hard, num_patches, False
    )
    return events, refs, {"action_weight": 1.0, "object_weight": 0.5}


def _sequences(
    rng: np.random.Generator,
    profile: MixProfile,
    n_queries: int,
    n_clips: int,
    world: World,
    scene: int,
    num_patches: int,
    hard: float,
) -> tuple[list[Event], Refs, dict[str, float]]:
    objects = [int(o) for o in world.scenes[scene]]
    shared = int(rng.choice(objects)) if rng.random() < 0.5 else None  # the video's events share one noun
    n_distinct = max(2, min(n_queries - 1, (n_clips + 1) // 2 - 1, len(ACTIONS)))
    actions = rng.permutation(len(ACTIONS))[:n_distinct]
    distinct = [(shared if shared is not None else int(rng.choice(objects)), int(a)) for a in actions]
    twin = int(rng.integers(n_distinct))
    queried = distinct + [distinct[twin]]  # one event happens twice
    for _ in range(PLACEMENT_TRIES):  # the twins are never the first event: both carry a sequencing word
        events = place(rng, queried, len(queried), n_clips, profile.moment_frac, num_patches)
        if min(range(len(queried)), key=lambda k: events[k].first) not in (twin, n_distinct):
            break
    else:  # no placement put another event first: drop the repeat
        queried = distinct
        events = place(rng, queried, len(queried), n_clips, profile.moment_frac, num_patches)
    order = sorted(range(len(queried)), key=lambda k: events[k].first)
    twin_word = str(rng.choice(SEQUENCE_WORDS))
    refs = []
    for rank, k in enumerate(order):
        ev = events[k]
        word = (
            twin_word
            if k in (twin, n_distinct) and len(queried) > n_distinct
            else str(rng.choice(SEQUENCE_WORDS))
        )
        refs.append((ev, _sentence(ev.act, ev.obj) if rank == 0 else f"{word} {_sentence(ev.act, ev.obj)}"))
    return events, refs, {"action_weight": 1.0, "object_weight": 0.5}
