"""Face-aware restore: find each face, restore it at the model's size in one batch with the others, paste it back.

The restorer learned aligned face crops; a head-and-shoulders or full-body frame tiled at the model's size would
show it clothes and background it never saw, and give a small face too few pixels. So frames larger than the model
(mode "auto") have their faces cut out with the training framing, restored together, and pasted back as feathered
changes; everything else in the frame keeps its exact values. Frames no larger than the model are already crops
and are restored whole, as is every frame in mode "off" (tiled when large).

Weights that take a reference photo (reference.py) get the whole photo beside whole and tiled frames, and the
photo's face, cut with the same framing as the frames' faces, beside each face crop.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from blender_addon.engine_link.protocol import FACE_MODES as MODES

from .align import blend_mask, paste_changes
from .reference import Reference, cannot_use, needs_one, reference_error

PERSON_SIZE = 256  # the selfie segmenter reads 256 x 256; a larger crop only costs time
DETECT_EVERY = 12  # animation frames between full face detections; tracked in between (faces.track)


@dataclass
class FaceReport:
    box: tuple[int, int, int, int]  # the crop's square in the frame, axis-aligned bounds (x, y, w, h)
    scale: float  # model pixels per frame pixel: > 1 the face was enlarged to restore it, < 1 reduced
    score: float
    landmarks: bool  # False: framed from the detector's keypoints (the mesh could not read the face)

    def to_dict(self) -> dict:
        return {"box": list(self.box), "scale": round(self.scale, 3), "score": round(self.score, 3),
                "landmarks": self.landmarks}


@dataclass
class FrameResult:
    rgb: np.ndarray | None  # the frame to write; None in only-crops mode
    mode: str  # "whole" or "faces"
    faces: list[FaceReport] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)  # restored crops (only-crops mode)

    @property
    def note(self) -> str:
        if self.mode == "faces" and not self.faces:
            return "no face found; " + ("nothing written" if self.rgb is None else "frame written unchanged")
        return ""


@dataclass
class Prepared:
    """A frame ready for the model: whole (faces None), or its faces cut: [(DetectedFace, crop, paste mask)]."""
    image: np.ndarray
    mode: str
    faces: list | None = None


@dataclass
class Timings:
    """Seconds spent per stage, summed over calls; the benchmark prints them per frame."""
    detect: float = 0.0
    align: float = 0.0
    model: float = 0.0
    paste: float = 0.0
    frames: int = 0


class FramePipeline:
    """A ModelRunner plus the face pipeline. `restore(images, modes)` takes float32 (H, W, 3) frames in [0, 1].

    Its three steps, `prepare` (faces found and cut), `run_model` and `finish` (pasted back), are what the pipelined
    frame path (engine/pipeline) runs on worker threads and the model's thread; `restore` runs them one after
    another. Threads preparing frames at once detect with face detectors of their own (mediapipe's graphs are not
    thread-safe); a detector given here is shared, one thread at a time. `detect_every`: animation frames (given a
    place) have their faces tracked from the frame before and detected afresh every that many frames (faces.track);
    1 detects every frame."""

    def __init__(self, runner, min_face: int = 72, detector=None, detect_every: int = DETECT_EVERY):
        from .track import FaceTracker

        self.runner = runner
        self.min_face = int(min_face)
        self._given = detector
        self._given_lock = threading.Lock()
        self._made: list = []  # every detector made here, closed by close()
        self._idle: list = []  # those of them no thread is using now
        self._made_lock = threading.Lock()
        self.tracker = FaceTracker(detect_every)
        self.timings = Timings()
        self._timing_lock = threading.Lock()
        self.reference: Reference | None = None

    @property
    def takes_reference(self) -> bool:
        return bool(getattr(self.runner, "takes_reference", False))

    def set_reference(self, reference: Reference | np.ndarray | None, name: str = "reference photo") -> None:
        """The photo given beside every frame from now on (None: none). Refused (ReferenceError) when the weights
        cannot use one. The same Reference object set again keeps its face, found once."""
        if reference is not None and not isinstance(reference, Reference):
            reference = Reference(np.ascontiguousarray(reference, np.float32), name)
        if reference is not None and not self.takes_reference:
            raise reference_error(cannot_use(reference.name, self.weights_name))
        self.reference = reference

    def reference_face(self, reference: Reference | None = None) -> np.ndarray:
        """The reference's face (default: the one set) at the model's size, framed as the frames' faces are;
        ReferenceError without one."""
        t = time.perf_counter()
        try:
            with self.detection() as detector:
                return (self.reference if reference is None else reference).face(self.size, detector)
        finally:
            self._spent("align", time.perf_counter() - t)

    def check_reference(self, needs_faces: bool) -> None:
        """Before a run: ReferenceError if these weights need a reference and none is set, or if frames will be
        cut into faces (`needs_faces`) and the reference has no face. (One given to weights that cannot use it
        was refused by set_reference.)"""
        if self.reference is None and self.takes_reference:
            raise reference_error(needs_one(self.weights_name))
        if self.reference is not None and needs_faces:
            self.reference_face()

    @property
    def weights_name(self) -> str:
        """How messages name the weights: by their source when the runner knows it."""
        info = getattr(self.runner, "info", None)
        return f"the weights {info.source}" if getattr(info, "source", None) else "these weights"

    @property
    def batch_size(self) -> int:
        return self.runner.batch_size

    @property
    def size(self) -> int:
        return self.runner.model_size

    @property
    def provenance(self) -> dict[str, str]:
        return self.runner.provenance

    def describe(self) -> dict:
        from .detect import faces_unavailable

        return {**self.runner.describe(), "faces": {"modes": list(MODES), "min_face": self.min_face,
                                                      "crop_size": self.size,
                                                      "available": faces_unavailable() is None},
                "takes_reference": self.takes_reference}

    def needs_faces(self, size: tuple[int, int] | None, mode: str) -> bool:
        """Whether a frame of `size` (width, height; None: unknown) goes through face detection in `mode`."""
        return mode == "only-crops" or (mode == "auto" and size is not None and max(size) > self.size)

    @contextlib.contextmanager
    def detection(self):
        """A detector for this thread to use alone: the given one (held by one thread at a time), else an idle one
        of those made here (one is made when all are busy), so a pool of workers keeps as many as run at once."""
        if self._given is not None:
            with self._given_lock:
                yield self._given
            return
        with self._made_lock:
            detector = self._idle.pop() if self._idle else None
        if detector is None:
            from .detect import FaceDetector

            detector = FaceDetector(self.min_face)
            with self._made_lock:
                self._made.append(detector)
        try:
            yield detector
        finally:
            with self._made_lock:
                if detector in self._made:  # not closed meanwhile
                    self._idle.append(detector)

    def close(self) -> None:
        """Close the face detectors this made (their graphs' native threads); a later face frame opens new ones.
        Called once no frame is being prepared."""
        with self._made_lock:
            made, self._made, self._idle = self._made, [], []
        for detector in made:
            detector.close()

    def uses_faces(self, image: np.ndarray, mode: str) -> bool:
        if mode not in MODES:
            raise ValueError(f"unknown faces mode {mode!r}; use {', '.join(MODES)}")
        return self.needs_faces(image.shape[1::-1], mode)

    def restore(self, images: list[np.ndarray], modes: list[str], places: list | None = None) -> list[FrameResult]:
        """Frames restored together: each prepared, one model pass for all, each finished. `places`: per frame
        (sequence, index) of an animation, whose faces are tracked from the frame before (None: a still)."""
        prepared = [self.prepare(img, m, p) for img, m, p in zip(images, modes, places or [None] * len(images))]
        return [self.finish(p, out) for p, out in zip(prepared, self.run_model(prepared))]

    def prepare(self, image: np.ndarray, mode: str, place: tuple | None = None,
                in_order=contextlib.nullcontext()) -> Prepared:
        """The CPU work before the model: find (or track) the frame's faces and cut them. Safe to run for several
        frames at once on worker threads. Tracking a sequence's faces must see its frames in order: it runs inside
        `in_order`, a context the caller makes wait for the frame before (the rest runs in any order)."""
        if not self.uses_faces(image, mode):
            return Prepared(image, mode)
        return Prepared(image, mode, self._cut_faces(image, place, in_order))

    def run_model(self, prepared: list[Prepared]) -> list:
        """One model pass for a group of prepared frames: whole frames together, then every face crop together.
        Per frame, its restored array (whole) or list of restored crops (faces)."""
        whole = [p.image for p in prepared if p.faces is None]
        crops = [c for p in prepared if p.faces is not None for _, c, _ in p.faces]
        t = time.perf_counter()
        whole = iter(self.runner.restore(whole, **self._whole_reference()) if whole else [])
        restored = iter(self.runner.restore(crops, tiled=False, **self._face_reference()) if crops else [])
        self._spent("model", time.perf_counter() - t)
        return [next(whole) if p.faces is None else [next(restored) for _ in p.faces] for p in prepared]

    def finish(self, prepared: Prepared, output) -> FrameResult:
        """The CPU work after the model: paste a frame's restored faces back (thread-safe)."""
        t = time.perf_counter()
        if prepared.faces is None:
            self._spent("paste", 0.0, frames=1)
            return FrameResult(output, "whole")
        faces = prepared.faces
        reports = [FaceReport(_box(f.frame.extent()), self.size / f.frame.side, f.score, f.landmarks is not None)
                   for f, _, _ in faces]
        if prepared.mode == "only-crops":
            result = FrameResult(None, "faces", reports, output)
        else:
            changes = [(f.frame, a - c, m) for (f, c, m), a in zip(faces, output)]
            result = FrameResult(paste_changes(prepared.image, changes), "faces", reports)
        self._spent("paste", time.perf_counter() - t, frames=1)
        return result

    def _spent(self, stage: str, seconds: float, frames: int = 0) -> None:
        with self._timing_lock:  # stages of several frames run on worker threads at once
            setattr(self.timings, stage, getattr(self.timings, stage) + seconds)
            self.timings.frames += frames

    def _whole_reference(self) -> dict:
        """The runner's reference argument for whole and tiled frames: the whole photo (none: no argument, so a
        runner that takes none is called as before)."""
        return {} if self.reference is None else {"reference": self.reference.rgb}

    def _face_reference(self) -> dict:
        return {} if self.reference is None else {"reference": self.reference_face()}

    def _cut_faces(self, image: np.ndarray, place: tuple | None, in_order) -> list:
        t = time.perf_counter()
        rgb8 = cv2.convertScaleAbs(image, alpha=255.0)  # rounds and saturates; 10x faster than numpy here
        with self.detection() as detector:
            if place is not None and self.tracker is not None:
                with in_order:
                    faces = self.tracker.faces(detector, rgb8, *place)
            else:
                faces = detector.detect(rgb8)
            t2 = time.perf_counter()
            out = []
            for face in faces:
                crop = face.frame.crop(image, self.size)
                to_crop = face.frame.to_crop(self.size)
                xy = None
                if face.landmarks is not None:
                    xy = (face.landmarks - 0.5) @ to_crop[:, :2].T + to_crop[:, 2]
                person = detector.person(face.frame.crop(rgb8, PERSON_SIZE))
                out.append((face, crop, blend_mask(self.size, xy, person)))
        self._spent("detect", t2 - t)
        self._spent("align", time.perf_counter() - t2)
        return out


def _box(extent) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = extent
    return x0, y0, x1 - x0, y1 - y0
