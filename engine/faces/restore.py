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

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from blender_addon.engine_link.protocol import FACE_MODES as MODES

from .align import blend_mask, paste_changes
from .reference import Reference, cannot_use, needs_one, reference_error

PERSON_SIZE = 256  # the selfie segmenter reads 256 x 256; a larger crop only costs time


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
class Timings:
    """Seconds spent per stage, summed over calls; the benchmark prints them per frame."""
    detect: float = 0.0
    align: float = 0.0
    model: float = 0.0
    paste: float = 0.0
    frames: int = 0


class FramePipeline:
    """A ModelRunner plus the face pipeline. `restore(images, modes)` takes float32 (H, W, 3) frames in [0, 1]."""

    def __init__(self, runner, min_face: int = 72, detector=None):
        self.runner = runner
        self.min_face = int(min_face)
        self._detector, self._detector_given = detector, detector is not None
        self.timings = Timings()
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

    def reference_face(self) -> np.ndarray:
        """The reference's face at the model's size, framed as the frames' faces are; ReferenceError without one."""
        t = time.perf_counter()
        try:
            return self.reference.face(self.size, self.detector)
        finally:
            self.timings.align += time.perf_counter() - t

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

    @property
    def detector(self):
        if self._detector is None:
            from .detect import FaceDetector

            self._detector = FaceDetector(self.min_face)
        return self._detector

    def close(self) -> None:
        """Close the face detector this made (its graphs' native threads); a later face frame opens a new one."""
        if self._detector is not None and not self._detector_given:
            self._detector.close()
            self._detector = None

    def uses_faces(self, image: np.ndarray, mode: str) -> bool:
        if mode not in MODES:
            raise ValueError(f"unknown faces mode {mode!r}; use {', '.join(MODES)}")
        return self.needs_faces(image.shape[1::-1], mode)

    def restore(self, images: list[np.ndarray], modes: list[str]) -> list[FrameResult]:
        results: list[FrameResult | None] = [None] * len(images)
        whole = [i for i, (img, m) in enumerate(zip(images, modes)) if not self.uses_faces(img, m)]
        if whole:
            t = time.perf_counter()
            for i, rgb in zip(whole, self.runner.restore([images[i] for i in whole], **self._whole_reference())):
                results[i] = FrameResult(rgb, "whole")
            self.timings.model += time.perf_counter() - t
        found = {}  # frame index -> [(DetectedFace, crop, mask)]
        for i, img in enumerate(images):
            if results[i] is None:
                found[i] = self._cut_faces(img)
        crops = [c for faces in found.values() for _, c, _ in faces]
        t = time.perf_counter()
        restored = iter(self.runner.restore(crops, tiled=False, **self._face_reference()) if crops else [])
        self.timings.model += time.perf_counter() - t
        t = time.perf_counter()
        for i, faces in found.items():
            after = [next(restored) for _ in faces]
            reports = [FaceReport(_box(f.frame.extent()), self.size / f.frame.side, f.score,
                                  f.landmarks is not None) for f, _, _ in faces]
            if modes[i] == "only-crops":
                results[i] = FrameResult(None, "faces", reports, after)
            else:
                changes = [(f.frame, a - c, m) for (f, c, m), a in zip(faces, after)]
                results[i] = FrameResult(paste_changes(images[i], changes), "faces", reports)
        self.timings.paste += time.perf_counter() - t
        self.timings.frames += len(images)
        return results

    def _whole_reference(self) -> dict:
        """The runner's reference argument for whole and tiled frames: the whole photo (none: no argument, so a
        runner that takes none is called as before)."""
        return {} if self.reference is None else {"reference": self.reference.rgb}

    def _face_reference(self) -> dict:
        return {} if self.reference is None else {"reference": self.reference_face()}

    def _cut_faces(self, image: np.ndarray) -> list:
        t = time.perf_counter()
        rgb8 = cv2.convertScaleAbs(image, alpha=255.0)  # rounds and saturates; 10x faster than numpy here
        faces = self.detector.detect(rgb8)
        t2 = time.perf_counter()
        self.timings.detect += t2 - t
        out = []
        for face in faces:
            crop = face.frame.crop(image, self.size)
            to_crop = face.frame.to_crop(self.size)
            xy = None
            if face.landmarks is not None:
                xy = (face.landmarks - 0.5) @ to_crop[:, :2].T + to_crop[:, 2]
            person = self.detector.person(face.frame.crop(rgb8, PERSON_SIZE))
            out.append((face, crop, blend_mask(self.size, xy, person)))
        self.timings.align += time.perf_counter() - t2
        return out


def _box(extent) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = extent
    return x0, y0, x1 - x0, y1 - y0
