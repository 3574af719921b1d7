"""`python -m training check-pairs`: misalignment measured by flow, --align, the verdicts training reads, and the
validity masks the loss applies. Pairs are a blurred, lightly noised render of skimage's astronaut and a sharper,
noisier "photo" of it, 256 px, as a render and a photo of one scene differ."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.images import read_image
from training import pair_check
from training.cli import main
from training.dataset import FlaggedPairsWarning, PairDataset, PairError, StaleValidMaskWarning
from training.pair_check import check_pairs, ensure_checked, flagged_pairs
from training.train import TrainConfig, recipe_loss

SIZE = 256


def scene(size=SIZE, background=False) -> np.ndarray:
    from skimage import data

    img = cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    if not background:
        return img
    out = np.full_like(img, 0.4)  # a studio render is mostly flat background
    q = size // 4
    out[q:3 * q, q:3 * q] = cv2.resize(img, (2 * q, 2 * q), interpolation=cv2.INTER_AREA)
    return out


def render_of(img, seed=0, noise=0.01) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, noise, img.shape).astype(np.float32)
    return np.clip(cv2.GaussianBlur(img, (0, 0), 1.2) + noise, 0, 1)


def photo_of(img, shift=(0, 0), seed=1, exposure=1.0, blur=0.0, noise=0.02) -> np.ndarray:
    """`img`'s content moved by `shift` (right, down), sharper than the render and noisier."""
    moved = cv2.warpAffine(img, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), img.shape[1::-1],
                           flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    if blur:
        moved = cv2.GaussianBlur(moved, (0, 0), blur)
    return np.clip(moved * exposure + np.random.default_rng(seed).normal(0, noise, img.shape), 0, 1).astype(np.float32)


def write(path: Path, rgb: np.ndarray, depth: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    top, dtype = (255, np.uint8) if depth == 8 else (65535, np.uint16)
    cv2.imwrite(str(path), cv2.cvtColor(np.rint(rgb * top).astype(dtype), cv2.COLOR_RGB2BGR))


def pairs(root: Path, **photos) -> Path:
    """One pair per keyword: name=photo_of keyword arguments (plus depth=16, background=True, render_noise)."""
    for name, spec in photos.items():
        spec = dict(spec)
        depth, img = spec.pop("depth", 8), scene(background=spec.pop("background", False))
        write(root / "degraded" / f"{name}.png", render_of(img, noise=spec.pop("render_noise", 0.01)))
        write(root / "clean" / f"{name}.png", photo_of(img, **spec), depth)
    return root


def by_name(result: dict) -> dict:
    return {e["name"]: e for e in result["pairs"]}


def run_json(capsys, *args) -> tuple[int, dict]:
    rc = main(["check-pairs", *map(str, args), "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_a_pair_shifted_by_3_and_minus_2_px_is_measured_within_0_3_px_and_flagged(tmp_path):
    result = check_pairs(pairs(tmp_path, good={}, shifted={"shift": (3, -2)}))
    good, shifted = by_name(result)["good"], by_name(result)["shifted"]
    assert abs(shifted["shift_px"][0] - 3) < 0.3 and abs(shifted["shift_px"][1] + 2) < 0.3
    assert abs(shifted["median_px"] - np.hypot(3, 2)) < 0.3 and shifted["valid_share"] > 0.9
    assert shifted["flagged"] and any("misaligned" in r and "1.5 px" in r for r in shifted["reasons"])
    assert not good["flagged"] and good["median_px"] < 0.3 and good["reasons"] == []
    assert result["flagged"] == ["shifted"] and not result["ok"]


def test_good_pairs_of_one_scene_pass_and_blurred_or_darker_photos_are_flagged_with_their_reason(tmp_path):
    result = by_name(check_pairs(pairs(
        tmp_path, sharp={}, brighter={"exposure": 1.1}, subpixel={"shift": (0.6, -0.4)}, deep={"depth": 16},
        studio={"background": True}, few_samples={"render_noise": 0.05, "noise": 0.005},
        blurry={"blur": 2.5}, noisy_blurry={"blur": 1.5, "noise": 0.04}, dark={"exposure": 0.6})))
    for name in ("sharp", "brighter", "subpixel", "deep", "studio", "few_samples"):
        assert not result[name]["flagged"], (name, result[name]["reasons"])
    assert result["sharp"]["sharpness_photo"] > result["sharp"]["sharpness_render"]
    for name in ("blurry", "noisy_blurry"):  # noise must not pass for detail, in the render or the photo
        assert len(result[name]["reasons"]) == 1 and "blurrier" in result[name]["reasons"][0], name
    assert len(result["dark"]["reasons"]) == 1 and "exposure" in result["dark"]["reasons"][0]
    assert all(abs(r - 0.6) < 0.05 for r in result["dark"]["exposure_ratio"])


def test_align_brings_the_shifted_pair_under_half_a_pixel_and_keeps_the_16_bit_original(tmp_path, capsys):
    root = pairs(tmp_path, good={}, shifted={"shift": (3, -2), "depth": 16})
    original = (root / "clean" / "shifted.png").read_bytes()
    rc, result = run_json(capsys, root, "--align")
    shifted = by_name(result)["shifted"]
    assert rc == 0 and result["flagged"] == [] and shifted["align"]["method"] == "affine"
    assert shifted["before"]["median_px"] > 3 and shifted["median_px"] < 0.5
    assert (root / "clean_original" / "shifted.png").read_bytes() == original
    assert read_image(root / "clean" / "shifted.png").bit_depth == 16
    assert by_name(check_pairs(root))["shifted"]["median_px"] < 0.5  # measured again from the files
    # content moved right 3 and up 2: the aligned photo has no data in the last 3 columns and the first 2 rows
    valid = cv2.imread(str(root / "valid" / "shifted.png"), cv2.IMREAD_GRAYSCALE)
    assert set(np.unique(valid)) <= {0, 255}
    assert (valid[:, -2:] == 0).all() and (valid[:1] == 0).all() and (valid[4:-4, 4:-4] == 255).mean() > 0.9
    assert (valid[:, :-4] == 255).mean() > 0.9  # not the whole frame


def test_align_follows_a_smooth_warp_no_affine_can_undo(tmp_path, capsys):
    """A lens-like bend (up to 2.5 px, varying across the frame): the dense step after ECC lines it up."""
    root = pairs(tmp_path, bent={})
    img = scene()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    bend_x, bend_y = 2.5 * np.sin(2 * np.pi * yy / SIZE), 2.0 * np.cos(2 * np.pi * xx / SIZE)
    bent = cv2.remap(img, xx - bend_x, yy - bend_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    write(root / "clean" / "bent.png", photo_of(bent))
    rc, result = run_json(capsys, root, "--align")
    entry = by_name(result)["bent"]
    assert entry["before"]["median_px"] > 1.2 and entry["median_px"] < 0.5 and rc == 0


def test_align_masks_what_the_photo_shows_and_the_render_does_not(tmp_path, capsys):
    from skimage import data

    root = pairs(tmp_path, occluded={"shift": (3, -2)})
    photo = read_image(root / "clean" / "occluded.png").rgb
    photo[100:164, 60:124] = cv2.resize(data.chelsea(), (64, 64)).astype(np.float32) / 255  # something in front
    write(root / "clean" / "occluded.png", photo)
    rc, result = run_json(capsys, root, "--align")
    assert rc == 0 and by_name(result)["occluded"]["median_px"] < 0.5
    valid = cv2.imread(str(root / "valid" / "occluded.png"), cv2.IMREAD_GRAYSCALE) > 0
    patch = valid[104:160, 62:118]  # where the patch lands on the render's grid (shifted back by (3, -2))
    assert patch.mean() < 0.5 and valid[:90, :-4].mean() > 0.9 and valid[175:, :-4].mean() > 0.9


def test_a_second_align_starts_again_from_the_originals_and_a_new_photo_replaces_them(tmp_path, capsys):
    root = pairs(tmp_path, shifted={"shift": (3, -2)})
    original = (root / "clean" / "shifted.png").read_bytes()
    assert run_json(capsys, root, "--align")[0] == 0
    first = (root / "clean" / "shifted.png").read_bytes()
    rc, again = run_json(capsys, root, "--align")
    entry = by_name(again)["shifted"]
    assert rc == 0 and entry["align"]["source"] == "clean_original/shifted.png"
    assert entry["before"]["median_px"] > 3 and entry["median_px"] < 0.5  # from the original, not the copy
    assert (root / "clean_original" / "shifted.png").read_bytes() == original
    assert (root / "clean" / "shifted.png").read_bytes() == first  # same input, same result
    write(root / "clean" / "shifted.png", photo_of(scene(), (-2, 1), seed=5))  # the pairs were made again
    new = (root / "clean" / "shifted.png").read_bytes()
    rc, third = run_json(capsys, root, "--align")
    entry = by_name(third)["shifted"]
    assert abs(entry["before"]["shift_px"][0] + 2) < 0.3 and abs(entry["before"]["shift_px"][1] - 1) < 0.3
    assert (root / "clean_original" / "shifted.png").read_bytes() == new and entry["median_px"] < 0.5


def test_json_is_one_object_naming_every_pair_and_max_median_moves_the_threshold(tmp_path, capsys):
    root = pairs(tmp_path, good={}, shifted={"shift": (3, -2)})
    rc, result = run_json(capsys, root)
    assert rc == 1 and result["flagged"] == ["shifted"] and result["threshold_px"] == 1.5
    for entry in result["pairs"]:
        assert {"name", "median_px", "p95_px", "shift_px", "valid_share", "exposure_ratio", "sharpness_render",
                "sharpness_photo", "flagged", "reasons"} <= set(entry)
        assert len(entry["shift_px"]) == 2 and len(entry["exposure_ratio"]) == 3
    recorded = json.loads((root / "pair_check.json").read_text())
    assert [e["name"] for e in recorded["pairs"]] == ["good", "shifted"]
    assert set(recorded["pairs"][0]["fingerprint"]) == {"degraded", "clean"}
    rc, lenient = run_json(capsys, root, "--max-median", "5")
    assert rc == 0 and lenient["flagged"] == [] and lenient["threshold_px"] == 5


def test_exit_codes_table_and_bad_folders_named(tmp_path, capsys):
    good = pairs(tmp_path / "good", a={})
    assert main(["check-pairs", str(good)]) == 0
    assert "0 of 1 pairs flagged" in capsys.readouterr().out
    mixed = pairs(tmp_path / "mixed", a={}, b={"shift": (3, -2)})
    assert main(["check-pairs", str(mixed)]) == 1
    out = capsys.readouterr().out
    assert "FLAGGED" in out and "b: misaligned" in out and "1 of 2 pairs flagged" in out
    assert main(["check-pairs", str(tmp_path / "nowhere")]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    (tmp_path / "photos").mkdir()
    assert main(["check-pairs", str(tmp_path / "photos")]) == 2
    assert "no degraded/" in capsys.readouterr().err
    assert main(["check-pairs", str(good), "--max-median", "0"]) == 2


def test_an_image_too_small_to_measure_is_flagged_naming_the_problem(tmp_path):
    write(tmp_path / "degraded" / "tiny.png", np.full((8, 12, 3), 0.5, np.float32))
    write(tmp_path / "clean" / "tiny.png", np.full((8, 12, 3), 0.5, np.float32))
    entry = check_pairs(tmp_path)["pairs"][0]
    assert entry["flagged"] and entry["reasons"] == ["cannot measure: 12x8 is too small to measure alignment on "
                                                     "(at least 16 px a side)"]


def test_an_undecodable_photo_is_named_and_flagged(tmp_path, capsys):
    root = pairs(tmp_path, good={}, bad={})
    data = (root / "clean" / "bad.png").read_bytes()
    (root / "clean" / "bad.png").write_bytes(data[:len(data) // 2])  # the header reads, the pixels do not
    assert main(["check-pairs", str(root)]) == 1
    out = capsys.readouterr().out
    assert "bad: cannot read" in out and str(root / "clean" / "bad.png") in out
    assert list(flagged_pairs(root)) == ["bad"]


def test_training_skips_flagged_pairs_naming_them(tmp_path):
    root = pairs(tmp_path, good={}, shifted={"shift": (3, -2)})
    check_pairs(root)
    with pytest.warns(FlaggedPairsWarning, match=r"skipping 1 pairs flagged by check-pairs: shifted \(misaligned"):
        data = PairDataset(root, "all", 64)
    assert data.names == ["good"] and list(data.skipped) == ["shifted"]
    assert len(PairDataset(root, "all", 64, skip_flagged=False)) == 2
    (root / "clean" / "good.png").write_bytes((root / "clean" / "shifted.png").read_bytes())
    check_pairs(root)
    with pytest.raises(PairError, match="did not flag.*good, shifted"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FlaggedPairsWarning)
        PairDataset(root, "all", 64)


def test_a_changed_pair_makes_its_verdict_stale_and_a_copied_folder_keeps_them(tmp_path):
    root = pairs(tmp_path / "p", good={}, shifted={"shift": (3, -2)})
    check_pairs(root)
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, copy_function=shutil.copyfile)  # new modification times, same content
    assert list(flagged_pairs(root)) == list(flagged_pairs(copy)) == ["shifted"]
    ensure_checked(copy, lambda line: None)  # remembers the copy's times: no hashing on the next read
    recorded = json.loads((copy / "pair_check.json").read_text())["pairs"]
    assert all(e["fingerprint"][k]["mtime_ns"] == (copy / e[k]).stat().st_mtime_ns for e in recorded
               for k in ("degraded", "clean"))
    write(root / "clean" / "shifted.png", photo_of(scene(), seed=9))  # replaced by a good photo, not checked
    assert flagged_pairs(root) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlaggedPairsWarning)
        assert PairDataset(root, "all", 64).names == ["good", "shifted"]


def test_ensure_checked_measures_only_the_pairs_without_a_current_verdict(tmp_path, monkeypatch):
    root = pairs(tmp_path, good={}, shifted={"shift": (3, -2)})
    measured, real = [], pair_check.check_pair
    monkeypatch.setattr(pair_check, "check_pair", lambda folder, d, *a: measured.append(d.stem) or real(folder, d, *a))
    log = []
    assert list(ensure_checked(root, log.append)) == ["shifted"]
    assert sorted(measured) == ["good", "shifted"] and "shifted (misaligned" in log[-1]
    measured.clear()
    ensure_checked(root, log.append)
    assert measured == []
    write(root / "clean" / "shifted.png", photo_of(scene(), seed=9))
    assert ensure_checked(root, log.append) == {} and measured == ["shifted"]
    assert [e["name"] for e in json.loads((root / "pair_check.json").read_text())["pairs"]] == ["good", "shifted"]


def test_an_unrelated_photo_is_left_unaligned_and_says_why(tmp_path, capsys):
    from skimage import data

    root = pairs(tmp_path, cat={})
    write(root / "clean" / "cat.png", cv2.resize(data.chelsea(), (SIZE, SIZE)).astype(np.float32) / 255)
    before = (root / "clean" / "cat.png").read_bytes()
    rc, result = run_json(capsys, root, "--align")
    entry = by_name(result)["cat"]
    assert rc == 1 and entry["align"]["method"] is None
    assert any(r.startswith("ECC did not converge") for r in entry["reasons"])
    assert (root / "clean" / "cat.png").read_bytes() == before and not (root / "valid" / "cat.png").exists()
    assert not (root / "clean_original" / "cat.png").exists()


def _loss_and_grad(target, valid, lpips_weight=1.0, perceptual=None):
    from training.perceptual import PerceptualLoss

    torch.manual_seed(0)
    pred = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_()
    cfg = TrainConfig(pairs="", out="", lambda_lpips=lpips_weight, lambda_gram=lpips_weight)
    mask = torch.cat([torch.zeros_like(valid), valid], 1) if valid is not None else None
    loss, _ = recipe_loss(pred, target, perceptual or PerceptualLoss(random_init=True), cfg, mask)
    loss.backward()
    return loss.item(), pred.grad


def test_invalid_pixels_never_reach_the_loss():
    from training.perceptual import PerceptualLoss

    perceptual = PerceptualLoss(random_init=True)
    torch.manual_seed(1)
    target = torch.rand(1, 3, 64, 64) * 2 - 1
    valid = torch.ones(1, 1, 64, 64)
    valid[..., :, 40:] = 0  # the aligned photo had no data in the right-hand strip
    garbage = target.clone()
    garbage[..., :, 40:] = torch.rand(1, 3, 64, 24) * 2 - 1
    loss_a, grad_a = _loss_and_grad(target, valid, perceptual=perceptual)
    loss_b, grad_b = _loss_and_grad(garbage, valid, perceptual=perceptual)
    assert loss_a == loss_b and torch.equal(grad_a, grad_b)
    assert _loss_and_grad(target, None, perceptual=perceptual)[0] != _loss_and_grad(garbage, None,
                                                                                   perceptual=perceptual)[0]
    l1, l1_grad = _loss_and_grad(garbage, valid, lpips_weight=0.0, perceptual=perceptual)
    assert (l1_grad[..., 40:] == 0).all() and (l1_grad[..., :40] != 0).float().mean() > 0.99
    torch.manual_seed(0)  # the prediction _loss_and_grad draws: L1 is the mean over the valid pixels only
    pred = torch.rand(1, 3, 64, 64) * 2 - 1
    assert l1 == pytest.approx(0.5 * (pred - target)[..., :40].abs().mean().item(), rel=1e-5)


def test_the_dataset_applies_the_validity_mask_and_ignores_one_made_for_another_photo(tmp_path, capsys):
    root = pairs(tmp_path, shifted={"shift": (3, -2)})
    main(["check-pairs", str(root), "--align", "--json"])
    capsys.readouterr()
    data = PairDataset(root, "all", 64)
    valid = data.load_mask(0, (SIZE, SIZE))[..., 1]
    assert (valid[:, -2:] == 0).all() and valid.mean() > 0.9
    assert data.sample(0, np.random.default_rng(0))[2].shape == (2, 64, 64)
    write(root / "clean" / "shifted.png", photo_of(scene(), seed=9))  # a new photo: the mask is not its own
    with pytest.warns(StaleValidMaskWarning, match="valid/shifted.png"):
        data = PairDataset(root, "all", 64)
    assert (data.load_mask(0, (SIZE, SIZE))[..., 1] == 1).all()
