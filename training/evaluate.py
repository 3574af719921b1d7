"""`python -m training evaluate`: LPIPS, PSNR and SSIM of restored images against the clean targets, next to the
same numbers for the degraded inputs (the baseline a restorer must beat). Restores through the engine, as users do."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from engine.atomic import atomic_path, write_bytes_atomic
from engine.runtime import ModelRunner

from .dataset import PairDataset
from .perceptual import PerceptualLoss


CONVENTION = ("PSNR and SSIM as BasicSR computes them (calculate_psnr / calculate_ssim, test_y_channel=True, "
              "crop_border=0): images rounded to 8 bits, Y of rgb2ycbcr (65.481 R + 128.553 G + 24.966 B + 16, on "
              "[0, 1] RGB) on the [0, 255] float scale, SSIM with an 11x11 Gaussian window (sigma 1.5) over the valid "
              "region; LPIPS (VGG, v0.1) on RGB in [-1, 1]")


def y_channel(img: np.ndarray) -> np.ndarray:
    """BasicSR's to_y_channel for an RGB image in [0, 1]: quantised to 8 bits as the PNG a published number was
    computed from, then Y in [16, 235] as float64."""
    rgb = np.rint(np.clip(img, 0, 1) * 255) / 255
    return (rgb @ np.array([65.481, 128.553, 24.966]) + 16.0).astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Y-channel PSNR of two RGB images in [0, 1] (BasicSR's calculate_psnr, test_y_channel=True)."""
    mse = float(np.mean((y_channel(a) - y_channel(b)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Y-channel SSIM of two RGB images in [0, 1] (BasicSR's _ssim: Wang et al. 2004's constants on the 0-255
    scale, Gaussian window 11, sigma 1.5, statistics only where the window fits)."""
    x = torch.from_numpy(y_channel(a))[None, None]
    y = torch.from_numpy(y_channel(b))[None, None]
    g = torch.exp(-((torch.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2)).double()
    w = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]

    def blur(t):
        return F.conv2d(t, w)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


def evaluate(weights: str, pairs: str, split: str = "test", base: str | None = None, device: str = "auto",
             vgg_weights: str | None = None, random_vgg: bool = False, grid: str | None = None,
             grid_count: int = 6, batch_size: int = 1, accept_license: bool = False, progress: bool = False) -> dict:
    data = PairDataset(pairs, split, size=1)
    restorer = ModelRunner.from_pretrained(weights, base, accept_license, device=device, batch_size=batch_size)
    perceptual = PerceptualLoss(vgg_weights, random_init=random_vgg).to(restorer.device)
    sums = {"restored": {"lpips": 0.0, "psnr": 0.0, "ssim": 0.0}, "degraded": {"lpips": 0.0, "psnr": 0.0, "ssim": 0.0}}
    rows, names = [], []
    for i in tqdm(range(len(data)), unit="img", desc="evaluate", file=sys.stderr, disable=not progress):
        degraded, clean = data.load(i)
        restored = restorer.restore([degraded])[0]
        target = torch.from_numpy(clean).permute(2, 0, 1)[None].to(restorer.device) * 2 - 1
        ft = perceptual.features(target)
        for name, img in (("restored", restored), ("degraded", degraded)):
            t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].to(restorer.device) * 2 - 1
            with torch.no_grad():
                sums[name]["lpips"] += float(perceptual.lpips(perceptual.features(t), ft)[0]) / len(data)
            sums[name]["psnr"] += psnr(img, clean) / len(data)
            sums[name]["ssim"] += ssim(img, clean) / len(data)
        if len(rows) < grid_count:
            rows.append(np.concatenate([degraded, restored, clean], axis=1))
            names.append(data.pairs[i][1].name)
    result = {"weights": str(weights), "pairs": str(pairs), "split": split, "count": len(data),
              "convention": CONVENTION, "lpips_source": perceptual.source, **sums,
              "improvement": {k: sums["restored"][k] - sums["degraded"][k] for k in ("lpips", "psnr", "ssim")}}
    if grid:
        write_grid(Path(grid), rows)
        result["grid"] = grid
        result["grid_rows"] = names
    return result


def write_grid(path: Path, rows: list) -> None:
    """degraded | restored | clean per row; rows of different sizes are scaled to the first's width."""
    import cv2

    width = rows[0].shape[1]
    scaled = [r if r.shape[1] == width else cv2.resize(r, (width, round(r.shape[0] * width / r.shape[1])))
              for r in rows]
    img = (np.concatenate(scaled, axis=0) * 255).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    write_bytes_atomic(path, buf.tobytes())


def write_json(path: Path, result: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
