"""Videos with the cross-pair structure the paper credits for its gains (its Table 1 discussion).

Each structure copies a measured property of the real dataset (docs/MKTN.md, "Synthetic structures") and
has a single-pair-hard case: a query that, alone, fits two events of its video, while another query of
the same batch tells which one it is.

- shared-sentences (Charades-STA: 46% of its sentences recur in other videos, and 53% of its queries have
  another query of their video on the same moment, IoU >= 0.7). A video performs activities of its
  scene's script, so the same sentences recur across videos. Some queried events are described twice:
  a specific sentence ("person opens the door") and a vague one ("person is using the door"), and the
  video also shows another activity with the same object. Alone, the vague query fits both events; its
  specific partner names the activity (CSM's contextual relation).
- sequences (ActivityNet Captions: 97.5% of its videos list their queries in temporal order; its queries
  share nouns and use sequencing words). Queries come in temporal order, the events often share one
  object, every query but the first starts with a sequencing word, and one event happens twice with the
  same sentence for both occurrences (never the first event). Alone, the two queries are identical;
  their order among the video's other queries (CSM's temporal and contextual relations) tells which
  occurrence each one is.
- shared-objects (TACoS: the videos of a kitchen share its objects under different activities; 93% of
  its queries have a same-moment partner, several annotators per event; 11% use a pronoun). Events use
  the scene's objects; each queried event is described by the mix's number of annotators, and for some
  events one description elides the object ("person cuts it") while the video shows the same activity on
  another object. Alone, the elliptic query fits both events; the other descriptions name the object.
- all: each video takes one of the three at random.

Clutter objects in patches come from the video's scene, so what a video shows identifies it among others
and videos of one scene share objects (and, through the scripts, sentences): work for the cross-video
modules (AVM, OPM, APA). The hard cases occur alike in every split. `meta["hard_queries"]` lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from data_pipeline.synthetic.world import (
    ACTIONS,
    NUM_SCENES,
    OBJECTS,
    SCENE_OBJECTS,
    SUBJECTS,
    Event,
    MixProfile,
    World,
    place,
    render,
)
from data_pipeline.types import QueryAnnotation

Structure = Literal["none", "shared-sentences", "sequences", "shared-objects", "all"]
STRUCTURES: tuple[str, ...] = ("none", "shared-sentences", "sequences", "shared-objects", "all")
HARD_SHARE = 0.6  # share of queried events given their structure's hard case (where the video has room)
SEQUENCE_WORDS = ("then", "after that", "next", "later")
VAGUE = ("person is using the {obj}", "person does something with the {obj}", "someone handles the {obj}")
PLACEMENT_TRIES = 20

# One query: its event, its sentence, and whether it is the structure's single-pair-hard case.
Query = tuple[Event, str, bool]
Builder = Callable[..., tuple[list[Event], list[Query]]]


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
) -> tuple[np.ndarray, float, list[QueryAnnotation], dict]:
    """Features, duration, queries and metadata of one video with `structure` (not "none")."""
    kind = str(rng.choice(STRUCTURES[1:4])) if structure == "all" else structure
    n_clips = int(rng.integers(clip_range[0], clip_range[1] + 1))
    duration = round(float(rng.uniform(*profile.duration_s)), 2)
    n_queries = max(profile.min_queries, 1 + int(rng.poisson(mean_q - 1)))
    scene = int(rng.integers(NUM_SCENES))
    builders: dict[str, Builder] = {
        "shared-sentences": _shared_sentences,
        "sequences": _sequences,
        "shared-objects": _shared_objects,
    }
    events, refs = builders[kind](rng, profile, n_queries, n_clips, world, scene, num_patches)
    features = render(
        rng, events, n_clips, world, num_patches, noise, clutter=world.scenes[scene], object_weight=1.0
    )
    clip_s = duration / n_clips
    queries = []
    for index, (ev, sentence, _) in enumerate(refs):
        jitter = rng.uniform(-0.2, 0.2, size=2) * clip_s
        start = round(float(np.clip(ev.first * clip_s + jitter[0], 0.0, duration)), 2)
        end = round(float(np.clip((ev.last + 1) * clip_s + jitter[1], start + 0.01, duration)), 2)
        queries.append(QueryAnnotation(f"{video_id}_q{index}", sentence, start, end, index))
    meta = {
        "structure": kind,
        "scene": scene,
        "n_events": len(events),
        "hard_queries": [i for i, (_, _, hard) in enumerate(refs) if hard],
    }
    return features, duration, queries, meta


def _sentence(act: int, obj: int, subject: str = "person", suffix: str = "") -> str:
    return f"{subject} {ACTIONS[act]} the {OBJECTS[obj]}{suffix}"


def _phrasing(rng: np.random.Generator, act: int, obj: int) -> str:
    """One annotator's description: the same event, a random subject."""
    return _sentence(act, obj, str(rng.choice(SUBJECTS)))


def _elliptic(act: int) -> str:
    """The description with its object elided: "person cuts it", "person picks it up"."""
    verb, _, particle = ACTIONS[act].partition(" ")
    return f"person {verb} it {particle}".rstrip()


def _n_events(profile: MixProfile, n_queries: int, n_clips: int, limit: int) -> int:
    return max(1, min(-(-n_queries // profile.queries_per_event), (n_clips + 1) // 3, limit))


def _shuffled(rng: np.random.Generator, refs: list[Query]) -> list[Query]:
    """Annotation order says nothing about time (Charades-STA: 48% of multi-query videos are in order)."""
    return [refs[k] for k in rng.permutation(len(refs))]


def _shared_sentences(
    rng: np.random.Generator,
    profile: MixProfile,
    n_queries: int,
    n_clips: int,
    world: World,
    scene: int,
    num_patches: int,
) -> tuple[list[Event], list[Query]]:
    slots = rng.permutation(len(world.scenes[scene]))[: _n_events(profile, n_queries, n_clips, SCENE_OBJECTS)]
    queried, distractors = [], []
    for slot in slots:  # each object once, in one of its script activities
        obj, (act, other) = int(world.scenes[scene][slot]), rng.permutation(world.scripts[scene][slot])
        queried.append((obj, int(act)))
        distractors.append((obj, int(other)))  # its other script activity: the vague sentence fits it too
    vague = [rng.random() < HARD_SHARE for _ in queried]
    distractors = [d for d, v in zip(distractors, vague) if v]
    events = place(
        rng, queried + distractors, len(queried) + len(distractors), n_clips, profile.moment_frac, num_patches
    )
    refs: list[Query] = []
    for ev, v in zip(events, vague):
        refs.append((ev, _sentence(ev.act, ev.obj), False))
        if v:
            refs.append((ev, str(rng.choice(VAGUE)).format(obj=OBJECTS[ev.obj]), True))
    return events, _shuffled(rng, refs)


def _shared_objects(
    rng: np.random.Generator,
    profile: MixProfile,
    n_queries: int,
    n_clips: int,
    world: World,
    scene: int,
    num_patches: int,
) -> tuple[list[Event], list[Query]]:
    objects = [int(o) for o in world.scenes[scene]]
    annotators = max(2, profile.queries_per_event)
    n_events = _n_events(
        profile, -(-n_queries * profile.queries_per_event // annotators), n_clips, len(objects)
    )
    actions = rng.permutation(len(ACTIONS))[:n_events]
    queried = [
        (int(o), int(a)) for o, a in zip(rng.permutation(objects), actions)
    ]  # each object, action once
    elided = [rng.random() < HARD_SHARE for _ in queried]
    distractors = [  # the same activity on another object of the scene: the elliptic sentence fits it too
        (int(rng.choice([o for o in objects if o != obj])), act)
        for (obj, act), e in zip(queried, elided)
        if e
    ]
    events = place(
        rng, queried + distractors, len(queried) + len(distractors), n_clips, profile.moment_frac, num_patches
    )
    refs: list[Query] = []
    for ev, e in zip(events, elided):
        refs += [(ev, _phrasing(rng, ev.act, ev.obj), False) for _ in range(annotators - e)]
        if e:
            refs.append((ev, _elliptic(ev.act), True))
    return events, _shuffled(rng, refs)


def _sequences(
    rng: np.random.Generator,
    profile: MixProfile,
    n_queries: int,
    n_clips: int,
    world: World,
    scene: int,
    num_patches: int,
) -> tuple[list[Event], list[Query]]:
    objects = [int(o) for o in world.scenes[scene]]
    shared = int(rng.choice(objects)) if rng.random() < 0.5 else None  # the video's events share one noun
    n_distinct = max(2, min(n_queries - 1, (n_clips + 1) // 3 - 1, len(ACTIONS)))
    actions = rng.permutation(len(ACTIONS))[:n_distinct]
    distinct = [(shared if shared is not None else int(rng.choice(objects)), int(a)) for a in actions]
    twin = int(rng.integers(n_distinct))
    queried = [*distinct, distinct[twin]]  # one event happens twice
    twins = (twin, n_distinct)
    for _ in range(PLACEMENT_TRIES):  # the twins are never the first event: both carry a sequencing word
        events = place(rng, queried, len(queried), n_clips, profile.moment_frac, num_patches)
        if min(range(len(queried)), key=lambda k: events[k].first) not in twins:
            break
    else:  # no placement put another event first: drop the repeat
        queried, twins = distinct, ()
        events = place(rng, queried, len(queried), n_clips, profile.moment_frac, num_patches)
    twin_word = str(rng.choice(SEQUENCE_WORDS))
    refs: list[Query] = []
    for rank, k in enumerate(sorted(range(len(queried)), key=lambda k: events[k].first)):
        ev, word = events[k], twin_word if k in twins else str(rng.choice(SEQUENCE_WORDS))
        sentence = _sentence(ev.act, ev.obj)
        refs.append((ev, sentence if rank == 0 else f"{word} {sentence}", k in twins))
    return events, refs
