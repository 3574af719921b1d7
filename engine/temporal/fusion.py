"""Temporal fusion: the model's change carried along the flow from the previous frame and blended with this one's.

Restoring each frame on its own flickers: the VAE's 8x downsampling sees a sub-pixel move as a different image, so
the change the model makes (restored - input) jitters from frame to frame while the input moves smoothly. Frame t is

    out_t = restored_t + carry * mask * (warp(fused change_{t-1}) - change_t)

an exponential average of the change along the motion, so detail that moves with the picture stays and jitter
averages out. `mask` keeps only pixels whose flow passes the forward-backward check, whose input matches its
warped predecessor (no occlusion, no wrong flow), that came from where the previous change was, and that the model
changed at all: elsewhere, and at a cut, the frame is its per-frame restore.
Only the previous frame is needed, so frames are still restored as they are written.

Flow is computed only around the pixels the model changed: in faces mode that is the face crops, a fraction of a
1080p frame. Where nothing moved around them, the frame is returned as restored (per-frame restore is deterministic,
so a still picture cannot flicker) and fusion starts again from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .flow import FlowPair, gray8, inside, source, warp

Box = tuple[int, int, int, int]  # x0, y0, x1, y1


@dataclass
class FusionConfig:
    carry: float = 0.7  # weight of the carried change; (1 - carry) is this frame's own
    photometric: float = 0.06  # largest |input_t - warp(input_{t-1})| (grey) at which a pixel carries
    cut: float = 0.4  # fewer than this fraction of the changed pixels carrying: a scene cut, start again
    margin: int = 16  # pixels around the changed box the flow sees, so motion across its edge is tracked
    flow_side: int = 360  # larger regions are flowed at reduced size: 4x cheaper at 1080p, and the carry is smooth
    preset: str = "fast"

    @property
    def memory(self) -> int | None:
        """Frames fusion takes to forget where it started, to under one 8-bit level (None: never, carry >= 1).

        Masks, boxes and cuts depend on the inputs and per-frame restores alone; the fused history enters a frame only
        as carry * mask * warp(previous change), and bilinear warping and clipping never widen a difference. Two runs
        of one sequence, at most 1 apart at the frame where one starts fresh, are at most carry**k apart k frames
        later: 0.7**16 = 0.85/255. The moving face (tests/test_temporal.py) starts up to 138/255 apart, under 1/255
        after 13 frames and 0.24/255 after 16."""
        if self.carry <= 0:
            return 0
        return None if self.carry >= 1 else math.ceil(math.log(1 / 255) / math.log(self.carry))


def changed_box(before: np.ndarray, after: np.ndarray, step: int = 4) -> Box | None:
    """Bounding box of the pixels that differ, from every `step`-th row widened by the rows between (None if no
    scanned row differs). A change thinner than `step` rows may be missed: it keeps its per-frame restore, which is
    what fusion falls back to anyway, and the scan is 4x cheaper."""
    h, w = before.shape[:2]
    rows = slice(0, h, step)
    differs = cv2.compare(before[rows].reshape(-1, w * 3), after[rows].reshape(-1, w * 3), cv2.CMP_NE)
    x, y, bw, bh = cv2.boundingRect(differs)  # RGB side by side in one row: x // 3 is the pixel
    if bw == 0:
        return None
    return x // 3, max(0, (y - 1) * step + 1), (x + bw + 2) // 3, min(h, (y + bh) * step)


def _union(a: Box, b: Box | None) -> Box:
    return a if b is None else (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _grow(box: Box, margin: int, w: int, h: int) -> Box:
    return max(0, box[0] - margin), max(0, box[1] - margin), min(w, box[2] + margin), min(h, box[3] + margin)


def _cut(image: np.ndarray, box: Box) -> np.ndarray:
    return image[box[1]:box[3], box[0]:box[2]]


class TemporalFusion:
    """The fusion state of one sequence: the previous input and the change fused into it."""

    def __init__(self, config: FusionConfig | None = None):
        self.config = config or FusionConfig()
        self.restart()

    def restart(self) -> None:
        self.previous: np.ndarray | None = None
        self.change: tuple[Box, np.ndarray] | None = None  # the fused change, zero outside its box
        self.carried = 0.0  # fraction of the changed pixels that carried the previous change, for reports and tests

    def fuse(self, image: np.ndarray, restored: np.ndarray) -> np.ndarray:
        """The next frame of the sequence from its input and per-frame restore (float32 (H, W, 3) in [0, 1]).

        The fused frame is written into `restored` and returned: copying a 1080p frame would cost more than fusing
        its face."""
        previous, before = self.previous, self.change
        self.restart()
        self.previous = image
        box = changed_box(image, restored)
        if box is None:
            return restored
        change = _cut(restored, box) - _cut(image, box)
        if before is not None and previous.shape == image.shape:
            fused = self._blend(image, restored, previous, before, box, change)
            if fused is not None:
                _cut(restored, box)[:] = fused
                change = fused - _cut(image, box)
        self.change = box, change
        return restored

    def _blend(self, image, restored, previous, before, box: Box, change) -> np.ndarray | None:
        """The fused values inside `box`, or None where the per-frame restore stands: nothing moved, or a cut."""
        c = self.config
        h, w = image.shape[:2]
        region = _grow(_union(box, before[0]), c.margin, w, h)
        now, then = _cut(image, region), _cut(previous, region)
        if cv2.norm(now, then, cv2.NORM_INF) == 0:  # nothing moved where the model changes anything: no flicker
            return None
        carried, ok = self._carry(now, then, before, region)
        inner = (box[0] - region[0], box[1] - region[1], box[2] - region[0], box[3] - region[1])
        # only pixels the model changed: the rest of a faces-mode frame keeps its exact values
        size = cv2.transform(cv2.absdiff(_cut(restored, box), _cut(image, box)), np.ones((1, 3), np.float32))
        touched = cv2.compare(size, 0, cv2.CMP_GT)
        ok = cv2.bitwise_and(_cut(ok, inner), touched)
        self.carried = cv2.countNonZero(ok) / max(1, cv2.countNonZero(touched))
        if self.carried < c.cut:
            return None
        toward = cv2.multiply(cv2.subtract(_cut(carried, inner), change), cv2.cvtColor(ok, cv2.COLOR_GRAY2RGB),
                              scale=c.carry, dtype=cv2.CV_32F)
        fused = cv2.add(_cut(restored, box), toward)
        return np.clip(fused, 0, 1, out=fused)

    def _carry(self, image, previous, before, region: Box) -> tuple[np.ndarray, np.ndarray]:
        """The previous fused change warped onto this frame over `region`, and where it may be used (uint8 0/1): the
        flow is consistent, the input matches what it came from, and it came from inside the previous change's box."""
        c = self.config
        rh, rw = image.shape[:2]
        a, b = gray8(image), gray8(previous)
        scale = min(1.0, c.flow_side / max(rh, rw))
        if scale < 1:
            size = (max(8, round(rw * scale)), max(8, round(rh * scale)))
            a, b = cv2.resize(a, size, interpolation=cv2.INTER_AREA), cv2.resize(b, size, interpolation=cv2.INTER_AREA)
        pair = FlowPair(a, b, c.preset)
        # judged over 5x5 and eroded: a lone pixel matching by chance inside an occluder must not carry a ghost
        seen = cv2.blur(cv2.absdiff(a, warp(b, pair.backward)), (5, 5)) <= c.photometric * 255
        ok = cv2.erode((pair.consistent & seen).astype(np.uint8), np.ones((3, 3), np.uint8))  # 0/1
        flow = pair.backward
        if scale < 1:
            flow = cv2.resize(flow, (rw, rh), interpolation=cv2.INTER_LINEAR) * np.float32([rw / a.shape[1],
                                                                                           rh / a.shape[0]])
            ok = cv2.resize(ok, (rw, rh), interpolation=cv2.INTER_NEAREST)
        (bx0, by0, bx1, by1), values = before
        where = cv2.subtract(source(flow), (bx0 - region[0], by0 - region[1], 0, 0))  # in the previous box
        ok = cv2.bitwise_and(ok, inside(where, (0, 0, bx1 - bx0, by1 - by0)))
        carried = cv2.remap(values, where, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return carried, ok
