"""End-to-end preparation: annotations + features (or the synthetic generator) -> a shard dataset.

Each output is held under an `OutputLock` from before the first input is read until `dataset.json` is
written, so a second prepare into the same output is refused at once, naming the first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from data_pipeline.build import BuildOptions, build_video_groups
from data_pipeline.errors import ErrorLog, OnError
from data_pipeline.features import MAX_FEATURE_BYTES, HDF5File, open_features
from data_pipeline.output_lock import OutputLock
from data_pipeline.readers import AnnotationFormat, TimeUnit, read_annotations, read_charades_durations
from data_pipeline.shards import write_dataset
from data_pipeline.synthetic import QueryMix, generate
from data_pipeline.text import Vocab


def prepare_annotations(
    fmt: AnnotationFormat,
    annotations: str,
    features: str,
    out: str,
    *,
    options: BuildOptions,
    on_error: OnError = "raise",
    durations: Sequence[str] = (),
    tacos_unit: TimeUnit = "frames",
    keep_extension: bool = False,
    hdf5_key: str | None = None,
    vocab: str | None = None,
    shard_size_mb: float = 64.0,
    overwrite: bool = False,
    progress: bool = True,
    follow_links: bool = False,
    max_feature_bytes: int = MAX_FEATURE_BYTES,
    break_lock: bool = False,
) -> dict[str, Any]:
    """Read, validate and shard one annotation file with its features; returns `dataset.json`'s content.

    `durations` are Charades metadata files (charades.json or Charades_v1_*.csv, merged);
    `vocab` is the URL of an existing vocab.json to reuse (the training one, for val/test).
    `follow_links` and `max_feature_bytes` go to `open_features`; `break_lock` to the output's `OutputLock`.
    """
    with OutputLock(out, break_lock=break_lock):
        log = ErrorLog(on_error)
        table: dict[str, float] | None = None
        for url in durations:
            table = {**(table or {}), **read_charades_durations(url)}
        records = read_annotations(
            fmt, annotations, log, durations=table, tacos_unit=tacos_unit, keep_extension=keep_extension
        )
        store = open_features(features, hdf5_key, follow_links=follow_links, max_bytes=max_feature_bytes)
        try:
            return write_dataset(
                build_video_groups(records, store, options, log),
                out,
                dataset=options.dataset,
                split=options.split,
                vocab=Vocab.load(vocab) if vocab else None,
                shard_size_mb=shard_size_mb,
                overwrite=overwrite,
                log=log,
                source={"format": fmt, "annotations": annotations, "features": features},
                progress=progress,
                total=len({r.video_id for r in records}),
            )
        finally:
            if isinstance(store, HDF5File):
                store.close()


def prepare_synthetic(
    out: str,
    *,
    videos: int = 300,
    val_videos: int = 100,
    mix: QueryMix = "charades",
    seed: int = 0,
    mean_queries: float | None = None,
    feature_dim: int = 64,
    num_patches: int = 4,
    shard_size_mb: float = 64.0,
    overwrite: bool = False,
    progress: bool = True,
    break_lock: bool = False,
) -> dict[str, dict[str, Any]]:
    """Write `out/train` (seed) and `out/val` (seed + 1, same world and vocabulary) synthetic datasets."""
    splits = {"train": (videos, seed), "val": (val_videos, seed + 1)}
    infos: dict[str, dict[str, Any]] = {}
    vocab: Vocab | None = None
    with contextlib.ExitStack() as locks:
        for split, (count, _) in splits.items():
            if count:
                locks.enter_context(OutputLock(f"{out.rstrip('/')}/{split}", break_lock=break_lock))
        for split, (count, split_seed) in splits.items():
            if count == 0:
                continue
            groups = generate(
                count,
                split_seed,
                query_mix=mix,
                mean_queries=mean_queries,
                feature_dim=feature_dim,
                num_patches=num_patches,
                split=split,
            )
            vocab = vocab or Vocab.build(q.sentence for g in groups for q in g.queries)
            infos[split] = write_dataset(
                groups,
                f"{out.rstrip('/')}/{split}",
                dataset=f"synthetic-{mix}",
                split=split,
                vocab=vocab,
                shard_size_mb=shard_size_mb,
                overwrite=overwrite,
                source={"generator": "mktn-synthetic-v1", "seed": split_seed, "mix": mix},
                progress=progress,
                total=count,
            )
    return infos
