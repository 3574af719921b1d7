"""`python -m training evaluate`: LPIPS, PSNR and SSIM of restored images against the clean targets, next to the
same numbers for the degraded inputs (the baseline a restorer must beat). Restores through the engine, as users do."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.atomic import atomic_path, write_bytes_atomic
from engine.runtime import Restorer

from .dataset import PairDataset
from .perceptual import PerceptualLoss


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM on [0, 1] RGB (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5), averaged over channels."""
    x = torch.from_numpy(a).permute(2, 0, 1)[:, None].double()
    y = torch.from_numpy(b).permute(2, 0, 1)[:, None].double()
    g = torch.exp(-((torch.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2)).double()
    w = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]

    def blur(t):
        return F.conv2d(t, w)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


def evaluate(weights: str, pairs: str, split: str = "test", base: str | None = None, device: str = "auto",
             vgg_weights: str | None = None, random_vgg: bool = False, grid: str | None = None,
             grid_count: int = 6, batch_size: int = 1, accept_license: bool = False) -> dict:
    data = PairDataset(pairs, split, size=1)
    restorer = Restorer.from_pretrained(weights, base, accept_license, device=device, batch_size=batch_size)
    perceptual = PerceptualLoss(vgg_weights, random_init=random_vgg).to(restorer.device)
    sums = {"restored": {"lpips": 0.0, "psnr": 0.0, "ssim": 0.0}, "degraded": {"lpips": 0.0, "psnr": 0.0, "ssim": 0.0}}
    rows = []
    for i in range(len(data)):
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
    result = {"weights": str(weights), "pairs": str(pairs), "split": split, "count": len(data),
              "lpips_source": perceptual.source, **sums,
              "improvement": {k: sums["restored"][k] - sums["degraded"][k] for k in ("lpips", "psnr", "ssim")}}
    if grid:
        write_grid(Path(grid), rows)
        result["grid"] = grid
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
