"""PSNR and SSIM as BasicSR computes them, so our numbers sit beside published ones."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

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
