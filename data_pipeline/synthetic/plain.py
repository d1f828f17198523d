"""Videos without cross-pair structure (`--structure none`): every query's moment is planted independently.

A video is a timeline of non-overlapping events (object, action, clip span); some events are queried
("person opens the door" -> that event's span in seconds), the others are distractors, often with the
same object and another action or the same action and another object, so a model must read both
words. Queries per video follow the mix's mean (Charades-STA ~2.4, ActivityNet Captions ~3.7, TACoS
~130); in the TACoS mix, as in the real one, several annotators describe the same event with different
phrasings. Query order is shuffled, so the annotation order says nothing.
"""

from __future__ import annotations

import numpy as np

from data_pipeline.synthetic.world import (
    ACTIONS,
    OBJECTS,
    SUBJECTS,
    SUFFIXES,
    MixProfile,
    World,
    place,
    render,
)
from data_pipeline.types import QueryAnnotation, VideoGroup


def plain_video(
    rng: np.random.Generator,
    video_id: str,
    profile: MixProfile,
    mean_q: float,
    clip_range: tuple[int, int],
    world: World,
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
    pairs = pick_pairs(rng, n_queried, len(OBJECTS), len(ACTIONS))
    events = place(rng, pairs, n_queried, n_clips, profile.moment_frac, num_patches)
    features = render(rng, events, n_clips, world, num_patches, noise)

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


def pick_pairs(rng: np.random.Generator, n_queried: int, n_obj: int, n_act: int) -> list[tuple[int, int]]:
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
