"""Finding faces in a frame, offline: mediapipe's bundled full-range detector, then face-mesh landmarks per face.

The full-range detector sees faces down to about REACH of the square it looks at (measured on the bundled faces:
found at 0.07, lost at 0.06), so a frame is first searched whole and then, for faces smaller than REACH of its long
side, in overlapping square tiles just large enough to see `min_face`. Each face's landmarks come from the face
mesh run on a crop around the detection; a face the mesh cannot read (a profile, a face cut by the frame) is framed
from the detector's box and eye keypoints instead (on the bundled faces within 2 % of the landmark framing), and
reported as such.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import sys
import threading
from dataclasses import dataclass

import cv2
import numpy as np

from .align import FaceFrame, frame_from_box, frame_from_landmarks

REACH = 0.09  # smallest face side the full-range detector finds reliably, as a fraction of the searched square
MESH_SIZE = 256  # crop the mesh reads; its own models work at 192 px


# mediapipe goes in without its declared dependencies (jax, opencv-contrib-python: see pyproject's faces extra, which
# FACES_EXTRA equals; a test keeps them equal), so a pip-installed engine names the whole recipe
FACES_EXTRA = ("numpy<2", "protobuf>=4.25.3,<5", "absl-py<3", "attrs<27", "flatbuffers<26", "matplotlib<4")
_QUOTED = " ".join('"' + r + '"' for r in FACES_EXTRA)  # double quotes: the same in Windows' cmd and POSIX shells
INSTALL_FACES = f"python -m pip install {_QUOTED} && python -m pip install --no-deps mediapipe==0.10.21"


class FaceDetectorUnavailable(RuntimeError):
    pass


@functools.cache
def faces_unavailable() -> str | None:
    """Why face detection cannot run in this process, or None. mediapipe is imported once, never retried."""
    try:
        import mediapipe  # noqa: F401
        mediapipe.solutions.face_detection  # noqa: B018 - a broken install fails here, not at import
    except Exception as e:  # noqa: BLE001 - ImportError, or a missing dependency's error from inside mediapipe
        return (f"face-aware restore (--faces auto on frames larger than the model, --faces only-crops) needs "
                f"mediapipe 0.10.21, which cannot be imported here ({type(e).__name__}: {e}). Install it into the "
                f"engine's venv with `{INSTALL_FACES}` (or `python build.py setup` in a checkout), or restore whole "
                f"frames with --faces off")
    return None


# What mediapipe 0.10.21 logs while it builds and first runs its graphs, which alarms users: absl's info and warning
# lines, absl's notice that it logs to stderr, TFLite's info lines. Its C++ logging writes to fd 2 itself and ignores
# GLOG_*, TF_CPP_* and absl variables (checked), so these lines can only be taken out of fd 2's stream.
_MEDIAPIPE_CHATTER = re.compile(rb"[IW]\d{4} \d+:\d+:\d+\.\d+ +\d+ [\w.-]+:\d+\] |INFO: |WARNING: All log messages "
                                rb"before absl::InitializeLog\(\)")
_FD2_FILTERED = threading.Lock()  # a second filter at once would save, then restore, the first one's pipe as fd 2


@contextlib.contextmanager
def _without_mediapipe_chatter():
    """fd 2 through a pipe whose lines reach the real stderr, less mediapipe's chatter. fd 2 is the whole process's,
    so everything else written meanwhile (the background compile in another thread, a child process started now,
    which keeps the pipe as its stderr) must still come out."""
    with _FD2_FILTERED:
        sys.stderr.flush()
        saved = os.dup(2)
        read_end, write_end = os.pipe()
        forward = threading.Thread(target=_pass_on, args=(read_end, os.dup(saved)), name="stderr-filter",
                                   daemon=True)
        forward.start()
        os.dup2(write_end, 2)
        os.close(write_end)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)  # the pipe ends once no child process holds it either
            os.close(saved)
            forward.join(timeout=1.0)  # what was written meanwhile comes out before what follows


def _pass_on(read_end: int, stderr: int) -> None:
    """Lines from the pipe to `stderr` until every writer has closed the pipe."""
    pending = b""
    while chunk := os.read(read_end, 1 << 16):
        *lines, pending = (pending + chunk).split(b"\n")
        _write(stderr, b"".join(line + b"\n" for line in lines if not _MEDIAPIPE_CHATTER.match(line)))
    if not _MEDIAPIPE_CHATTER.match(pending):
        _write(stderr, pending)
    os.close(read_end)
    os.close(stderr)


def _write(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:  # the real stderr is gone (closed, its reader dead): the pipe is drained all the same, so no
        pass  # writer blocks on it


@dataclass
class DetectedFace:
    frame: FaceFrame
    score: float
    landmarks: np.ndarray | None  # (468, 2) image coordinates, or None when framed from the detector alone

    @property
    def size(self) -> float:
        return self.frame.side / 2.0  # the crop is FACE_MARGIN (2) face sides wide


def scan_squares(width: int, height: int, min_face: int) -> list[tuple[int, int, int]]:
    """(x, y, side) of the squares to search: the whole frame, then tiles if small faces could be missed."""
    squares = [(0, 0, max(width, height))]
    side = int(math.ceil(min_face / REACH))
    if side >= max(width, height):
        return squares
    side = min(side, min(width, height))
    overlap = side // 4  # at least a face the whole-frame pass cannot see fits in one tile
    for y in _starts(height, side, overlap):
        for x in _starts(width, side, overlap):
            squares.append((x, y, side))
    return squares


def _starts(length: int, side: int, overlap: int) -> list[int]:
    if side >= length:
        return [0]
    n = math.ceil((length - side) / (side - overlap)) + 1
    return [round(i * (length - side) / (n - 1)) for i in range(n)]


def iou(a: FaceFrame, b: FaceFrame) -> float:
    """Intersection over union of two crop squares, their turns ignored."""
    ra, rb = a.side / 2, b.side / 2
    ix = max(0.0, min(a.cx + ra, b.cx + rb) - max(a.cx - ra, b.cx - rb))
    iy = max(0.0, min(a.cy + ra, b.cy + rb) - max(a.cy - ra, b.cy - rb))
    inter = ix * iy
    return inter / (a.side ** 2 + b.side ** 2 - inter)


def _warm_up_image() -> np.ndarray:
    """A real face where one ships with the installed packages: the mesh's landmark stage only runs on a face."""
    try:
        from .bundled import bundled_faces

        return cv2.resize(next(iter(bundled_faces().values())), (256, 256), interpolation=cv2.INTER_AREA)
    except (RuntimeError, OSError):
        return np.zeros((64, 64, 3), np.uint8)


class FaceDetector:
    """Not thread-safe (mediapipe graphs are not): one per worker."""

    def __init__(self, min_face: int = 72, min_score: float = 0.5):
        problem = faces_unavailable()
        if problem:
            raise FaceDetectorUnavailable(problem)
        import mediapipe as mp

        self.min_face = int(min_face)
        solutions = mp.solutions
        with _without_mediapipe_chatter():  # building and first running each graph logs it
            self._detector = solutions.face_detection.FaceDetection(model_selection=1,  # full range
                                                                    min_detection_confidence=min_score)
            self._mesh = solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                                      refine_landmarks=False, min_detection_confidence=min_score)
            self._person = solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
            sample = _warm_up_image()
            for graph in (self._detector, self._mesh, self._person):
                graph.process(sample)

    def close(self) -> None:
        """Stop the graphs and join their threads: left to interpreter exit, a still-joinable one aborts it."""
        for graph in (self._detector, self._mesh, self._person):
            graph.close()

    def detect(self, rgb8: np.ndarray) -> list[DetectedFace]:
        """Faces in an (H, W, 3) uint8 RGB frame, largest first."""
        h, w = rgb8.shape[:2]
        candidates = []
        for x, y, side in scan_squares(w, h, self.min_face):
            candidates += self._detections(rgb8[y:y + side, x:x + side], x, y)
        candidates.sort(key=lambda c: -c[1])
        faces: list[DetectedFace] = []
        for frame, score in candidates:
            if any(iou(frame, f.frame) > 0.3 for f in faces):
                continue
            face = self.landmarks(rgb8, frame, score)
            if face.size >= self.min_face and not any(iou(face.frame, f.frame) > 0.3 for f in faces):
                faces.append(face)
        return sorted(faces, key=lambda f: -f.frame.side)

    def _detections(self, square: np.ndarray, x0: int, y0: int) -> list:
        result = self._detector.process(np.ascontiguousarray(square))
        sh, sw = square.shape[:2]
        out = []
        for d in result.detections or []:
            b = d.location_data.relative_bounding_box
            # keypoints: the subject's right eye (on the image's left in a frontal face), left eye, nose, ...
            right, left = d.location_data.relative_keypoints[:2]
            angle = math.atan2((left.y - right.y) * sh, (left.x - right.x) * sw)
            box = (b.xmin * sw + x0, b.ymin * sh + y0, b.width * sw, b.height * sh)
            out.append((frame_from_box(box, angle), float(d.score[0])))
        return out

    def landmarks(self, rgb8: np.ndarray, guess: FaceFrame, score: float) -> DetectedFace:
        """The face near `guess` read by the face mesh on a crop around it (a few ms, against tens for `detect` on a
        large frame: what tracking runs); landmarks None and `guess` kept as the frame when the mesh sees no face."""
        look = FaceFrame(guess.cx, guess.cy, guess.side * 1.1, guess.angle)
        crop = look.crop(rgb8, MESH_SIZE)
        result = self._mesh.process(crop)
        if not result.multi_face_landmarks:
            return DetectedFace(guess, score, None)
        marks = result.multi_face_landmarks[0].landmark
        pts = np.array([[p.x * MESH_SIZE - 0.5, p.y * MESH_SIZE - 0.5] for p in marks], np.float64)
        back = look.to_image(MESH_SIZE)
        xy = pts @ back[:, :2].T + back[:, 2] + 0.5  # pixel indices -> continuous image coordinates
        return DetectedFace(frame_from_landmarks(xy), score, xy.astype(np.float32))

    def person(self, crop_rgb8: np.ndarray) -> np.ndarray:
        """Person-segmentation probabilities for a face crop: lets the paste mask follow the hair."""
        return self._person.process(crop_rgb8).segmentation_mask
