"""Optical flow between consecutive frames (OpenCV DIS) and the forward-backward consistency check.

A flow here maps pixels of frame t to where they were in frame t-1, so `warp(previous, flow)` lines the previous
frame up with frame t. Both the flicker measure and the fusion use these functions, so they agree on what "the same
point in the previous frame" is.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
           "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


def gray8(rgb: np.ndarray) -> np.ndarray:
    """DIS reads 8-bit grey; float [0, 1] RGB in."""
    return cv2.cvtColor(cv2.convertScaleAbs(rgb, alpha=255.0), cv2.COLOR_RGB2GRAY)


class FlowPair:
    """Backward flow (t -> t-1), forward flow (t-1 -> t) and the pixels of frame t where they agree."""

    def __init__(self, current: np.ndarray, previous: np.ndarray, preset: str = "fast"):
        """`current`, `previous`: 8-bit grey frames of one size."""
        dis = cv2.DISOpticalFlow_create(PRESETS[preset])
        self.backward = dis.calc(current, previous, None)
        self.forward = dis.calc(previous, current, None)
        self.consistent = consistency_mask(self.backward, self.forward)


@functools.lru_cache(maxsize=4)
def _grid(h: int, w: int) -> np.ndarray:
    """Each pixel's own (x, y), the identity map (cached: a sequence keeps its size)."""
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return np.dstack([gx, gy])


def source(flow: np.ndarray) -> np.ndarray:
    """Where in frame t-1 each pixel of frame t came from (x, y)."""
    return cv2.add(_grid(*flow.shape[:2]), flow)


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """`image` (of frame t-1) sampled where each pixel of frame t came from; outside the frame the nearest edge."""
    return cv2.remap(image, source(flow), None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def inside(where: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """uint8 mask, 255 where the (x, y) of `where` falls inside box = (x0, y0, x1, y1), end exclusive."""
    return cv2.inRange(where, (box[0], box[1], 0, 0), (box[2] - 1, box[3] - 1, 0, 0))


def consistency_mask(backward: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """True where going back and forth lands where it started: the test of Sundaram et al. (2010), as Ruder et al.
    use it for video style transfer. It fails at occlusions (the point is not in the other frame) and where the flow
    is wrong, the two places where carrying anything along the flow would smear it."""
    h, w = backward.shape[:2]
    there = warp(forward, backward)
    bx, by = cv2.split(backward)
    tx, ty = cv2.split(there)
    loop = cv2.magnitude(bx + tx, by + ty)
    bound = 0.01 * (cv2.magnitude(bx, by) ** 2 + cv2.magnitude(tx, ty) ** 2) + 0.5
    return (loop * loop <= bound) & (inside(source(backward), (0, 0, w, h)) > 0)
