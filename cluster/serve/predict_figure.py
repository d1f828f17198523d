"""`mktn predict --visualize`: one PNG per video, its queries' ranked moments on the video's timeline."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def video_figures(records: list[dict[str, Any]], directory: str) -> list[str]:
    """One figure per video of the predicted `records` (`PredictResult.records()`; error rows are skipped);
    returns the PNG paths."""
    by_video: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if "moments" in record:
            by_video[record["video_id"]].append(record)
    return [video_figure(video_id, rows, directory) for video_id, rows in by_video.items()]


def video_figure(video_id: str, records: list[dict[str, Any]], directory: str) -> str:
    """Draw every query of one video (prediction records of `cluster.serve.predictor`): the top-1 moment solid, the
    rest of the top-k fainter with their scores, the true moment (when given) above; returns the PNG path."""
    duration = records[0]["duration"]
    fig, ax = plt.subplots(figsize=(10, 0.7 * len(records) + 1.2))
    for i, record in enumerate(records):
        y = len(records) - i
        ax.plot([0, duration], [y, y], color="lightgray", linewidth=8, solid_capstyle="butt")
        for rank, m in reversed(list(enumerate(record["moments"]))):
            ax.plot(
                [m["start"], m["end"]],
                [y - 0.1, y - 0.1],
                color="tab:red",
                linewidth=5,
                alpha=1.0 if rank == 0 else 0.25,
                solid_capstyle="butt",
                label="predicted top-1" if i == 0 and rank == 0 else None,
            )
        if record["moments"]:
            top = record["moments"][0]
            ax.text(top["end"], y - 0.1, f" {top['score']:.2f}", fontsize=7, va="center")
        if "truth" in record:
            ax.plot(
                record["truth"],
                [y + 0.15, y + 0.15],
                color="tab:green",
                linewidth=4,
                label="true" if i == 0 else None,
            )
        ax.text(0, y + 0.33, record["sentence"][:90], fontsize=7)
    ax.set_xlim(0, duration)
    ax.set_ylim(0.4, len(records) + 0.8)
    ax.set_yticks([])
    ax.set_xlabel("seconds")
    ax.set_title(f"{video_id}: predicted (top-k, top-1 solid) vs true moments", fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    path = Path(directory) / f"{file_stem(video_id)}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def file_stem(video_id: str) -> str:
    """A file name for `video_id`: unsafe characters replaced, plus a hash when any was, so names stay unique."""
    safe = _UNSAFE.sub("_", video_id)[:100]
    if safe == video_id:
        return safe
    return f"{safe}-{hashlib.sha1(video_id.encode()).hexdigest()[:8]}"
