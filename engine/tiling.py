"""Overlapping tiles for frames larger than the model's comfortable size, blended without seams.

Each tile's weight ramps linearly across the overlap on sides that touch another tile (and stays 1 on the frame
border); the blended result is the weighted sum divided by the summed weights, so weights form a partition of unity
and a model that is the identity reproduces the frame exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def pad_to_multiple(image: np.ndarray, multiple: int = 8, min_size: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Reflect-pad H and W (bottom/right) up to a multiple, and at least `min_size`; crop back with [:h, :w]."""
    h, w = image.shape[:2]
    th = max(-(-h // multiple) * multiple, min_size[0])
    tw = max(-(-w // multiple) * multiple, min_size[1])
    if (th, tw) == (h, w):
        return image
    mode = "reflect" if th - h < h and tw - w < w else "edge"
    return np.pad(image, ((0, th - h), (0, tw - w), (0, 0)), mode=mode)


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    n = -(-(length - tile) // stride) + 1
    # spread the tiles evenly so every overlap is at least `overlap`, then snap to the latent grid (8 px)
    return [int(round(i * (length - tile) / (n - 1) / 8)) * 8 for i in range(n)]


@dataclass(frozen=True)
class Tile:
    y: int
    x: int
    h: int
    w: int


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles covering a (height, width) frame whose sides are multiples of 8."""
    if tile % 8 or overlap % 8 or not 0 <= overlap < tile:
        raise ValueError(f"tile ({tile}) and overlap ({overlap}) must be multiples of 8 with overlap < tile")
    th, tw = min(tile, height), min(tile, width)
    return [Tile(y, x, th, tw) for y in _starts(height, th, overlap) for x in _starts(width, tw, overlap)]


def _ramp(n: int, overlap: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    w = np.ones(n, np.float32)
    if overlap:
        r = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        if ramp_start:
            w[:overlap] = np.minimum(w[:overlap], r)
        if ramp_end:
            w[-overlap:] = np.minimum(w[-overlap:], r[::-1])
    return w


def tile_weight(t: Tile, height: int, width: int, overlap: int) -> np.ndarray:
    wy = _ramp(t.h, overlap, t.y > 0, t.y + t.h < height)
    wx = _ramp(t.w, overlap, t.x > 0, t.x + t.w < width)
    return wy[:, None] * wx[None, :]


def blend_tiles(tiles: list[Tile], outputs: list[np.ndarray], height: int, width: int, overlap: int) -> np.ndarray:
    channels = outputs[0].shape[2]
    acc = np.zeros((height, width, channels), np.float32)
    norm = np.zeros((height, width, 1), np.float32)
    for t, out in zip(tiles, outputs):
        w = tile_weight(t, height, width, overlap)[..., None]
        acc[t.y:t.y + t.h, t.x:t.x + t.w] += out * w
        norm[t.y:t.y + t.h, t.x:t.x + t.w] += w
    return acc / norm
