"""A reference photo of the person, prepared once for a run: its pixels, and its face cut like the frames' faces.

Weights that take a reference (Difix-ref, our `--reference` training) attend over the frame's and the reference's
tokens together, so the two views should show the face alike. Face crops are cut from frames with the training
framing (align.FaceFrame); the reference's face is cut with the very same framing, once, and given beside every
face crop. Whole and tiled frames get the whole photo (the runner fits it to each model call's shape).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from blender_addon.engine_link.scan import path_problem, printable

from ..images import ImageError, read_image


def reference_error(message: str) -> Exception:
    """engine.runtime's ReferenceError (the CLI turns it into one `error:` line, exit 2), imported when needed so
    that this module loads without torch."""
    from ..runtime import ReferenceError

    return ReferenceError(message)


@dataclass(eq=False)
class Reference:
    """rgb: float32 (H, W, 3) in [0, 1]; name: how messages name it (the path as given)."""
    rgb: np.ndarray
    name: str = "reference photo"
    # the face crop, per crop size, once found: None there means "looked, no face" (so it is never looked for twice)
    faces: dict = field(default_factory=dict)

    def face(self, size: int, detector) -> np.ndarray:
        """The reference's largest face cut at size x size with the frames' framing; ReferenceError without one."""
        if size not in self.faces:
            found = detector.detect(cv2.convertScaleAbs(self.rgb, alpha=255.0))
            # the largest face (detect sorts by side): a photo of the person, perhaps with others smaller behind
            self.faces[size] = np.ascontiguousarray(found[0].frame.crop(self.rgb, size)) if found else None
        crop = self.faces[size]
        if crop is None:
            raise reference_error(f"reference photo {self.name}: no face found in it; face-aware restore needs the "
                                  f"person's face in the reference (a photo where the face is at least "
                                  f"{getattr(detector, 'min_face', 72)} pixels), or restore whole frames (--faces "
                                  f"off)")
        return crop


def load_reference(path: str | os.PathLike) -> Reference:
    """The reference photo at `path`, or ReferenceError naming the file and the problem."""
    path = Path(path)
    problem = path_problem(path)
    if problem:
        raise reference_error(f"reference photo {printable(path)}: {problem}")
    try:
        if path.is_dir():
            raise reference_error(f"reference photo {path}: is a folder, not an image")
        frame = read_image(path)
    except ImageError as e:
        raise reference_error(f"reference photo {e}") from None
    except OSError as e:
        raise reference_error(f"reference photo {path}: cannot read: {e.strerror or e}") from None
    return Reference(np.ascontiguousarray(frame.rgb, np.float32), str(path))


def cannot_use(name: str, weights: str = "these weights", how: str = "leave the reference out") -> str:
    """Why a reference given to weights that take none is refused."""
    return (f"reference photo {name} given, but {weights} cannot use one: restoring with a reference needs weights "
            f"that take one (nvidia/difix_ref, or weights trained with --reference); {how}")


def needs_one(weights: str = "these weights", how: str = "pass --reference PHOTO (add-on: Reference Photo in the "
                                                           "Splat Restore panel)") -> str:
    """Why weights that take a reference refuse frames sent without one."""
    return f"{weights} need a reference photo of the person and none was given: {how}"


class ReferenceCache:
    """The last `size` reference photos, keyed by path, modification time and size: a photo named by many requests
    is read once (and its face found once, and the runner encodes the same array once), and a photo replaced on disk
    is read again. A photo that cannot be read is not kept: the next request that names it is told again. Photos are
    held as float32 (12 bytes a pixel), so the cache also keeps to `max_pixels` in all (the newest is always kept):
    four 24-megapixel camera photos would hold over a gigabyte."""

    def __init__(self, size: int = 4, max_pixels: int = 48_000_000):
        self.size, self.max_pixels = size, max_pixels
        self.entries: dict = {}  # key -> Reference, oldest first
        self.loads = 0  # photos read from disk, for tests and logs

    def get(self, path: str | os.PathLike) -> Reference:
        try:
            st = os.stat(path)
            key = (os.path.normcase(os.path.abspath(path)), st.st_mtime_ns, st.st_size)
        except (OSError, ValueError):  # missing, or a path no file can have: load_reference names the problem
            key = None
        if key in self.entries:
            self.entries[key] = self.entries.pop(key)  # now the newest
            return self.entries[key]
        self.loads += 1
        reference = load_reference(path)
        if key is not None:
            self.entries[key] = reference
            while len(self.entries) > 1 and (len(self.entries) > self.size or self._pixels() > self.max_pixels):
                del self.entries[next(iter(self.entries))]
        return reference

    def _pixels(self) -> int:
        return sum(r.rgb.shape[0] * r.rgb.shape[1] for r in self.entries.values())
