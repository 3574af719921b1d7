"""Face-aware restore on frames composed from real bundled faces at known places: found, framed as in training,
restored in one batch, pasted back with no trace where the model changes nothing, reported per face."""
import importlib.util
import json
import math

import cv2
import numpy as np
import pytest

from engine.cli import main
from engine.faces.align import FaceFrame, blend_mask, frame_from_landmarks, paste_changes
from engine.faces.detect import REACH, scan_squares
from engine.faces.restore import FramePipeline
from engine.images import read_image

# only what detects faces needs mediapipe (the faces extra): the paste and argument tests run without it
needs_mediapipe = pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None, reason="mediapipe not installed")


class Identity:
    """A restorer that changes nothing: what the paste adds must then be nothing."""
    model_size, batch_size = 512, 8
    provenance = {}

    def __init__(self):
        self.calls = []

    def restore(self, images, tiled=True):
        self.calls.append(len(images))
        return [np.array(i, copy=True) for i in images]

    def describe(self):
        return {}


class Brighten(Identity):
    """A restorer that changes everything by the same amount: shows where, and how smoothly, changes land."""

    def restore(self, images, tiled=True):
        self.calls.append(len(images))
        return [np.clip(i + 0.2, 0, 1) for i in images]


@pytest.fixture(scope="module")
def faces():
    from engine.faces.bundled import bundled_faces

    return bundled_faces()


@pytest.fixture(scope="module")
def truth(faces):
    """Each bundled face's crop square as training frames it, from the face mesh on the original photo."""
    pytest.importorskip("mediapipe")
    from training.face_regions import MediapipeParser

    parser = MediapipeParser()
    return {name: frame_from_landmarks(parser.landmarks(img)) for name, img in faces.items()}


@pytest.fixture(scope="module")
def detector():
    pytest.importorskip("mediapipe")
    from engine.faces.detect import FaceDetector

    return FaceDetector(min_face=48)


def compose(faces, truth, size, placements, background=0.35):
    """A (h, w) canvas with bundled photos pasted at (name, x, y, scale); returns it and where each face's crop is."""
    h, w = size
    canvas = np.full((h, w, 3), background, np.float32)
    expected = []
    for name, x, y, scale in placements:
        photo = cv2.resize(faces[name], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ph, pw = photo.shape[:2]
        sx0, sy0, dx0, dy0 = max(0, -x), max(0, -y), max(0, x), max(0, y)
        dx1, dy1 = min(w, x + pw), min(h, y + ph)
        canvas[dy0:dy1, dx0:dx1] = photo[sy0:sy0 + dy1 - dy0, sx0:sx0 + dx1 - dx0] / 255.0
        t = truth[name]
        expected.append(FaceFrame(t.cx * scale + x, t.cy * scale + y, t.side * scale, t.angle))
    return canvas, expected


def _match(found, expected, tolerance=0.12):
    """Each expected square has one found square whose centre and side agree within tolerance x side."""
    for e in expected:
        near = [f for f in found if math.hypot(f.cx - e.cx, f.cy - e.cy) < tolerance * e.side
                and abs(f.side - e.side) < tolerance * e.side]
        assert len(near) == 1, f"expected a face at ({e.cx:.0f}, {e.cy:.0f}) side {e.side:.0f}; found " \
                               f"{[(round(f.cx), round(f.cy), round(f.side)) for f in found]}"


def test_every_face_in_a_frame_is_found_where_it_is_and_framed_as_in_training(faces, truth, detector):
    canvas, expected = compose(faces, truth, (1080, 1920), [("astronaut", 60, 80, 1.0),
                                                            ("grace_hopper", 800, 300, 0.6),
                                                            ("astronaut", 1500, 650, 0.5)])
    found = detector.detect((canvas * 255).round().astype(np.uint8))
    assert len(found) == 3
    _match([f.frame for f in found], expected)
    assert all(f.landmarks is not None for f in found)


def test_a_face_too_small_for_the_whole_frame_search_is_found_by_the_tile_scan(faces, truth, detector):
    canvas, expected = compose(faces, truth, (1080, 1920), [("astronaut", 900, 500, 0.55)])
    face_side = expected[0].side / 2
    assert face_side < REACH * 1920 * 0.8  # the whole-frame pass cannot see it
    assert len(scan_squares(1920, 1080, 48)) > 1
    found = detector.detect((canvas * 255).round().astype(np.uint8))
    _match([f.frame for f in found], expected)


def test_a_face_partly_outside_the_frame_is_found_and_pasted_inside_it(faces, truth, detector):
    canvas, expected = compose(faces, truth, (720, 1280), [("grace_hopper", -150, 200, 0.9)])
    pipeline = FramePipeline(Brighten(), detector=detector)
    result = pipeline.restore([canvas], ["auto"])[0]
    assert len(result.faces) == 1
    x, y, w, h = result.faces[0].box
    assert x < 0 < x + w  # the crop square leaves the frame on the left
    assert result.rgb.shape == canvas.shape and (result.rgb[:, :20] > canvas[:, :20] + 0.05).any()


def test_a_face_filling_the_frame_is_found(faces, detector):
    close = cv2.resize(faces["grace_hopper"][120:400, 150:390], (720, 840))  # the face is most of the frame
    found = detector.detect(close)
    assert len(found) == 1 and found[0].frame.side > 720


def test_a_face_the_mesh_cannot_read_is_framed_from_the_detector_and_reported(faces, truth, detector, monkeypatch):
    class Unreadable:
        multi_face_landmarks = None

    monkeypatch.setattr(detector._mesh, "process", lambda image: Unreadable())
    canvas, expected = compose(faces, truth, (720, 1280), [("astronaut", 300, 100, 1.0)])
    result = FramePipeline(Brighten(), detector=detector).restore([canvas], ["auto"])[0]
    assert len(result.faces) == 1 and result.faces[0].landmarks is False
    found = detector.detect((canvas * 255).round().astype(np.uint8))
    _match([f.frame for f in found], expected, tolerance=0.02)  # the README's promise: within 2 % of it


def test_a_frame_without_a_face_passes_through_unchanged_and_says_so(detector):
    rng = np.random.default_rng(0)
    canvas = cv2.GaussianBlur(rng.random((600, 900, 3)).astype(np.float32), (0, 0), 3)
    model = Identity()
    result = FramePipeline(model, detector=detector).restore([canvas], ["auto"])[0]
    assert result.faces == [] and np.array_equal(result.rgb, canvas)
    assert "no face" in result.note and model.calls == []


def test_with_an_identity_model_the_pasted_frame_equals_the_input(faces, truth, detector):
    canvas, _ = compose(faces, truth, (1080, 1920), [("astronaut", 60, 80, 1.0), ("grace_hopper", 1000, 200, 1.2),
                                                     ("astronaut", 1500, 650, 0.5)])
    model = Identity()
    result = FramePipeline(model, detector=detector).restore([canvas], ["auto"])[0]
    assert len(result.faces) == 3
    assert model.calls == [3]  # every face of the frame in one model call
    assert np.array_equal(result.rgb, canvas)  # the README's promise: exactly the input, not within half a level


def test_changes_land_on_face_and_hair_fade_smoothly_and_leave_the_rest_exact(faces, truth, detector):
    canvas, expected = compose(faces, truth, (720, 1280), [("astronaut", 300, 100, 1.0)])
    canvas *= 0.75  # nothing near white, so the +0.2 change is never clipped
    result = FramePipeline(Brighten(), detector=detector).restore([canvas], ["auto"])[0]
    change = (result.rgb - canvas).mean(2)
    e = expected[0]
    face = change[int(e.cy - e.side * 0.1):int(e.cy + e.side * 0.2), int(e.cx - e.side * 0.1):int(e.cx + e.side * 0.1)]
    assert face.mean() > 0.15  # the face itself got the model's change
    x, y, w, h = result.faces[0].box
    outside = np.ones(change.shape, bool)
    outside[max(0, y):y + h, max(0, x):x + w] = False
    assert np.array_equal(result.rgb[outside], canvas[outside])  # beyond the crop, not one value moved
    steps = max(np.abs(np.diff(change, axis=0)).max(), np.abs(np.diff(change, axis=1)).max())
    assert steps < 0.2 / 4  # no seam: a 0.2 change needs more than 4 pixels to fade out


def test_only_crops_returns_the_restored_crops_and_no_frame(faces, truth, detector):
    canvas, _ = compose(faces, truth, (720, 1280), [("astronaut", 100, 100, 1.0), ("grace_hopper", 700, 100, 0.8)])
    small = canvas[:400, :400]  # no larger than the model: still searched for faces in only-crops mode
    results = FramePipeline(Identity(), detector=detector).restore([canvas, small], ["only-crops", "only-crops"])
    assert results[0].rgb is None and len(results[0].crops) == 2
    assert all(c.shape == (512, 512, 3) for c in results[0].crops)
    assert len(results[1].crops) == 1


def test_frames_no_larger_than_the_model_are_restored_whole_in_auto_mode(detector):
    canvas = np.full((512, 400, 3), 0.5, np.float32)
    result = FramePipeline(Brighten(), detector=detector).restore([canvas], ["auto"])[0]
    assert result.mode == "whole" and np.allclose(result.rgb, 0.7)


def test_scale_is_reported_per_face_and_big_faces_are_reduced(faces, truth, detector):
    canvas, expected = compose(faces, truth, (1440, 2560), [("grace_hopper", 100, 100, 2.0),
                                                            ("astronaut", 1800, 900, 0.7)])
    result = FramePipeline(Identity(), detector=detector).restore([canvas], ["auto"])[0]
    scales = sorted(f.scale for f in result.faces)
    assert len(scales) == 2 and scales[0] < 1 < scales[1]  # the large face reduced to 512, the small one enlarged
    for f, e in zip(sorted(result.faces, key=lambda f: f.scale), sorted(expected, key=lambda e: -e.side)):
        assert abs(f.scale - 512 / e.side) < 0.15 * f.scale


def test_a_tilted_face_is_cut_with_its_eyes_level(faces, truth, detector):
    canvas, _ = compose(faces, truth, (900, 1200), [("astronaut", 350, 200, 1.0)])
    tilt = 20.0
    turned = cv2.warpAffine(canvas, cv2.getRotationMatrix2D((600, 450), tilt, 1.0), (1200, 900),
                            borderMode=cv2.BORDER_REPLICATE)
    found = detector.detect((turned * 255).round().astype(np.uint8))
    assert len(found) == 1
    # getRotationMatrix2D turns counter-clockwise on screen: the eye line now falls to the left
    assert abs(math.degrees(found[0].frame.angle) - (truth["astronaut"].angle * 180 / math.pi - tilt)) < 4


def test_paste_changes_averages_overlapping_faces_instead_of_adding_them():
    image = np.full((300, 300, 3), 0.5, np.float32)
    a, b = FaceFrame(140, 150, 160), FaceFrame(160, 150, 160)
    change = np.full((64, 64, 3), 0.1, np.float32)
    mask = blend_mask(64)
    both = paste_changes(image, [(a, change, mask), (b, change, mask)])
    assert both.max() <= 0.6 + 1e-5 and both.max() > 0.59


def test_the_cli_restores_faces_keeps_alpha_and_16_bit_and_reports_each_face(faces, truth, tiny_weights, tmp_path,
                                                                             capsys):
    canvas, _ = compose(faces, truth, (361, 643), [("astronaut", 40, 30, 0.6), ("grace_hopper", 380, 40, 0.45)])
    rgba = np.dstack([canvas[..., ::-1], np.linspace(0.2, 1, 643)[None, :].repeat(361, 0)])  # odd sizes too
    src = tmp_path / "in" / "frame.png"
    src.parent.mkdir()
    cv2.imwrite(str(src), (rgba * 65535).round().astype(np.uint16))
    blank = tmp_path / "in" / "empty.png"
    cv2.imwrite(str(blank), np.full((300, 500, 3), 90, np.uint8))
    out = tmp_path / "out"
    assert main(["restore", str(src.parent), "-o", str(out), "--weights", str(tiny_weights), "--device", "cpu",
                 "--min-face", "32"]) == 0
    before, after = read_image(src), read_image(out / "frame.png")
    assert after.bit_depth == 16 and np.array_equal(after.alpha, before.alpha)
    moved = np.abs(after.rgb - before.rgb).max(2) > 1e-6
    assert moved.any() and moved.mean() < 0.5  # the faces changed, most of the frame did not
    assert np.array_equal(read_image(out / "empty.png").rgb, read_image(blank).rgb)
    text = capsys.readouterr()
    assert "2 faces (1 frames without one)" in text.out and "empty.png: no face found" in text.err


def test_the_cli_writes_numbered_crops_in_only_crops_mode(faces, truth, tiny_weights, tmp_path):
    canvas, _ = compose(faces, truth, (360, 640), [("astronaut", 40, 30, 0.6), ("grace_hopper", 380, 40, 0.45)])
    from PIL import Image, ImageCms

    src = tmp_path / "frame.png"
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray((canvas * 255).round().astype(np.uint8)).save(src, icc_profile=profile)
    out = tmp_path / "out"
    args = ["restore", str(src), "-o", str(out), "--weights", str(tiny_weights), "--device", "cpu", "--faces",
            "only-crops", "--min-face", "32"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["frame_face0.png", "frame_face1.png"]
    assert read_image(out / "frame_face0.png").size == (64, 64)  # the tiny model's size
    assert Image.open(out / "frame_face0.png").info.get("icc_profile") == profile  # the frame's colour space
    assert main(args) == 1  # earlier crops are not replaced without --overwrite
    assert main(args + ["--overwrite"]) == 0


def test_the_service_takes_the_faces_mode_per_request_and_reports_faces(faces, truth, tiny_weights, tmp_path):
    import sys
    from pathlib import Path

    from blender_addon.engine_link.client import EngineClient, EngineError, EngineSettings

    canvas, _ = compose(faces, truth, (400, 700), [("astronaut", 40, 0, 0.8)])  # a face above the default min_face
    src = tmp_path / "frame.png"
    cv2.imwrite(str(src), (canvas[..., ::-1] * 255).round().astype(np.uint8))
    root = Path(__file__).resolve().parents[1]
    client = EngineClient(EngineSettings(python=sys.executable, weights=str(tiny_weights), device="cpu",
                                         cwd=str(root)))
    client.start()
    try:
        faced = client.restore([(src, tmp_path / "a.png")], faces="auto").wait(120)["items"][0]
        whole = client.restore([(src, tmp_path / "b.png")], faces="off").wait(120)["items"][0]
        with pytest.raises(EngineError) as bad:
            client.restore([(src, tmp_path / "c.png")], faces="sideways").wait(120)
    finally:
        client.shutdown()
    assert faced["mode"] == "faces" and len(faced["faces"]) == 1 and faced["faces"][0]["scale"] > 0
    assert whole["mode"] == "whole" and "faces" not in whole
    assert bad.value.code == "bad_request" and "faces" in str(bad.value)
    json.dumps(faced)  # the report is plain JSON


@needs_mediapipe
def test_bench_faces_prints_the_stage_split(capsys):
    assert main(["bench-faces", "--size", "960x540", "--repeats", "1", "--min-face", "40", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["faces_found"] == 1
    stages = [r[f"{k}_ms"] for k in ("detect", "align", "paste", "model")]
    # every stage is really timed, and together they account for the frame's time (clock reads cost the rest)
    assert min(stages) > 0 and 0.5 * r["total_ms"] <= sum(stages) <= r["total_ms"]
    assert main(["bench-faces", "--size", "wide"]) == 2


@pytest.mark.parametrize("value", ["4", "many"])
def test_a_min_face_below_8_pixels_or_not_a_number_is_a_usage_error(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["restore", str(tmp_path), "-o", str(tmp_path / "out"), "--weights", "w.safetensors",
              "--min-face", value])
    assert exit_.value.code == 2 and "--min-face" in capsys.readouterr().err


def test_face_crops_are_restored_in_one_piece_even_with_a_smaller_tile(faces, truth, tiny_weights, detector):
    from engine.runtime import ModelRunner

    restorer = ModelRunner.from_pretrained(tiny_weights, device="cpu", tile=64)
    restorer.model_size = 128  # as if trained at 128: crops of 128 must not be cut into 64-pixel tiles
    calls = []
    run_model = restorer.run_model
    restorer.run_model = lambda batch, *rest: calls.append(batch.shape) or run_model(batch, *rest)
    canvas, _ = compose(faces, truth, (360, 640), [("astronaut", 40, 30, 0.6)])
    FramePipeline(restorer, detector=detector).restore([canvas], ["auto"])
    assert calls == [(1, 128, 128, 3)]


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_the_change_reaches_the_hair_and_spares_neck_clothes_and_background_inside_the_crop(faces, truth, detector,
                                                                                            name):
    canvas, expected = compose(faces, truth, (720, 1280), [(name, 300, 100, 1.0)])
    canvas *= 0.75
    result = FramePipeline(Brighten(), detector=detector).restore([canvas], ["auto"])[0]
    change = (result.rgb - canvas).mean(2)
    e = expected[0]
    x, y, w, h = result.faces[0].box
    assert change[int(e.cy - 0.3 * e.side), int(e.cx)] > 0.15  # hair above the forehead gets the model's change
    below_chin = change[int(e.cy + 0.4 * e.side):y + h, x:x + w]  # neck, collar, shoulders
    beside = change[y:int(e.cy), x:x + int(0.1 * w)]  # the background left of the head
    assert below_chin.size and beside.size
    assert below_chin.max() < 0.02 and beside.max() < 0.02
    assert (change[y:y + h, x:x + w] > 0.02).mean() < 0.6  # face and hair, not the crop's square
