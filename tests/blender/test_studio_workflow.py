"""The studio's path from capture photos to its own restorer, end to end in real Blender and the engine's Python:
Make Training Pairs from a capture rig (one photo off by a known (3, -2) px), `check-pairs` flags that one and measures
the offset, `check-pairs --align` registers it, and `fit --pairs --init` fine-tunes a tiny working restorer on the
pairs into weights the engine restores with."""
import json

import bpy
import numpy as np
import pytest
from capture_scene import build_capture_scene, render_photos
from conftest import run_engine

SHIFTED, SHIFT = "cam_003", (3, -2)


@pytest.fixture(scope="module")
def pairs(addon, tmp_path_factory):
    root = tmp_path_factory.mktemp("studio")
    # 128x96: optical flow needs a few dozen pixels of texture around each point to measure to a tenth of a pixel
    scene = build_capture_scene(cameras=6, size=(128, 96), samples=16)
    render_photos(scene, root / "photos", shift={SHIFTED: SHIFT}, samples=64)
    settings = scene.splat_restore.training_pairs
    settings.photos_dir, settings.output_dir, settings.cameras, settings.holdout = (
        str(root / "photos"), str(root / "pairs"), "ALL", 3)
    assert bpy.ops.splat_restore.make_training_pairs() == {"FINISHED"}
    return root / "pairs"


def _check(pairs, *extra) -> tuple[int, dict]:
    r = run_engine("-m", "training", "check-pairs", pairs, "--json", *extra)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, {p["name"]: p for p in json.loads(r.stdout)["pairs"]}


def test_capture_photos_become_pairs_check_flags_the_shifted_one_align_fixes_it_and_a_fine_tune_restores(
        pairs, tiny_weights, tmp_path):
    manifest = [json.loads(line) for line in (pairs / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["camera"] for r in manifest) == [f"cam_{k:03d}" for k in range(1, 7)]
    assert sorted(r["camera"] for r in manifest if r["split"] == "test") == ["cam_001", "cam_004"]

    code, checked = _check(pairs)
    assert code == 1
    assert [n for n, p in checked.items() if p["flagged"]] == [SHIFTED], {n: p["reasons"] for n, p in checked.items()}
    assert np.allclose(checked[SHIFTED]["shift_px"], SHIFT, atol=0.3), checked[SHIFTED]
    assert any("px" in reason for reason in checked[SHIFTED]["reasons"])

    code, aligned = _check(pairs, "--align")
    assert code == 0, {n: p["reasons"] for n, p in aligned.items()}
    assert aligned[SHIFTED]["median_px"] < 0.5
    assert (pairs / "clean_original" / f"{SHIFTED}.png").is_file()

    run = tmp_path / "run"
    r = run_engine("-m", "training", "fit", "--pairs", pairs, "--init", tiny_weights, "--out", run, "--steps", "4",
                   "--size", "64", "--batch-size", "1", "--lr", "1e-3", "--mixed-precision", "no", "--random-vgg",
                   "--workers", "0", "--save-every", "1000", "--sample-every", "1000", "--eval-every", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    weights = run / "restorer.safetensors"
    assert weights.is_file() and (run / "report.html").is_file()
    out = tmp_path / "restored"
    r = run_engine("-m", "engine", "restore", pairs / "degraded" / f"{SHIFTED}.png", "-o", out, "--weights", weights,
                   "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / f"{SHIFTED}.png").is_file()
