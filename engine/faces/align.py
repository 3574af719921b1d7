"""Where a face's crop lies in a frame, how pixels move between the two, and how a restored crop goes back.

One framing for training and inference: a square around the face's landmarks, eyes level, FACE_MARGIN times the
face's larger side, lifted a little toward the hair. `training.prepare` cuts its pairs with `FaceFrame.crop`, the
engine cuts and pastes with the same object, so the model sees at inference the framing it learned.

Pasting adds the *change* the model made (restored crop minus the crop it was given), warped back and feathered,
instead of the restored pixels: where the model changes nothing the frame keeps its exact values, so there is no
seam, halo or colour shift from resampling, and detail finer than the crop can hold stays as it was.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

FACE_MARGIN = 2.0  # crop side = this x the face's larger side: room for hair and chin
HEAD_LIFT = 0.1  # the crop's centre sits this fraction of the face's height above the face's: hair over neck
# mediapipe face-mesh indices of the eye corners: (outer, inner) of the eye on the image's left, then right
LEFT_EYE, RIGHT_EYE = (33, 133), (362, 263)


@dataclass(frozen=True)
class FaceFrame:
    """A square in image pixel space (continuous coordinates: pixel i spans [i, i+1)), turned by `angle`."""
    cx: float
    cy: float
    side: float
    angle: float = 0.0  # radians, the eye line's direction in the image

    def to_crop(self, size: int) -> np.ndarray:
        """2x3 affine from image pixel indices to the indices of a size x size crop."""
        k = size / self.side
        c, s = math.cos(self.angle), math.sin(self.angle)
        a = np.array([[c, s], [-s, c]]) * k  # rotate by -angle so the eyes come out level
        t = a @ (np.array([0.5, 0.5]) - [self.cx, self.cy]) + size / 2 - 0.5
        return np.hstack([a, t[:, None]])

    def to_image(self, size: int) -> np.ndarray:
        return cv2.invertAffineTransform(self.to_crop(size))

    def corners(self) -> np.ndarray:
        c, s, h = math.cos(self.angle), math.sin(self.angle), self.side / 2
        offsets = np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
        return offsets @ np.array([[c, s], [-s, c]]) + [self.cx, self.cy]

    def extent(self) -> tuple[int, int, int, int]:
        """The integer pixel rectangle (x0, y0, x1, y1) around the (turned) square; may leave the image."""
        pts = self.corners()
        (x0, y0), (x1, y1) = np.floor(pts.min(0)).astype(int), np.ceil(pts.max(0)).astype(int)
        return int(x0), int(y0), int(x1), int(y1)

    def bounds(self, width: int, height: int, pad: int = 2) -> tuple[int, int, int, int] | None:
        """extent() grown by pad (for the interpolation kernel) and clipped to a width x height image."""
        x0, y0, x1, y1 = self.extent()
        x0, y0, x1, y1 = max(0, x0 - pad), max(0, y0 - pad), min(width, x1 + pad), min(height, y1 + pad)
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None

    def crop(self, image: np.ndarray, size: int) -> np.ndarray:
        """The size x size crop; where the square leaves the image, the image is mirrored (as in training)."""
        return warp_similarity(image, self.to_crop(size), size, size, cv2.BORDER_REFLECT_101)


def frame_from_box(box, angle: float = 0.0) -> FaceFrame:
    """From a face box (x, y, w, h) measured along the face's own axes (image axes when angle is 0)."""
    x, y, w, h = box
    return FaceFrame(x + w / 2, y + h / 2 - HEAD_LIFT * h, FACE_MARGIN * max(w, h), angle)


def frame_from_landmarks(xy: np.ndarray) -> FaceFrame:
    """From mediapipe face-mesh landmarks (468 or 478 points, image coordinates): eyes level, box of all points."""
    xy = np.asarray(xy, np.float64)
    left, right = xy[list(LEFT_EYE)].mean(0), xy[list(RIGHT_EYE)].mean(0)
    angle = math.atan2(right[1] - left[1], right[0] - left[0])
    c, s = math.cos(angle), math.sin(angle)
    along = xy @ np.array([[c, -s], [s, c]])  # coordinates along the face's axes
    lo, hi = along.min(0), along.max(0)
    w, h = hi - lo
    centre = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2 - HEAD_LIFT * h]) @ np.array([[c, s], [-s, c]])
    return FaceFrame(float(centre[0]), float(centre[1]), float(FACE_MARGIN * max(w, h)), angle)


def centre_frame(width: int, height: int) -> FaceFrame:
    """The largest centred square: the framing for images without a face."""
    return FaceFrame(width / 2, height / 2, float(min(width, height)))


def warp_similarity(src: np.ndarray, m: np.ndarray, width: int, height: int, border: int) -> np.ndarray:
    """cv2.warpAffine for a similarity `m` (src indices -> dst indices) that also shrinks without aliasing.

    warpAffine samples 4x4 source pixels per output pixel whatever the scale, so a strong reduction first averages
    the part of `src` that is needed with INTER_AREA, then turns and places it.
    """
    k = math.sqrt(abs(np.linalg.det(m[:, :2])))
    if k < 0.8:
        inv = cv2.invertAffineTransform(m)
        corners = np.array([[0, 0, 1], [width, 0, 1], [width, height, 1], [0, height, 1]], np.float64) @ inv.T
        x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int) - 2, 0)
        x1 = min(src.shape[1], int(np.ceil(corners[:, 0].max())) + 2)
        y1 = min(src.shape[0], int(np.ceil(corners[:, 1].max())) + 2)
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            part = src[y0:y1, x0:x1]
            rw, rh = max(1, round(part.shape[1] * k)), max(1, round(part.shape[0] * k))
            sx, sy = rw / part.shape[1], rh / part.shape[0]
            small = cv2.resize(part, (rw, rh), interpolation=cv2.INTER_AREA)
            # index p in `part` sits at (p + 0.5) * s - 0.5 in `small`
            to_small = np.array([[sx, 0, (0.5 - x0) * sx - 0.5], [0, sy, (0.5 - y0) * sy - 0.5]])
            small_to_src = cv2.invertAffineTransform(to_small)
            m = m @ np.vstack([small_to_src, [0, 0, 1]])
            src = small
            # a reflected border now mirrors at the cut-out's edge, which is the image's edge wherever the
            # crop leaves the image (elsewhere the cut-out already covers everything the crop needs)
    flags = cv2.INTER_CUBIC if k > 1.2 else cv2.INTER_LINEAR
    out = cv2.warpAffine(src, m, (width, height), flags=flags, borderMode=border, borderValue=0)
    return out if out.ndim == src.ndim else out[..., None]


def paste_changes(image: np.ndarray, changes: list[tuple[FaceFrame, np.ndarray, np.ndarray]]) -> np.ndarray:
    """`image` (H, W, 3) float32 plus each face's feathered change, warped back; overlaps are averaged.

    changes: (frame, change (S, S, 3) = restored - given, mask (S, S) in [0, 1]) per face.
    """
    h, w = image.shape[:2]
    out = image.copy()
    parts = []
    for frame, change, mask in changes:
        rect = frame.bounds(w, h)
        if rect is None:
            continue
        x0, y0, x1, y1 = rect
        m = frame.to_image(change.shape[0])
        m[:, 2] -= (x0, y0)
        weighted = np.empty(change.shape[:2] + (4,), np.float32)
        np.multiply(change, mask[..., None], out=weighted[..., :3])
        weighted[..., 3] = mask
        parts.append((rect, warp_similarity(weighted, m, x1 - x0, y1 - y0, cv2.BORDER_CONSTANT)))
    if not parts:
        return out
    ux0, uy0 = min(r[0] for r, _ in parts), min(r[1] for r, _ in parts)
    ux1, uy1 = max(r[2] for r, _ in parts), max(r[3] for r, _ in parts)
    acc = np.zeros((uy1 - uy0, ux1 - ux0, 4), np.float32)
    for (x0, y0, x1, y1), warped in parts:
        acc[y0 - uy0:y1 - uy0, x0 - ux0:x1 - ux0] += warped
    region = out[uy0:uy1, ux0:ux1]
    region += acc[..., :3] / np.maximum(acc[..., 3:], 1.0)
    np.clip(region, 0.0, 1.0, out=region)
    return out


def blend_mask(size: int, face_xy: np.ndarray | None = None, person: np.ndarray | None = None) -> np.ndarray:
    """Where a crop's change is kept, in crop coordinates: the face and its hair, feathered, zero at the border.

    face_xy: the face's landmarks in crop coordinates (None: the canonical face position, an ellipse);
    person: a person-segmentation probability map of the crop (any size), which lets the mask follow the hair.
    Drawn at a quarter of the size: the mask is smooth, and full-size blurring cost more than detection.
    """
    q = max(16, size // 4)
    k = q / size
    feather = max(2.0, size * 0.03)
    region = np.zeros((q, q), np.uint8)
    if face_xy is not None:
        pts = (np.asarray(face_xy, np.float32) + 0.5) * k - 0.5
        cv2.fillConvexPoly(region, cv2.convexHull(np.round(pts).astype(np.int32)), 1)
        (fx0, fy0), (fx1, fy1) = pts.min(0), pts.max(0)
    else:  # the framing puts the face box, half the crop wide, at the centre lifted by HEAD_LIFT
        half = q / (2 * FACE_MARGIN)
        cy = q / 2 + HEAD_LIFT * 2 * half
        fx0, fx1, fy0, fy1 = q / 2 - half, q / 2 + half, cy - half, cy + half
        cv2.ellipse(region, (round(q / 2), round(cy)), (round(half), round(half * 1.15)), 0, 0, 360, 1, -1)
    fw, fh = fx1 - fx0, fy1 - fy0
    # the head above and beside the face, down to the chin: hair lives here, shoulders and clothes do not
    head = np.zeros_like(region)
    cv2.ellipse(head, (round((fx0 + fx1) / 2), round(fy0 + 0.45 * fh)), (round(0.8 * fw), round(0.95 * fh)),
                0, 0, 360, 1, -1)
    head[int(min(q, fy1 + 0.05 * fh)):] = 0
    person = None if person is None else cv2.resize(person, (q, q), interpolation=cv2.INTER_AREA) > 0.5
    if person is not None and person.any():
        hair = head & person.astype(np.uint8)
    else:
        hair = np.zeros_like(region)
        cv2.ellipse(hair, (round((fx0 + fx1) / 2), round(fy0 + 0.3 * fh)), (round(0.62 * fw), round(0.62 * fh)),
                    0, 180, 360, 1, -1)
    region = cv2.morphologyEx(region | hair, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    mask = cv2.resize(cv2.GaussianBlur(region.astype(np.float32), (0, 0), feather * k), (size, size),
                      interpolation=cv2.INTER_LINEAR)
    # nothing reaches the crop's own border, so the square never shows
    ramp = np.minimum(np.arange(size) + 0.5, size - 0.5 - np.arange(size)) / (2 * feather)
    ramp = np.clip(ramp - 0.5, 0.0, 1.0).astype(np.float32)
    return mask * ramp[:, None] * ramp[None, :]
