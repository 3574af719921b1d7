"""Synthetic Gaussian-splat failures, per face region, patchy like individually projected Gaussians.

A splat avatar fails locally: one elongated Gaussian smears a patch along its axis, too few Gaussians lose fine
detail, large ones average colour over an elliptical footprint, hair strands merge into clumps along their flow, and
stray thin Gaussians leave needle-like streaks. Each operation below makes one such failure over the whole frame;
`degrade` blends them in with a weight map = region strength x anisotropic variation mask, so the damage is strongest
where avatars fail most (mouth, eyes, hair) and patchy everywhere. Every random draw comes from one seeded generator
and is recorded, so a pair can be regenerated exactly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

DEFAULT_STRENGTHS = {"mouth": 0.9, "eyes": 0.7, "hair": 0.6, "nose": 0.45, "skin": 0.3}


@dataclass
class DegradeConfig:
    strengths: dict = field(default_factory=lambda: dict(DEFAULT_STRENGTHS))
    background: float = 0.0  # outside every region (the avatar's backdrop is not splatted)
    feather: float = 0.03  # region edges softened by this fraction of the face size
    blur_sigma: tuple = (1.5, 6.0)  # major-axis sigma range of the anisotropic blur, at 512 px
    detail_factor: tuple = (2.0, 4.0)  # down/up-sampling factor range for lost fine detail
    blotches: tuple = (60, 160)  # number of elliptical colour-averaging footprints
    needles: tuple = (10, 40)
    clump_length: tuple = (6.0, 14.0)  # hair-clump smear length along the strand direction, at 512 px


def _gauss_kernel(sigma_major: float, sigma_minor: float, angle: float) -> np.ndarray:
    r = int(np.ceil(3 * sigma_major))
    y, x = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * x + s * y, -s * x + c * y
    k = np.exp(-0.5 * ((u / sigma_major) ** 2 + (v / max(sigma_minor, 0.3)) ** 2))
    return k / k.sum()


def aniso_blur(img: np.ndarray, sigma_major: float, sigma_minor: float, angle: float) -> np.ndarray:
    return cv2.filter2D(img, -1, _gauss_kernel(sigma_major, sigma_minor, angle), borderType=cv2.BORDER_REFLECT)


def detail_loss(img: np.ndarray, factor: float) -> np.ndarray:
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, int(w / factor)), max(1, int(h / factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _ellipses(img_shape, rng, n, size_range, aspect_range):
    h, w = img_shape[:2]
    for _ in range(n):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        major = rng.uniform(*size_range) * max(h, w)
        minor = major / rng.uniform(*aspect_range)
        yield cx, cy, major, minor, rng.uniform(0, 180)


def blotch(img: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Elliptical footprints, each filled with the average colour under it (a big Gaussian's flat colour)."""
    avg = cv2.blur(img, (9, 9))
    layer, cover = img.copy(), np.zeros(img.shape[:2], np.float32)
    for cx, cy, major, minor, angle in _ellipses(img.shape, rng, n, (0.01, 0.04), (1.5, 4.0)):
        colour = avg[min(int(cy), img.shape[0] - 1), min(int(cx), img.shape[1] - 1)].tolist()
        axes = (max(1, int(major)), max(1, int(minor)))
        cv2.ellipse(layer, (int(cx), int(cy)), axes, angle, 0, 360, colour, -1, cv2.LINE_AA)
        cv2.ellipse(cover, (int(cx), int(cy)), axes, angle, 0, 360, 1.0, -1, cv2.LINE_AA)
    cover = cv2.GaussianBlur(cover, (0, 0), 1.5)[..., None]
    return img * (1 - cover) + layer * cover


def needles(img: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Thin, long, semi-transparent streaks in a colour picked a little away from where they lie."""
    layer, alpha = img.copy(), np.zeros(img.shape[:2], np.float32)
    h, w = img.shape[:2]
    for cx, cy, major, minor, angle in _ellipses(img.shape, rng, n, (0.03, 0.12), (12.0, 30.0)):
        sx = int(np.clip(cx + rng.normal(0, 0.02 * w), 0, w - 1))
        sy = int(np.clip(cy + rng.normal(0, 0.02 * h), 0, h - 1))
        axes, centre = (max(1, int(major)), max(1, int(minor))), (int(cx), int(cy))
        cv2.ellipse(layer, centre, axes, angle, 0, 360, img[sy, sx].tolist(), -1, cv2.LINE_AA)
        cv2.ellipse(alpha, centre, axes, angle, 0, 360, float(rng.uniform(0.4, 0.8)), -1, cv2.LINE_AA)
    return img * (1 - alpha[..., None]) + layer * alpha[..., None]


def _line_blur(img: np.ndarray, length: float, angle: float) -> np.ndarray:
    """Gaussian blur along one direction: rotate it onto the x axis, blur rows, rotate back (far cheaper than a
    large rotated 2-D kernel)."""
    h, w = img.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), np.degrees(angle), 1.0)
    turned = cv2.warpAffine(img, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    k = max(3, int(round(2 * length)) | 1)  # a box along the strand: constant cost whatever its length
    blurred = cv2.blur(turned, (k, 1), borderType=cv2.BORDER_REFLECT)
    return cv2.warpAffine(blurred, cv2.invertAffineTransform(rot), (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def hair_clump(img: np.ndarray, length: float, bins: int = 8) -> np.ndarray:
    """Smear along the local strand direction (structure tensor), merging neighbouring strands into clumps."""
    img8 = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)  # 8-bit warps are several times faster
    gray = cv2.cvtColor(img8, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)
    jxx, jyy, jxy = (cv2.GaussianBlur(a, (0, 0), 3) for a in (gx * gx, gy * gy, gx * gy))
    # strands run across the dominant gradient: theta(gradient) + 90 degrees (image y points down)
    theta = 0.5 * np.arctan2(2 * jxy, jxx - jyy) + np.pi / 2
    index = np.round((theta % np.pi) / np.pi * bins).astype(int) % bins
    out = np.empty_like(img8)
    for b in range(bins):
        sel = index == b
        if sel.any():
            out[sel] = _line_blur(img8, length, -b * np.pi / bins)[sel]
    return out.astype(np.float32) / 255.0


def variation_mask(shape, rng: np.random.Generator, scales=(0.04, 0.1, 0.25)) -> np.ndarray:
    """Patchy [0, 1] field of elongated, randomly oriented blobs at several scales (drawn at quarter size: it is
    smooth anyway)."""
    full_h, full_w = shape[:2]
    h, w = max(8, full_h // 4), max(8, full_w // 4)
    shape = (h, w)
    field_ = np.zeros((h, w), np.float32)
    for scale in scales:
        layer = np.zeros((h, w), np.float32)
        n = int(np.clip(1.5 / scale ** 2, 6, 400))
        for cx, cy, major, minor, angle in _ellipses(shape, rng, n, (scale * 0.5, scale), (1.5, 5.0)):
            cv2.ellipse(layer, (int(cx), int(cy)), (max(1, int(major)), max(1, int(minor))), angle, 0, 360,
                        float(rng.uniform(0.3, 1.0)), -1, cv2.LINE_AA)
        field_ += cv2.GaussianBlur(layer, (0, 0), max(1.0, scale * max(h, w) * 0.3))
    field_ /= max(float(np.percentile(field_, 95)), 1e-6)
    return cv2.resize(np.clip(0.3 + 0.7 * field_, 0, 1), (full_w, full_h), interpolation=cv2.INTER_LINEAR)


def strength_map(masks: dict, cfg: DegradeConfig, shape, feather_px: float) -> np.ndarray:
    """Per-pixel strength: each region's strength over its softened mask; the strongest region wins where soft
    edges overlap, so small regions (mouth, eyes) keep their full strength inside."""
    h, w = shape[:2]
    out = np.full((h, w), cfg.background, np.float32)
    for region, s in cfg.strengths.items():
        mask = masks.get(region)
        if mask is None or not mask.any():
            continue
        hard = mask.astype(np.float32)
        soft = np.maximum(hard, np.clip(2.0 * cv2.GaussianBlur(hard, (0, 0), max(0.5, feather_px)), 0, 1))
        out = np.maximum(out, s * soft)
    return out


def degrade(image: np.ndarray, masks: dict, seed: int, cfg: DegradeConfig | None = None,
            face_size: float | None = None):
    """uint8 RGB (H, W, 3) + region masks -> (degraded uint8, weight map float32 [0, 1], parameters dict).

    `face_size` (pixels, the face box's larger side) scales the soft region edges; default: the image size."""
    cfg = cfg or DegradeConfig()
    rng = np.random.default_rng(seed)
    img = image.astype(np.float32) / 255.0
    scale = max(image.shape[:2]) / 512.0
    p = {"seed": seed, "config": asdict(cfg)}
    p["blur"] = {"sigma_major": rng.uniform(*cfg.blur_sigma) * scale, "aspect": rng.uniform(2.0, 5.0),
                 "angle": rng.uniform(0, np.pi)}
    p["detail_factor"] = rng.uniform(*cfg.detail_factor)
    p["blotches"] = int(rng.integers(*cfg.blotches))
    p["needles"] = int(rng.integers(*cfg.needles))
    p["clump_length"] = rng.uniform(*cfg.clump_length) * scale

    b = p["blur"]
    bad = aniso_blur(img, b["sigma_major"], b["sigma_major"] / b["aspect"], b["angle"])
    bad = detail_loss(bad, p["detail_factor"])
    bad = blotch(bad, rng, p["blotches"])
    hair = masks.get("hair")
    if hair is not None and hair.any():
        ys, xs = np.nonzero(hair)
        m = int(np.ceil(3 * p["clump_length"])) + 4  # context around the hair for the smear
        y0, y1 = max(0, ys.min() - m), min(img.shape[0], ys.max() + m + 1)
        x0, x1 = max(0, xs.min() - m), min(img.shape[1], xs.max() + m + 1)
        clumped = hair_clump(img[y0:y1, x0:x1], p["clump_length"])
        soft_hair = cv2.GaussianBlur(hair.astype(np.float32), (0, 0), 2)[y0:y1, x0:x1, None]
        part = bad[y0:y1, x0:x1]
        bad[y0:y1, x0:x1] = part * (1 - soft_hair) + (0.5 * clumped + 0.5 * part) * soft_hair
    bad = needles(bad, rng, p["needles"])

    feather_px = cfg.feather * (face_size or max(image.shape[:2]))
    weight = strength_map(masks, cfg, image.shape, feather_px) * variation_mask(image.shape, rng)
    out = img * (1 - weight[..., None]) + bad * weight[..., None]
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8), weight, p
