"""The flicker measure: warping error, the mean over consecutive frames of |O_t - warp(O_{t-1})|.

Flow comes from the reference frames (the renders before restoring, or the frames themselves), so a restorer is
judged against the motion that was really there; only pixels that pass the forward-backward check count, because at
occlusions nothing in the previous frame should match. The reference's own error on the same flow is the floor any
sequence of those frames has (interpolation, lighting), so the ratio to it is the number to compare.
"""
from __future__ import annotations

import itertools

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ..images import read_image
from ..jobs import UsageError
from .flow import FlowPair, gray8, warp
from .sequences import sequence_files

LEVELS = 255.0  # errors are reported in 8-bit levels


@dataclass
class FlickerReport:
    names: list[str]  # frame t's name, for t >= 1
    frames: list[float]  # warping error of frame t against frame t-1, 8-bit levels
    reference: list[float]  # the reference's own, on the same flow and pixels

    @property
    def mean(self) -> float:
        return float(np.mean(self.frames))

    @property
    def reference_mean(self) -> float:
        return float(np.mean(self.reference))

    @property
    def ratio(self) -> float:
        return self.mean / self.reference_mean if self.reference_mean > 0 else float("inf")

    def to_dict(self) -> dict:
        return {"unit": "8-bit levels", "mean": round(self.mean, 4), "reference_mean": round(self.reference_mean, 4),
                "ratio": round(self.ratio, 4),
                "frames": [{"name": n, "error": round(e, 4), "reference": round(r, 4)}
                           for n, e, r in zip(self.names, self.frames, self.reference)]}


def warping_error(current: np.ndarray, previous: np.ndarray, pair: FlowPair) -> float:
    """Mean |current - warp(previous)| over the consistent pixels, 8-bit levels (0 if none are)."""
    if not pair.consistent.any():
        return 0.0
    diff = np.abs(current - warp(previous, pair.backward)).mean(axis=2)
    return float(diff[pair.consistent].mean() * LEVELS)


def measure(frames: Iterable[np.ndarray], reference: Iterable[np.ndarray] | None = None,
            names: list[str] | None = None, preset: str = "fast") -> FlickerReport:
    """`frames` and `reference`: float32 (H, W, 3) in [0, 1], in order, of one size; reference defaults to frames.
    Both are read one frame at a time, so a long sequence never sits in memory."""
    if reference is None:
        frames, reference = itertools.tee(frames)  # read in step: tee holds no more than a frame
    return measure_many({"frames": frames}, reference, names, preset)["frames"]


def measure_many(series: dict[str, Iterable[np.ndarray]], reference: Iterable[np.ndarray],
                 names: list[str] | None = None, preset: str = "fast") -> dict[str, FlickerReport]:
    """One report per series (restores of one sequence, e.g. per-frame and temporal) against one reference, whose
    optical flow is computed once for all of them."""
    reports = {key: FlickerReport([], [], []) for key in series}
    previous = None
    for t, (ref, *frames) in enumerate(zip(reference, *series.values())):
        grey = gray8(ref)
        if previous is not None:
            pair = FlowPair(grey, previous[1], preset)
            own = warping_error(ref, previous[0], pair)
            for report, frame, before in zip(reports.values(), frames, previous[2]):
                report.names.append(names[t] if names else str(t))
                report.frames.append(warping_error(frame, before, pair))
                report.reference.append(own)
        previous = ref, grey, frames
    if not all(report.frames for report in reports.values()):
        raise ValueError("the flicker of a sequence needs at least 2 frames")
    return reports


def measure_folders(frames_dir, reference_dir=None, preset: str = "fast") -> FlickerReport:
    """The frames of FRAMES_DIR in natural name order, against the same names in REFERENCE_DIR (default: themselves).
    A missing partner, a size mismatch or an unreadable image is an error naming the file."""
    paths = sequence_files(frames_dir)
    if len(paths) < 2:
        raise UsageError(f"{frames_dir}: {len(paths)} image(s); the flicker of a sequence needs at least 2 frames")
    partners = None
    if reference_dir is not None:
        partners = [Path(reference_dir) / p.name for p in paths]
        missing = [p for p in partners if not p.is_file()]
        if not Path(reference_dir).is_dir() or missing:
            raise UsageError(f"{missing[0] if missing else reference_dir}: no reference frame of that name "
                             f"(--reference must hold a frame named as each of {frames_dir}'s)")
    size = read_image(paths[0]).rgb.shape

    def load(files):
        for path in files:
            rgb = read_image(path).rgb
            if rgb.shape != size:
                raise UsageError(f"{path}: {rgb.shape[1]}x{rgb.shape[0]}, but the sequence's frames are "
                                 f"{size[1]}x{size[0]}")
            yield rgb
    return measure(load(paths), None if partners is None else load(partners), [p.name for p in paths], preset)
