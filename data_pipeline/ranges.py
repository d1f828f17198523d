"""The ranges every time, duration and frame rate must fall in, judged in float32: the model computes in
float32, so a value that is finite in float64 but overflows (1e308 s) or vanishes (an fps of 1e-300) there
would pass a float64 check and then turn the loss into NaN. Each check raises a `DataError` naming `where`.
"""

from __future__ import annotations

import math

import numpy as np

from data_pipeline.errors import DataError

MAX_SECONDS = 1e6
"""Longest video accepted, in seconds (11.6 days; float32 still resolves 0.06 s there)."""
MIN_DURATION_S = 1e-3
MIN_FPS, MAX_FPS = 1e-3, 1e4
"""Frame or feature rates accepted, per second (one frame per 17 minutes up to 10 kHz)."""


def check_duration(value: float, where: str) -> float:
    """A video duration in seconds within [`MIN_DURATION_S`, `MAX_SECONDS`]."""
    return _within(value, MIN_DURATION_S, MAX_SECONDS, "duration", "seconds", where)


def check_fps(value: float, what: str, where: str) -> float:
    """A rate (frames or feature clips per second) within [`MIN_FPS`, `MAX_FPS`]."""
    return _within(value, MIN_FPS, MAX_FPS, what, "per second", where)


def check_moment(start: float, end: float, duration: float, where: str) -> None:
    """`0 <= start < end <= duration` holding in float32 too (times within a microsecond of each other can
    collapse into one float32 value: a moment of zero length)."""
    s, e, d = np.float32(start), np.float32(end), np.float32(duration)
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= s < e <= d):
        raise DataError(
            f"{where}: times ({start}, {end}) must satisfy 0 <= start < end <= duration ({duration}) in float32"
        )


def _within(value: float, low: float, high: float, what: str, unit: str, where: str) -> float:
    if not (math.isfinite(value) and low <= value <= high):
        raise DataError(f"{where}: {what} {value} {unit} is outside the accepted range [{low:g}, {high:g}]")
    return float(value)
