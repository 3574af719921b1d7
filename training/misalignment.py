"""How well a photo lines up with its render: dense optical flow both ways, checked forward-backward, on the pixels
where flow can be trusted; plus the exposure and sharpness differences a trainer would otherwise learn as "restoring".

Why these choices:
- The flow runs render -> photo (OpenCV DIS, the `medium` preset, variational refinement on), so a photo whose content
  moved right 3 px and up 2 px measures (3, -2). DIS reads 8-bit grey: the photo's grey is first given the render's
  mean and contrast, because a render and a photo differ in exposure and DIS's refinement assumes equal brightness.
- Images longer than MEASURE_SIDE px are measured on an INTER_AREA copy and the flow is scaled back: a 1080p frame
  then costs what a 1024 px one does, and the copy's averaging quietens the photo's noise and the render's sampling
  noise, which make flow between two different images noisy. Sub-pixel accuracy is kept (DIS is ~0.1 px on texture).
- Only textured pixels count (the structure tensor's smaller eigenvalue over a 7x7 window above both a floor and 5 %
  of its 99th percentile): in flat areas the flow is whatever the solver propagated there, not a measurement, and a
  studio's render is mostly background. Of those, only the pixels that pass the forward-backward test (the temporal
  code's `consistency_mask`) are measured; `valid_share` is that share, and a low one means render and photo do not
  show the same thing there (occlusions, wrong geometry, another frame of a moving subject).
- Sharpness is the variance of the Laplacian of the grey image (the common focus measure), in 8-bit units, taken on
  a half-size copy with the noise's share removed (see `sharpness`), so that render noise (few samples) and photo
  noise (sensor) do not pass for detail: the photo is the target, so it should be the sharper of the two.
"""
from __future__ import annotations

import cv2
import numpy as np

from engine.temporal.flow import consistency_mask

MEASURE_SIDE = 1024  # longer images are measured on a copy this long, and the flow scaled back
MIN_SIDE = 16  # DIS's smallest input (its patches are 8 px, its coarsest level 2x that)
TEXTURE_FLOOR = 2e-4  # smaller eigenvalue, grey in [0, 1]: about 4x what sigma-0.02 noise gives


def grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32, copy=False), cv2.COLOR_RGB2GRAY)


def working_scale(shape: tuple) -> float:
    """The factor (<= 1) of the copy flow is measured on."""
    return min(1.0, MEASURE_SIDE / max(shape[:2]))


def shrink(image: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return image
    h, w = image.shape[:2]
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def matched(photo: np.ndarray, render: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """`photo` grey with the render's mean and contrast (over `valid` pixels where given)."""
    sel = (slice(None),) if valid is None else (valid,)
    p, r = photo[sel], render[sel]
    if p.size == 0:
        return photo
    gain = float(r.std()) / max(float(p.std()), 1e-6)
    return (photo - float(p.mean())) * gain + float(r.mean())


def to8(g: np.ndarray) -> np.ndarray:
    return np.clip(g * 255 + 0.5, 0, 255).astype(np.uint8)


def textured(g: np.ndarray) -> np.ndarray:
    """Pixels whose neighbourhood pins the flow down in both directions (corners, texture; not flat areas or the
    middle of a straight edge)."""
    eig = cv2.cornerMinEigenVal(cv2.GaussianBlur(g, (0, 0), 1.0), 7, ksize=3)
    return eig > max(TEXTURE_FLOOR, 0.05 * float(np.percentile(eig, 99)))


class TooSmall(ValueError):
    pass


class Flow:
    """Render -> photo flow on the working copy (`forward`, in working px), its reverse, and which pixels pass the
    forward-backward test. `scale` turns working px into full-size px (divide by it)."""

    def __init__(self, render_g: np.ndarray, photo_g: np.ndarray, valid: np.ndarray | None = None):
        if min(render_g.shape[:2]) < MIN_SIDE:
            h, w = render_g.shape[:2]
            raise TooSmall(f"{w}x{h} is too small to measure alignment on (at least {MIN_SIDE} px a side)")
        self.scale = working_scale(render_g.shape)
        r, p = shrink(render_g, self.scale), shrink(photo_g, self.scale)
        v = None if valid is None else shrink(valid.astype(np.float32), self.scale) > 0.99
        p = matched(p, r, v)
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        r8, p8 = to8(r), to8(p)
        self.forward = dis.calc(r8, p8, None)
        self.backward = dis.calc(p8, r8, None)
        self.consistent = consistency_mask(self.forward, self.backward)
        self.textured = textured(r)
        self.valid = v  # the photo's own valid pixels (an aligned photo's mask), or None
        self.render, self.photo = r, p


def noise_sigma(g: np.ndarray) -> float:
    """The grey image's white-noise sigma in 8-bit units: the median absolute finest diagonal Haar coefficient over
    0.6745 (Donoho & Johnstone 1994); the median keeps edges and texture, which cover a minority of pixels, out."""
    h, w = g.shape[0] // 2 * 2, g.shape[1] // 2 * 2
    q = g[:h, :w] * 255
    hh = (q[0::2, 0::2] - q[0::2, 1::2] - q[1::2, 0::2] + q[1::2, 1::2]) / 2
    return float(np.median(np.abs(hh)) / 0.6745) if hh.size else 0.0


def sharpness(g: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Variance of the Laplacian (8-bit units) on a half-size copy, less what the copy's own noise puts into it
    (20 sigma^2: the 4-neighbour Laplacian's gain on white noise). Measured at full size, noise decides: a render
    with fewer samples would "beat" a sharp photo, and a noisy blurred photo would pass; halving averages noise away
    and keeps edges, and the noise term removes the rest."""
    if min(g.shape[:2]) >= 32:
        g = cv2.resize(g, (g.shape[1] // 2, g.shape[0] // 2), interpolation=cv2.INTER_AREA)
        if valid is not None:
            valid = cv2.resize(valid.astype(np.float32), g.shape[1::-1], interpolation=cv2.INTER_AREA) > 0.99
    lap = cv2.Laplacian(g * 255, cv2.CV_32F, ksize=1)
    var = float(lap[valid].var() if valid is not None and valid.any() else lap.var())
    return max(0.0, var - 20 * noise_sigma(g) ** 2)


def exposure_ratio(render: np.ndarray, photo: np.ndarray, valid: np.ndarray | None = None) -> list:
    """Per channel (R, G, B) mean of the photo over mean of the render; None for a channel the render barely has
    (mean under 2 %), where a ratio says nothing."""
    sel = (slice(None),) if valid is None or not valid.any() else (valid,)
    out = []
    for c in range(3):
        r, p = float(render[..., c][sel].mean()), float(photo[..., c][sel].mean())
        out.append(round(p / r, 4) if r >= 0.02 else None)
    return out


def measure(render: np.ndarray, photo: np.ndarray, valid: np.ndarray | None = None) -> dict:
    """Misalignment, exposure and sharpness of one pair: float RGB in [0, 1] of one size; `valid` (bool, optional)
    marks the photo pixels that hold data (an aligned photo's mask)."""
    rg, pg = grey(render), grey(photo)
    flow = Flow(rg, pg, valid)
    textured_px = flow.textured if flow.valid is None else flow.textured & flow.valid
    good = textured_px & flow.consistent
    result = {"textured_share": round(float(textured_px.mean()), 4),
              "valid_share": round(float(good.sum()) / max(1, int(textured_px.sum())), 4),
              "median_px": None, "p95_px": None, "shift_px": None}
    if good.any():
        d = flow.forward[good] / flow.scale
        magnitude = np.hypot(d[:, 0], d[:, 1])
        result |= {"median_px": round(float(np.median(magnitude)), 3),
                   "p95_px": round(float(np.percentile(magnitude, 95)), 3),
                   "shift_px": [round(float(np.median(d[:, 0])), 3), round(float(np.median(d[:, 1])), 3)]}
    result |= {"exposure_ratio": exposure_ratio(render, photo, valid),
               "sharpness_render": round(sharpness(rg, valid), 2), "sharpness_photo": round(sharpness(pg, valid), 2),
               "noise_render": round(noise_sigma(rg), 2), "noise_photo": round(noise_sigma(pg), 2),
               "measured_at": [flow.render.shape[1], flow.render.shape[0]]}
    return result
