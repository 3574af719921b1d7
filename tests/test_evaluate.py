"""`training evaluate` scores what the model restored: with a stand-in model whose output is known (the input back,
or the clean image), the "restored" numbers are exactly what that output must score."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import training.evaluate as evaluate_module
from engine.faces.bundled import bundled_faces
from engine.measure.fidelity import psnr, ssim
from training.dataset import PairDataset


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """Two 64 px test pairs (and one train pair evaluate must skip): photo crops, blurred and noisy."""
    root = tmp_path_factory.mktemp("evaluate") / "pairs"
    for sub in ("clean", "degraded"):
        (root / sub).mkdir(parents=True)
    face, rng = bundled_faces()["grace_hopper"], np.random.default_rng(0)
    records = []
    for i, (y, x) in enumerate(((40, 100), (200, 150), (300, 60))):
        clean = cv2.resize(face[y:y + 256, x:x + 256], (64, 64), interpolation=cv2.INTER_AREA)
        noisy = cv2.GaussianBlur(clean.astype(np.float32), (0, 0), 1.5) + rng.normal(0, 8, clean.shape)
        name = f"{i:03d}.png"
        cv2.imwrite(str(root / "clean" / name), cv2.cvtColor(clean, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "degraded" / name),
                    cv2.cvtColor(np.clip(noisy, 0, 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))
        records.append({"name": name, "file": name, "split": "train" if i == 2 else "test"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def _evaluate_with_model(monkeypatch, pairs: Path, model) -> dict:
    """evaluate() with ModelRunner replaced by a stand-in that answers `model(degraded)` for each image."""
    class StandInRunner:
        device = torch.device("cpu")

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            return cls()

        def restore(self, images):
            return [model(np.array(img)) for img in images]

    monkeypatch.setattr(evaluate_module, "ModelRunner", StandInRunner)
    return evaluate_module.evaluate("stand-in.safetensors", str(pairs), device="cpu", random_vgg=True)


def _clean_partners(pairs: Path) -> dict:
    data = PairDataset(pairs, "all", size=1)
    return {degraded.tobytes(): clean for degraded, clean in map(data.load, range(len(data)))}


def test_with_an_identity_model_the_restored_numbers_equal_the_degraded_ones(monkeypatch, pairs):
    result = _evaluate_with_model(monkeypatch, pairs, lambda degraded: degraded)
    assert result["count"] == 2
    assert result["restored"] == result["degraded"]
    assert result["improvement"] == {"lpips": 0.0, "psnr": 0.0, "ssim": 0.0}


def test_with_a_model_that_returns_the_clean_image_the_restored_numbers_are_perfect(monkeypatch, pairs):
    clean_of = _clean_partners(pairs)
    result = _evaluate_with_model(monkeypatch, pairs, lambda degraded: clean_of[degraded.tobytes()].copy())
    assert result["restored"]["psnr"] == float("inf")
    assert result["restored"]["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert result["restored"]["lpips"] == 0.0
    assert result["degraded"]["psnr"] < 40 and result["degraded"]["ssim"] < 0.95 and result["degraded"]["lpips"] > 0


def test_the_degraded_numbers_are_the_mean_psnr_and_ssim_of_the_degraded_inputs(monkeypatch, pairs):
    clean_of = _clean_partners(pairs)
    result = _evaluate_with_model(monkeypatch, pairs, lambda degraded: clean_of[degraded.tobytes()].copy())
    data = PairDataset(pairs, "test", size=1)
    tested = [data.load(i) for i in range(len(data))]
    assert result["degraded"]["psnr"] == pytest.approx(np.mean([psnr(d, c) for d, c in tested]), rel=1e-12)
    assert result["degraded"]["ssim"] == pytest.approx(np.mean([ssim(d, c) for d, c in tested]), rel=1e-12)
