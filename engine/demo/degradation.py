"""The Degrade → Restore tab's one tie to `training/`: the face crop, face regions and degradation that training
pairs are made with, imported when the tab is first used.

Optional by design: the engine Blender installs is the wheel, which leaves `training/` out, so there the page hides
the tab and a call says what is missing. tests/test_layout.py keeps this the only module of the engine that imports
training; what the page and training both need lives below both (engine/measure/).
"""
from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np

NEEDS_TRAINING = ("Degrade → Restore needs the `training` package of a Splat Restore checkout "
                  "(python -m pip install -e \".[training]\")")


class TrainingMissing(RuntimeError):
    """str() is the sentence the page shows."""


def training_available() -> bool:
    return importlib.util.find_spec("training") is not None


def _training() -> SimpleNamespace:
    try:
        from training.degrade import DegradeConfig, degrade
        from training.face_regions import make_parser, whole_image
        from training.prepare import crop_with_regions
    except ImportError as e:  # no training/, or one of its own dependencies (mediapipe, ...) missing
        missing = "" if (e.name or "").split(".")[0] == "training" else f" and {e.name or e}"
        raise TrainingMissing(f"{NEEDS_TRAINING}{missing}, which this engine lacks") from None
    return SimpleNamespace(DegradeConfig=DegradeConfig, degrade=degrade, make_parser=make_parser,
                           whole_image=whole_image, crop_with_regions=crop_with_regions)


class TrainingDegradation:
    """A clean image -> its face crop at the model's size, then that crop damaged as training pairs are."""

    def __init__(self):
        self._parser = None  # (parser, why), made on first use: a face parser takes seconds to load

    def crop(self, image: np.ndarray, size: int) -> tuple[np.ndarray, object, list[str]]:
        """(uint8 crop, its face regions, notes for the page) of a uint8 RGB image. Not for two threads at once
        (mediapipe's graphs)."""
        training = _training()
        if self._parser is None:
            self._parser = training.make_parser("auto")
        parser, why = self._parser
        notes = [] if parser.name != "none" else [f"face parser: {why}"]
        crop, regions = training.crop_with_regions(image, parser, size)
        if not regions.found:
            regions = training.whole_image(crop, parser.name)
            notes.append("no face found: the centre was cropped and degraded as one region")
        return crop, regions, notes

    def degrade(self, crop: np.ndarray, regions, seed: int) -> np.ndarray:
        """The crop damaged by the training degradation, seeded: the same seed gives the same damage."""
        training = _training()
        face_size = max(regions.box[2:]) if regions.found else None
        degraded, _, _ = training.degrade(crop, regions.masks, int(seed), training.DegradeConfig(), face_size)
        return degraded
