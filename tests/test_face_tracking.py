"""Faces in animations: detected on a sequence's first frame and every N frames, followed by the face mesh in
between, failing over to a detection whenever following goes wrong, and framed by crops smoothed over time.

The rules are specified on a scripted detector (frames are lists of faces, no pixels); what they buy is measured on
the bundled real face moving in frames, with the real detector."""
import importlib.util
import math

import cv2
import numpy as np
import pytest

from engine.benches.moving import BACKGROUND, moving_faces
from engine.faces.align import FaceFrame
from engine.faces.detect import DetectedFace, iou
from engine.faces.track import UNSMOOTHED, FaceTracker, Smoothing, crop_jitter

needs_mediapipe = pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None, reason="mediapipe not installed")


class Scripted:
    """A detector whose frames are lists of the FaceFrames in them: detect finds every face not too small; landmarks
    reads the face overlapping most where it looks, as the mesh reads whatever face fills its crop."""
    min_face = 20

    def detect(self, scene):
        return sorted((_face(f, 0.9) for f in scene if f.side / 2 >= self.min_face), key=lambda f: -f.frame.side)

    def landmarks(self, scene, guess, score):
        near = max(scene, key=lambda f: iou(f, guess), default=None)
        return _face(near, score) if near is not None and iou(near, guess) > 0 else DetectedFace(guess, score, None)


def _face(frame, score):
    return DetectedFace(frame, score, np.zeros((468, 2), np.float32))


def served(tracker, detector, scenes, sequence="s", indices=None):
    """Per frame, 'D' (full detection) or 'T' (followed), and the faces returned."""
    how, out = "", []
    for index, scene in zip(indices or range(len(scenes)), scenes):
        before = tracker.detections
        out.append(tracker.faces(detector, scene, sequence, index))
        how += "D" if tracker.detections > before else "T"
    return how, out


def drifting(frames, step=1.0, side=100.0):
    return [[FaceFrame(200 + step * t, 150, side)] for t in range(frames)]


def test_detection_runs_on_the_first_frame_and_every_n_frames_and_following_in_between():
    tracker = FaceTracker(detect_every=6)
    how, _ = served(tracker, Scripted(), drifting(20))
    assert how == "DTTTTTDTTTTTDTTTTTDT" and (tracker.detections, tracker.tracked) == (4, 16)
    assert served(FaceTracker(detect_every=1), Scripted(), drifting(5))[0] == "DDDDD"


@pytest.mark.parametrize("change, after", [("lost", 0), ("jumped", 1), ("shrunk", 0)])
def test_a_face_lost_jumped_or_shrunk_below_min_face_fails_over_to_a_detection_in_that_frame(change, after):
    face = FaceFrame(200, 150, 48)  # a face 24 px large, min_face 20
    moved = {"lost": [], "jumped": [FaceFrame(229, 150, 48)],  # IoU 0.25 with where it was
             "shrunk": [FaceFrame(200, 150, 38)]}[change]  # still overlapping it by IoU 0.63
    how, out = served(FaceTracker(), Scripted(), [[face], [face], moved])
    assert how == "DTD" and len(out[-1]) == after
    if after:  # a face that far from the last is another one: its crop starts where it is, not smoothed from there
        assert out[-1][0].frame == moved[0]


def test_a_gap_an_earlier_frame_or_a_new_sequence_detects_again():
    tracker, detector, scenes = FaceTracker(), Scripted(), drifting(6)
    assert served(tracker, detector, scenes[:5], indices=[0, 1, 2, 4, 3])[0] == "DTTDD"
    assert served(tracker, detector, scenes[5:], sequence="other", indices=[5])[0] == "D"


def test_after_a_frame_without_faces_each_frame_is_detected_until_a_face_comes_in():
    face = [FaceFrame(200, 150, 100)]
    assert served(FaceTracker(), Scripted(), [[], [], face, face])[0] == "DDDT"


def test_two_faces_followed_onto_one_fail_over_to_a_detection():
    a, b, between = FaceFrame(200, 150, 100), FaceFrame(260, 150, 100), FaceFrame(230, 150, 100)
    how, out = served(FaceTracker(), Scripted(), [[a, b], [between]])
    assert how == "DD" and len(out[1]) == 1


def test_a_redetected_face_keeps_its_smoothing_and_a_new_face_starts_from_where_it_is():
    wobble = [[FaceFrame(200 + (t % 2), 150, 100)] for t in range(4)]
    newcomer = FaceFrame(600, 150, 80)
    how, out = served(FaceTracker(detect_every=4), Scripted(), wobble + [[FaceFrame(201, 150, 100), newcomer]])
    assert how == "DTTTD"
    kept, new = out[-1]
    assert abs(kept.frame.cx - 200.5) < 0.4  # held near the wobble's middle, not jumped to the detection's 201
    assert new.frame == newcomer


def test_only_the_most_recently_used_sequences_are_remembered():
    tracker, detector, scene = FaceTracker(keep=2), Scripted(), drifting(2)
    for name in "abc":
        served(tracker, detector, scene[:1], sequence=name)
    assert served(tracker, detector, scene[1:], sequence="a", indices=[1])[0] == "D"
    assert served(tracker, detector, scene[1:], sequence="c", indices=[1])[0] == "T"


def test_smoothing_stills_a_wobbling_face_and_follows_a_steady_move_within_its_lag_bound():
    rng = np.random.default_rng(0)
    # about the face mesh's own wobble on a still face (measured: a few tenths of a pixel on a 160 px crop)
    wobble = [[FaceFrame(200 + rng.normal(0, 0.3), 150 + rng.normal(0, 0.3), 100 + rng.normal(0, 0.5))]
              for _ in range(40)]
    raw = crop_jitter([s[0] for s in wobble])
    held = crop_jitter([f[0].frame for f in served(FaceTracker(), Scripted(), wobble)[1]])
    assert held["centre_px"] < raw["centre_px"] / 5 and held["side_px"] < raw["side_px"] / 5
    settings = Smoothing()
    fast = drifting(30, step=8.0)  # 8 % of the crop's side per frame
    lag = [f[0].frame.cx - s[0].cx for f, s in zip(served(FaceTracker(smoothing=settings), Scripted(), fast)[1], fast)]
    assert max(abs(x) for x in lag) <= 100 / (2 * math.pi * settings.beta)


def test_an_upside_down_face_wobbling_across_the_angle_wrap_keeps_its_angle():
    scenes = [[FaceFrame(200, 150, 100, math.pi - 0.01 if t % 2 else -math.pi + 0.01)] for t in range(6)]
    angles = [f[0].frame.angle for f in served(FaceTracker(), Scripted(), scenes)[1]]
    assert all(abs(math.remainder(a - math.pi, 2 * math.pi)) < 0.011 for a in angles)


def test_crop_jitter_is_zero_for_a_steady_move_and_measures_a_wobble():
    steady = [FaceFrame(10 + 1.5 * t, 20 - 0.5 * t, 100 + 2 * t) for t in range(8)]
    assert crop_jitter(steady)["centre_px"] == pytest.approx(0, abs=1e-9) and crop_jitter(steady)["side_px"] == 0
    wobble = [FaceFrame(10 + (t % 2), 20, 100 + 2 * (t % 2)) for t in range(8)]
    assert crop_jitter(wobble)["centre_px"] == pytest.approx(2) and crop_jitter(wobble)["side_px"] == pytest.approx(4)


def test_detect_every_below_one_is_refused():
    with pytest.raises(ValueError, match="detect_every"):
        FaceTracker(detect_every=0)


# with the real detector, on the bundled face moving in small frames


@pytest.fixture(scope="module")
def detector():
    pytest.importorskip("mediapipe")
    from engine.faces.detect import FaceDetector

    found = FaceDetector(min_face=32)
    yield found
    found.close()


class Counting:
    """The real detector, noting the frames it ran a full detection on."""

    def __init__(self, detector):
        self.inner, self.min_face, self.detected, self.frame = detector, detector.min_face, [], 0

    def detect(self, rgb8):
        self.detected.append(self.frame)
        return self.inner.detect(rgb8)

    def landmarks(self, rgb8, guess, score):
        return self.inner.landmarks(rgb8, guess, score)


def rgb8(frames):
    return [cv2.convertScaleAbs(f, alpha=255.0) for f in frames]


def track(tracker, detector, frames, sequence="s"):
    return [tracker.faces(detector, f, sequence, i) for i, f in enumerate(frames)]


@needs_mediapipe
def test_a_moving_face_is_detected_every_n_frames_and_followed_where_a_detection_finds_it(detector):
    frames, counting, tracker = rgb8(moving_faces(480, 270, 17, step=(0.01, 0.005))), Counting(detector), \
        FaceTracker(detect_every=8)
    for index, frame in enumerate(frames):
        counting.frame = index
        found, full = tracker.faces(counting, frame, "s", index), detector.detect(frame)
        assert len(found) == len(full) == 1
        f, d = found[0].frame, full[0].frame
        assert math.hypot(f.cx - d.cx, f.cy - d.cy) < 0.03 * d.side and abs(f.side - d.side) < 0.03 * d.side
    assert counting.detected == [0, 8, 16] and tracker.tracked == 14


@needs_mediapipe
def test_a_face_cut_away_fails_over_to_a_detection_that_finds_none_and_a_gap_detects_again(detector):
    frames, counting, tracker = rgb8(moving_faces(480, 270, 6)), Counting(detector), FaceTracker()
    frames[3] = np.full_like(frames[3], round(BACKGROUND * 255))
    found = []
    for index in (0, 1, 2, 3, 5):
        counting.frame = index
        found.append(tracker.faces(counting, frames[index], "s", index))
    assert [len(f) for f in found] == [1, 1, 1, 0, 1] and counting.detected == [0, 3, 5]


@needs_mediapipe
def test_smoothing_lowers_crop_jitter_and_follows_a_fast_face_closely(detector):
    frames = rgb8(moving_faces(480, 270, 40))
    raw = crop_jitter([f[0].frame for f in track(FaceTracker(detect_every=1, smoothing=UNSMOOTHED), detector, frames)])
    smooth = crop_jitter([f[0].frame for f in track(FaceTracker(), detector, frames)])
    assert smooth["centre_px"] < 0.6 * raw["centre_px"] and smooth["side_px"] < 0.3 * raw["side_px"]
    fast = rgb8(moving_faces(480, 270, 14, step=(0.03, 0.0)))  # 10 % of the crop's side per frame
    for followed, frame in zip(track(FaceTracker(), detector, fast), fast):
        f, d = followed[0].frame, detector.detect(frame)[0].frame
        assert math.hypot(f.cx - d.cx, f.cy - d.cy) < 0.03 * d.side


@needs_mediapipe
def test_sequences_tracked_alternately_get_what_each_gets_alone_and_the_same_calls_the_same_crops(detector):
    a = rgb8(moving_faces(480, 270, 8))
    b = [np.ascontiguousarray(np.roll(f, 90, axis=1)) for f in rgb8(moving_faces(480, 270, 8, step=(-0.01, 0)))]
    alone = [track(FaceTracker(detect_every=4), detector, s, name) for name, s in (("a", a), ("b", b))]
    shared = FaceTracker(detect_every=4)
    both = [[shared.faces(detector, s[i], name, i) for name, s in (("a", a), ("b", b))] for i in range(8)]
    for name, own in enumerate(alone):
        assert [[f.frame for f in faces] for faces in own] == [[f.frame for f in both[i][name]] for i in range(8)]
