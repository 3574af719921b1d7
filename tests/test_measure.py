"""PSNR and SSIM give BasicSR's numbers: its formulas written out below from its code, on a real photo, blurred and
noisy, whose pixels are off the 8-bit grid (so the rounding BasicSR's PNGs imply changes the numbers)."""
import cv2
import numpy as np
import pytest

from engine.faces.bundled import bundled_faces
from engine.measure.fidelity import psnr, ssim

# relative: our float64 and BasicSR's float32 Y agree to about 2e-9 on this pair; a 7x7 box window, or skipping the
# rounding or the clamp, moves the numbers by 1e-4 or more
TOLERANCE = 1e-6


def basicsr_uint8_bgr(rgb: np.ndarray) -> np.ndarray:
    """basicsr/utils/img_util.py tensor2img: clamp to [0, 1], RGB to BGR, (x * 255).round(), uint8."""
    img = cv2.cvtColor(np.clip(rgb.astype(np.float32), 0, 1), cv2.COLOR_RGB2BGR)
    return (img * 255.0).round().astype(np.uint8)


def basicsr_y(img: np.ndarray) -> np.ndarray:
    """basicsr/metrics/metric_util.py to_y_channel with color_util.bgr2ycbcr(y_only=True), float32 as there."""
    img = img.astype(np.float32) / 255.0
    y = (np.dot(img, [24.966, 128.553, 65.481]) + 16.0) / 255.0  # _convert_output_type_range to float32
    return (y.astype(np.float32)[..., None] * 255.0).astype(np.float64)


def basicsr_psnr(img: np.ndarray, img2: np.ndarray) -> float:
    """basicsr/metrics/psnr_ssim.py calculate_psnr(crop_border=0, test_y_channel=True)."""
    mse = np.mean((basicsr_y(img) - basicsr_y(img2)) ** 2)
    return float(10.0 * np.log10(255.0 * 255.0 / mse))


def basicsr_ssim(img: np.ndarray, img2: np.ndarray) -> float:
    """basicsr/metrics/psnr_ssim.py calculate_ssim(crop_border=0, test_y_channel=True) and its _ssim."""
    a, b = basicsr_y(img)[..., 0], basicsr_y(img2)[..., 0]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    kernel = cv2.getGaussianKernel(11, 1.5)
    window = np.outer(kernel, kernel.transpose())

    def valid(x):
        return cv2.filter2D(x, -1, window)[5:-5, 5:-5]
    mu1, mu2 = valid(a), valid(b)
    sigma1_sq, sigma2_sq, sigma12 = valid(a ** 2) - mu1 ** 2, valid(b ** 2) - mu2 ** 2, valid(a * b) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * sigma12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (sigma1_sq + sigma2_sq + c2))
    return float(ssim_map.mean())


@pytest.fixture(scope="module")
def pair():
    """(degraded, clean): Grace Hopper's face area-resized to 96 px, then blurred (sigma 0.6) with noise (3 %), which
    leaves some pixels outside [0, 1] (BasicSR clamps them)."""
    face = bundled_faces()["grace_hopper"]
    clean = cv2.resize(face[40:360, 100:420].astype(np.float32) / 255, (96, 96), interpolation=cv2.INTER_AREA)
    noise = np.random.default_rng(1).normal(0, 0.03, clean.shape).astype(np.float32)
    return cv2.GaussianBlur(clean, (0, 0), 0.6) + noise, clean


def test_psnr_is_basicsr_calculate_psnr_on_a_blurred_noisy_photo(pair):
    degraded, clean = pair
    expected = basicsr_psnr(basicsr_uint8_bgr(degraded), basicsr_uint8_bgr(clean))
    assert 20 < expected < 35  # a realistic degradation, not a near-identical pair
    assert psnr(degraded, clean) == pytest.approx(expected, rel=TOLERANCE)


def test_ssim_is_basicsr_calculate_ssim_on_a_blurred_noisy_photo(pair):
    degraded, clean = pair
    expected = basicsr_ssim(basicsr_uint8_bgr(degraded), basicsr_uint8_bgr(clean))
    assert 0.5 < expected < 0.98
    assert ssim(degraded, clean) == pytest.approx(expected, rel=TOLERANCE)


def test_the_pair_is_off_the_8_bit_grid_so_skipping_basicsr_rounding_moves_both_numbers_past_the_tolerance(pair):
    degraded, clean = pair

    def unrounded(rgb):  # what BasicSR would see from float images that were never written as 8-bit PNGs
        return cv2.cvtColor(np.clip(rgb, 0, 1), cv2.COLOR_RGB2BGR).astype(np.float64) * 255

    rounded = basicsr_uint8_bgr(degraded), basicsr_uint8_bgr(clean)
    for metric in (basicsr_psnr, basicsr_ssim):
        drift = abs(metric(unrounded(degraded), unrounded(clean)) / metric(*rounded) - 1)
        assert drift > 50 * TOLERANCE, (metric.__name__, drift)
