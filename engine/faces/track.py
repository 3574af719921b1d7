"""Faces in an animation: found once, then followed from frame to frame, and their crops held steady.

A full detection (the whole-frame search plus the tile scan, ~50 ms at 1080p) runs on a sequence's first frame,
every `detect_every` frames after, and whenever following fails. In between, each face is re-read by the face mesh
on a crop around where it was (`FaceDetector.landmarks`, a few ms): a face that moved by a fraction of its size
between two frames is still well inside that crop.

The mesh's landmarks jitter by a fraction of a pixel from frame to frame even on a still face, and the crop framed
from them jitters with them: a crop that shakes is flicker the temporal fusion then has to undo. So each face's
frame is smoothed over time by a One Euro filter (Casiez et al., CHI 2012): a low-pass whose cut-off rises with the
face's speed, so a still face's crop stands still and a moving face's is followed with little lag. Landmarks stay
raw: they drive the paste mask, which must fit the face in this frame.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .align import FaceFrame
from .detect import DetectedFace, iou

FOLLOWED = 0.5  # a re-read face must overlap where it was by this much (IoU), else it is not the same face
SAME_FACE = 0.3  # a detected face that overlaps a followed one by this much keeps its smoothing: detect's own rule


@dataclass(frozen=True)
class Smoothing:
    """One Euro parameters, one sample per frame. Speeds are scale-free (the crop centre in crop sides per frame,
    the side in log units per frame, the angle in radians per frame), so one setting fits a face of any size.
    Cut-offs are in cycles per frame: at speed v the cut-off is min_cutoff + beta * v, and a face
    moving steadily lags by v / (2 pi cut-off), never more than 1 / (2 pi beta) crop sides."""
    # tuned on the bundled face drifting and zooming (engine/benches/moving.py), tracked every frame but each 12th:
    # crop jitter 0.27 px centre, 0.32 px side at 960x540 (0.56 and 0.85 at 1920x1080) against 1.01 and 2.37 (2.00
    # and 2.99) detecting every frame unsmoothed; lag within 1.0 % of the side drifting, 1.7 % moving 7 % of its side
    # per frame, 1.7 % setting off from still
    min_cutoff: float = 0.01  # a still face's crop follows with a time constant of 1 / (2 pi 0.01) = 16 frames
    beta: float = 10.0  # a moving face lags by at most 1 / (2 pi beta) = 1.6 % of its crop's side
    d_cutoff: float = 0.2  # how fast the speed estimate itself follows


UNSMOOTHED = Smoothing(min_cutoff=math.inf)  # a cut-off above any frequency passes every frame as it is


def _alpha(cutoff: np.ndarray) -> np.ndarray:
    """The low-pass weight of a new sample for a cut-off in cycles per sample."""
    return 1.0 / (1.0 + 1.0 / (2 * math.pi * cutoff))


@dataclass
class _OneEuro:
    """One face's filter over (cx, cy, log side, angle). The centre is filtered in pixels and only its speed taken in
    crop sides: filtering cx / side instead would make a face zooming far from the image's origin seem to move fast."""
    settings: Smoothing
    value: np.ndarray | None = None  # the smoothed parameters
    speed: np.ndarray | None = None  # smoothed scale-free change per frame

    def __call__(self, frame: FaceFrame) -> FaceFrame:
        x = np.array([frame.cx, frame.cy, math.log(frame.side), frame.angle])
        if self.value is None:
            self.value = x
            return frame
        x[3] = self.value[3] + math.remainder(x[3] - self.value[3], 2 * math.pi)  # no jump where atan2 wraps
        change = (x - self.value) / [frame.side, frame.side, 1.0, 1.0]
        # the first change starts the estimate (as the first value starts the value): a face that is already
        # moving when it appears is followed from its second frame, not after the speed estimate has caught up
        self.speed = change if self.speed is None else \
            self.speed + _alpha(self.settings.d_cutoff) * (change - self.speed)
        centre = math.hypot(self.speed[0], self.speed[1])  # both axes alike: a diagonal drift is no slower
        cutoff = self.settings.min_cutoff + self.settings.beta * np.array([centre, centre, abs(self.speed[2]),
                                                                           abs(self.speed[3])])
        self.value = self.value + _alpha(cutoff) * (x - self.value)
        return FaceFrame(float(self.value[0]), float(self.value[1]), math.exp(self.value[2]), float(self.value[3]))


@dataclass
class _Track:
    raw: DetectedFace  # as read in the last frame: where the next frame looks
    smooth: _OneEuro


@dataclass
class _Sequence:
    index: int  # of the last frame served
    since_detection: int  # frames since the last full detection (0: that frame was detected)
    tracks: list[_Track]


class FaceTracker:
    """Faces per frame of animations, as `detector.detect` finds them, at a fraction of its cost and with steady
    crops. Frames of one sequence come in order from one caller at a time; different sequences may come from
    different threads at once, each with its own detector (mediapipe graphs are not thread-safe). Only the `keep`
    most recently used sequences are remembered."""

    def __init__(self, detect_every: int = 12, keep: int = 8, smoothing: Smoothing | None = None):
        if detect_every < 1:
            raise ValueError(f"detect_every must be at least 1 (1: detect every frame), not {detect_every}")
        self.detect_every, self.keep = int(detect_every), int(keep)
        self.smoothing = smoothing or Smoothing()
        self.detections = 0  # frames given a full detection
        self.tracked = 0  # frames served by following the last frame's faces
        self._sequences: OrderedDict = OrderedDict()  # id -> _Sequence
        self._lock = threading.Lock()

    def faces(self, detector, rgb8: np.ndarray, sequence, index: int) -> list[DetectedFace]:
        """The faces in frame `index` of `sequence` (an (H, W, 3) uint8 RGB frame), largest first, their frames
        smoothed over the sequence. A frame that is not the one after the last served starts the sequence again."""
        with self._lock:
            state = self._sequences.pop(sequence, None)
        continues = state is not None and index == state.index + 1
        # no face last frame: one may have come in, which only a detection sees
        follows = continues and state.tracks and state.since_detection + 1 < self.detect_every
        found = self._follow(detector, rgb8, state.tracks) if follows else None
        if found is None:
            tracks = self._detect(detector, rgb8, state.tracks if continues else [])
            state = _Sequence(index, 0, tracks)
        else:
            state = _Sequence(index, state.since_detection + 1, found)
        out = [DetectedFace(t.smooth(t.raw.frame), t.raw.score, t.raw.landmarks) for t in state.tracks]
        with self._lock:
            if found is None:
                self.detections += 1
            else:
                self.tracked += 1
            self._sequences[sequence] = state
            while len(self._sequences) > self.keep:
                self._sequences.popitem(last=False)
        return out

    def _follow(self, detector, rgb8: np.ndarray, tracks: list[_Track]) -> list[_Track] | None:
        """Each face re-read around where it was, or None when any is lost, moved too far, became too small, or
        two settled on the same face."""
        followed = []
        for track in tracks:
            face = detector.landmarks(rgb8, track.raw.frame, track.raw.score)
            if face.landmarks is None or iou(face.frame, track.raw.frame) < FOLLOWED or face.size < detector.min_face:
                return None
            if any(iou(face.frame, f.raw.frame) > SAME_FACE for f in followed):
                return None
            followed.append(_Track(face, track.smooth))
        return sorted(followed, key=lambda t: -t.raw.frame.side)

    def _detect(self, detector, rgb8: np.ndarray, previous: list[_Track]) -> list[_Track]:
        """A full detection; a face where one was followed keeps that one's smoothing, so the crop does not jump."""
        tracks, free = [], list(previous)
        for face in detector.detect(rgb8):
            same = max(free, key=lambda t: iou(face.frame, t.raw.frame), default=None)
            if same is not None and iou(face.frame, same.raw.frame) > SAME_FACE:
                free.remove(same)
                tracks.append(_Track(face, same.smooth))
            else:
                tracks.append(_Track(face, _OneEuro(self.smoothing)))
        return tracks


def crop_jitter(frames: list[FaceFrame]) -> dict:
    """How much a face's crop shakes: RMS of the second difference over time of its centre and side, in pixels.
    A crop moving at a steady rate scores 0; a frame-to-frame wobble shows up in full."""
    if len(frames) < 3:
        raise ValueError(f"crop jitter needs at least 3 frames, got {len(frames)}")
    a = np.array([[f.cx, f.cy, f.side] for f in frames], np.float64)
    d2 = a[2:] - 2 * a[1:-1] + a[:-2]
    return {"centre_px": float(np.sqrt(np.mean(d2[:, 0] ** 2 + d2[:, 1] ** 2))),
            "side_px": float(np.sqrt(np.mean(d2[:, 2] ** 2))), "frames": len(frames)}
