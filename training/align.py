"""Register a photo onto its render: a global affine by ECC, then a smooth dense correction from the residual flow,
and a validity mask of the pixels whose target cannot be trusted.

1. ECC (`cv2.findTransformECC`, Evangelidis & Psarakis 2008) on the working copy, coarse to fine over a pyramid,
   started from the flow's median shift (ECC only converges from nearby). Affine first; when it raises (no
   convergence) or lands on an implausible warp (scale or shear beyond 20 %, a shift past a fifth of the image), a
   Euclidean (rotation + shift), then a pure translation; a warp whose final correlation stays under
   ECC_MIN_CORRELATION fails too. When all three fail the photo is left as it was, with a reason naming each
   failure: it most likely shows something other than the render.
2. The residual flow (render -> affinely warped photo) is smoothed by normalised convolution over its consistent
   pixels (a Gaussian of 2 % of the image side): the dense warp follows that smooth field, which corrects what an
   affine cannot (lens distortion, a slightly different camera) but not the render's own local errors, which a
   restorer must not learn to reproduce as a distortion of the target.
3. Pixels where the target cannot be trusted are marked invalid: pixels textured in the render or the photo whose
   flow fails the forward-backward test or differs from the smooth field by more than SMOOTH_TOLERANCE (something
   moved locally, an occlusion, something one of them shows and the other does not), with the holes of a region
   that mostly fails, and pixels whose source lies outside the photo. Flat pixels (in both) are never marked for an
   inconsistent flow: the flow there is arbitrary, and so is any warp error, which cannot show. Limit: a difference
   of colour alone in a flat area (a flat object in the photo the render lacks) leaves the flow consistent and is
   not marked; telling it from a render error the restorer should learn to fix takes more than flow.
The photo is resampled once (bicubic) through the composed map, so aligning costs it as little sharpness as it can.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .misalignment import Flow, grey, matched, shrink, textured, working_scale

MOTIONS = (("affine", cv2.MOTION_AFFINE), ("euclidean", cv2.MOTION_EUCLIDEAN), ("translation", cv2.MOTION_TRANSLATION))
ECC_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 60, 1e-5)
ECC_MIN_SIDE = 48  # coarsest pyramid level
ECC_MIN_CORRELATION = 0.6  # ECC's final correlation; a pair that lines up scores above 0.9, unrelated images ~0.3
SMOOTH_TOLERANCE = 0.75  # working px between a pixel's flow and the smooth field
MIN_SUPPORT = 0.05  # the smooth field needs this much consistent weight nearby; elsewhere the affine alone
DENSE_BAD_WINDOW, DENSE_BAD_SHARE = 15, 0.4  # a window (working px) mostly failing is dropped whole, holes too


@dataclass
class Aligned:
    rgb: np.ndarray  # the photo on the render's pixel grid
    valid: np.ndarray  # bool: the target pixels to learn from
    alpha: np.ndarray | None
    method: str | None  # "affine", "euclidean", "translation"; None: left unaligned
    matrix: list = field(default_factory=list)  # 2x3, render px -> photo px
    correlation: float | None = None  # ECC's
    note: str = ""


def rescale_affine(a: np.ndarray, s: float) -> np.ndarray:
    """An affine map of pixel coordinates, expressed on an image resized by `s` (pixel centres kept: x' = s x + c)."""
    c = 0.5 * s - 0.5
    m, t = a[:, :2], a[:, 2]
    return np.hstack([m, (s * t + (np.eye(2) - m) @ np.array([c, c]))[:, None]]).astype(np.float32)


def plausible(a: np.ndarray, shape: tuple) -> bool:
    sv = np.linalg.svd(a[:, :2], compute_uv=False)
    return bool(sv.min() > 0.8 and sv.max() < 1.25 and np.all(np.abs(a[:, 2]) < 0.2 * max(shape[:2]) + 2))


def ecc(render_g: np.ndarray, photo_g: np.ndarray, shift: tuple, motion: int) -> tuple[float, np.ndarray]:
    """(correlation, affine 2x3 render px -> photo px) of `motion`, coarse to fine from `shift`; raises cv2.error
    without convergence."""
    levels = [(render_g, photo_g)]
    while min(levels[-1][0].shape[:2]) >= 2 * ECC_MIN_SIDE:
        levels.append(tuple(cv2.resize(x, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA) for x in levels[-1]))
    scale = 0.5 ** (len(levels) - 1)
    a = rescale_affine(np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), scale)
    for k, (r, p) in enumerate(reversed(levels)):
        if k:
            a = rescale_affine(a, 2.0)
        rho, a = cv2.findTransformECC(r, p, a, motion, ECC_CRITERIA, None, 5)
    return float(rho), a


def register(render_g: np.ndarray, photo_g: np.ndarray, shift: tuple):
    """(affine render px -> photo px at this size or None, the motion that worked, its correlation, a note naming
    the motions that failed and why)."""
    failed = []
    for name, motion in MOTIONS:
        try:
            rho, a = ecc(render_g, photo_g, shift, motion)
        except cv2.error:
            failed.append(f"{name}: did not converge")
            continue
        if rho < ECC_MIN_CORRELATION:
            failed.append(f"{name}: correlation {rho:.2f} < {ECC_MIN_CORRELATION}")
        elif not plausible(a, render_g.shape):
            failed.append(f"{name}: implausible warp {[[round(float(v), 3) for v in row] for row in a]}")
        else:
            return a, name, rho, "; ".join(failed)
    return None, None, None, "ECC did not converge on a plausible warp (" + "; ".join(failed) + "): photo and " \
                             "render may show different content; the photo is left unaligned"


def smooth_field(flow: np.ndarray, weight: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalised convolution: the flow averaged over `weight`ed pixels nearby, and where there were enough."""
    w = cv2.GaussianBlur(weight.astype(np.float32), (0, 0), sigma)
    num = cv2.GaussianBlur(flow * weight[..., None].astype(np.float32), (0, 0), sigma)
    supported = w > MIN_SUPPORT
    field_ = np.where(supported[..., None], num / np.maximum(w, 1e-6)[..., None], 0).astype(np.float32)
    return field_, supported


def align(render: np.ndarray, photo: np.ndarray, alpha: np.ndarray | None = None,
          shift: tuple = (0.0, 0.0)) -> Aligned:
    """`photo` warped onto `render` (float RGB [0, 1], one size); `shift`: the measured median render -> photo
    displacement in px, where ECC starts."""
    h, w = render.shape[:2]
    scale = working_scale(render.shape)
    rg, pg = grey(render), grey(photo)
    rs, ps = shrink(rg, scale), shrink(pg, scale)
    ps = matched(ps, rs)
    a_work, method, rho, note = register(rs, ps, (shift[0] * scale, shift[1] * scale))
    if a_work is None:
        return Aligned(photo, np.ones((h, w), bool), alpha, None, note=note)
    a_full = rescale_affine(a_work, 1 / scale)
    affine = cv2.warpAffine(pg, a_full, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REPLICATE)
    flow = Flow(rg, affine)
    sigma = max(4.0, 0.02 * max(flow.render.shape[:2]))
    detail = textured(flow.render)
    smooth, supported = smooth_field(flow.forward, flow.consistent & detail, sigma)
    rough = np.hypot(*(flow.forward - smooth).transpose(2, 0, 1)) > SMOOTH_TOLERANCE
    detail = detail | textured(flow.photo)  # structure in either: the photo may show something the render does not
    bad = (detail & (~flow.consistent | (rough & supported))).astype(np.float32)
    bad = cv2.medianBlur(bad, 5)  # lone pixels are the flow's noise, not a region to drop
    bad = np.maximum(bad, cv2.boxFilter(bad, -1, (DENSE_BAD_WINDOW,) * 2) > DENSE_BAD_SHARE).astype(np.uint8)
    bad = cv2.dilate(bad, np.ones((3, 3), np.uint8))
    bad_full = cv2.resize(bad, (w, h), interpolation=cv2.INTER_LINEAR) > 0
    dense = cv2.resize(smooth, (w, h), interpolation=cv2.INTER_LINEAR) / flow.scale
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    x, y = gx + dense[..., 0], gy + dense[..., 1]  # where on the affinely warped photo, then through the affine
    mx = a_full[0, 0] * x + a_full[0, 1] * y + a_full[0, 2]
    my = a_full[1, 0] * x + a_full[1, 1] * y + a_full[1, 2]
    outside = (mx < 0) | (mx > w - 1) | (my < 0) | (my > h - 1)
    rgb = np.clip(cv2.remap(photo, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE), 0, 1)
    if alpha is not None:
        warped = cv2.remap(alpha.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        alpha = np.clip(np.rint(warped), 0, np.iinfo(alpha.dtype).max).astype(alpha.dtype)
    return Aligned(rgb, ~(outside | bad_full), alpha, method, [[round(float(v), 5) for v in row] for row in a_full],
                   round(rho, 4), note)
