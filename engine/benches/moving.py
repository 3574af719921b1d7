"""Frames of bundled real faces moving as a render moves them: for face tracking's tests and benchmarks.

The frame is bench-faces' composed frame (compose_frame), drifting and zooming about its centre by a fixed step per
frame, so every point of it, each face's crop centre and side included, moves exactly linearly: any bend in a
tracked crop's path is the tracker's. The photos are reduced to the frame's scale first and then moved by sub-pixel
steps, as engine/temporal/bench.moving_face does: sampling a full-size photo sparsely would make the input shimmer.
"""
from __future__ import annotations

import time

import cv2
import numpy as np

from .faces import compose_frame

BACKGROUND = 0.35  # compose_frame's canvas: what moves in at the edges


def moving_faces(width: int, height: int, frames: int, faces: int = 1, step: tuple[float, float] = (0.0025, 0.0013),
                 zoom: float = 0.002) -> list[np.ndarray]:
    """`frames` float32 (height, width, 3) frames in [0, 1]: `faces` bundled faces moving right and down by `step`
    frame heights per frame (sub-pixel at 360 lines) while the view zooms in by `zoom` per frame."""
    still = compose_frame(width, height, faces)
    cx, cy = width / 2, height / 2
    out = []
    for t in range(frames):
        s = 1 + zoom * t
        dx, dy = step[0] * height * t, step[1] * height * t
        # warpAffine's matrix maps pixel indices: a point at continuous x sits at index x - 0.5 in both images
        affine = np.float32([[s, 0, (1 - s) * (cx - 0.5) + dx], [0, s, (1 - s) * (cy - 0.5) + dy]])
        out.append(cv2.warpAffine(still, affine, (width, height), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=(BACKGROUND,) * 3))
    return out


def tracking_bench(detector, width: int = 1920, height: int = 1080, frames: int = 48, faces: int = 1,
                   detect_every: int = 12) -> dict:
    """Crop jitter (px) of the largest face and ms per frame of finding the faces, on moving_faces: a full detection
    every frame with raw frames (the serial path's way) against tracking with smoothing. `detector`: a FaceDetector."""
    from ..faces.track import UNSMOOTHED, FaceTracker, crop_jitter

    rgb8 = [cv2.convertScaleAbs(f, alpha=255.0) for f in moving_faces(width, height, frames, faces)]
    report = {"size": [width, height], "frames": frames, "faces": faces}
    for name, tracker in (("detect", FaceTracker(1, smoothing=UNSMOOTHED)), ("track", FaceTracker(detect_every))):
        took, found = [], []
        for index, frame in enumerate(rgb8):
            started = time.perf_counter()
            faces_now = tracker.faces(detector, frame, name, index)
            took.append(time.perf_counter() - started)
            if faces_now:
                found.append(faces_now[0].frame)
        report[name] = {"ms_per_frame": float(np.median(took)) * 1000, "mean_ms": float(np.mean(took)) * 1000,
                        "found": len(found), "detections": tracker.detections, "tracked": tracker.tracked,
                        **({"jitter": crop_jitter(found)} if len(found) == frames else {})}
    return report
