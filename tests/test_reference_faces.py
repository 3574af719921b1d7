"""Face-aware restore with a reference photo: the reference's face is found once and cut with the frames' framing, so
the restorer sees both views framed alike; whole frames get the whole photo; a reference without a face is refused
by name where faces are restored, and nowhere else."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.faces.reference import Reference, ReferenceCache, load_reference
from engine.faces.restore import FramePipeline
from engine.images import read_image
from engine.runtime import ReferenceError

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("mediapipe")


class Recorder:
    """A runner that takes a reference and changes nothing, recording what each call was given."""
    model_size, batch_size, provenance, takes_reference = 512, 8, {}, True

    def __init__(self):
        self.calls = []  # (images, tiled, reference)

    def restore(self, images, tiled=True, reference=None):
        self.calls.append(([np.array(i) for i in images], tiled, reference))
        return [np.array(i, copy=True) for i in images]

    def describe(self):
        return {}


class Plain(Recorder):
    takes_reference = False


@pytest.fixture(scope="module")
def faces():
    from engine.faces.bundled import bundled_faces

    return bundled_faces()


@pytest.fixture(scope="module")
def detector():
    from engine.faces.detect import FaceDetector

    return FaceDetector(min_face=48)


def canvas(faces, size, placements, background=0.35):
    """(h, w) grey canvas with bundled photos pasted at (name, x, y, scale)."""
    out = np.full((*size, 3), background, np.float32)
    for name, x, y, scale in placements:
        photo = cv2.resize(faces[name], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) / 255.0
        out[y:y + photo.shape[0], x:x + photo.shape[1]] = photo[:size[0] - y, :size[1] - x]
    return out


def png(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(np.rint(rgb * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    return path


def test_the_references_face_is_framed_like_the_frames_face(faces, detector, tmp_path):
    # the same person at another place and size in a portrait photo, beside a smaller face: the largest is taken
    frame = canvas(faces, (720, 1280), [("astronaut", 300, 100, 0.8)])
    photo = png(tmp_path / "photo.png", canvas(faces, (1100, 800), [("grace_hopper", 20, 20, 0.35),
                                                                    ("astronaut", 150, 400, 1.2)]))
    runner = Recorder()
    pipeline = FramePipeline(runner, detector=detector)
    pipeline.set_reference(load_reference(photo))
    pipeline.restore([frame], ["auto"])
    (crops, tiled, reference), = runner.calls
    assert len(crops) == 1 and not tiled and reference.shape == (512, 512, 3)
    # both views cut with one framing show the same square of the astronaut photo: nearly the same pixels
    assert np.abs(reference - crops[0]).mean() < 0.03
    # what any other framing gives (the whole photo fitted to the crop, the other face) is far from it
    whole = cv2.resize(read_image(photo).rgb[150:950], (512, 512), interpolation=cv2.INTER_AREA)
    other = detector.detect(cv2.convertScaleAbs(read_image(photo).rgb, alpha=255.0))[1].frame.crop(
        read_image(photo).rgb, 512)
    assert np.abs(whole - crops[0]).mean() > 0.1 and np.abs(other - crops[0]).mean() > 0.1


def test_whole_frames_get_the_whole_photo_and_the_face_is_found_once(faces, detector, tmp_path, monkeypatch):
    photo = load_reference(png(tmp_path / "photo.png", canvas(faces, (700, 600), [("astronaut", 40, 90, 1.0)])))
    runner = Recorder()
    pipeline = FramePipeline(runner, detector=detector)
    pipeline.set_reference(photo)
    seen = []
    real = detector.detect
    monkeypatch.setattr(detector, "detect", lambda rgb8: seen.append(rgb8.shape) or real(rgb8))
    frame = canvas(faces, (720, 1280), [("astronaut", 300, 100, 0.8)])
    pipeline.restore([frame, frame], ["auto", "off"])
    pipeline.restore([frame], ["auto"])
    assert seen.count(photo.rgb.shape) == 1 and len(seen) == 3  # two face frames, and the reference once
    whole, face, again = (call[2] for call in runner.calls)
    assert whole is photo.rgb  # mode off: the whole photo, the runner fits it to each call
    assert face is again and face.shape == (512, 512, 3)  # one array: the runner encodes it once


def test_a_reference_without_a_face_is_refused_by_name_only_where_faces_are_restored(faces, detector, tmp_path):
    blank = load_reference(png(tmp_path / "wall.png", np.full((300, 400, 3), 0.6, np.float32)))
    runner = Recorder()
    pipeline = FramePipeline(runner, detector=detector)
    pipeline.set_reference(blank)
    pipeline.check_reference(needs_faces=False)  # whole frames need no face in it
    frame = canvas(faces, (720, 1280), [("astronaut", 300, 100, 0.8)])
    assert pipeline.restore([frame], ["off"])[0].mode == "whole"
    for attempt in (lambda: pipeline.check_reference(needs_faces=True),
                    lambda: pipeline.restore([frame], ["auto"])):
        with pytest.raises(ReferenceError, match=r"reference photo .*wall\.png: no face found in it"):
            attempt()
    assert len(runner.calls) == 1


def test_a_reference_must_match_the_weights(tmp_path):
    photo = np.full((64, 64, 3), 0.5, np.float32)
    with pytest.raises(ReferenceError, match="reference photo me.png given, but these weights cannot use one"):
        FramePipeline(Plain()).set_reference(photo, "me.png")
    with pytest.raises(ReferenceError, match="need a reference photo of the person and none was given"):
        FramePipeline(Recorder()).check_reference(needs_faces=False)
    FramePipeline(Plain()).check_reference(needs_faces=True)  # no reference, none needed
    for path, problem in ((tmp_path / "gone.png", "gone.png: file does not exist"),
                          (tmp_path, "is a folder, not an image"),
                          (tmp_path.joinpath("notes.png").write_bytes(b"text") and tmp_path / "notes.png",
                           "notes.png: not an image")):
        with pytest.raises(ReferenceError, match=f"reference photo .*{problem}"):
            load_reference(path)


def test_the_cache_reads_each_photo_once_and_again_when_it_changes(tmp_path):
    cache = ReferenceCache(size=2)
    a, b, c = (png(tmp_path / f"{n}.png", np.full((8, 8, 3), k / 4, np.float32)) for k, n in enumerate("abc"))
    first = cache.get(a)
    assert cache.get(str(a)) is first and cache.get(tmp_path / "." / "a.png") is first and cache.loads == 1
    cache.get(b), cache.get(a), cache.get(c)  # b is now the least recently used: dropped
    assert cache.loads == 3 and cache.get(a) is first and cache.loads == 3
    cache.get(b)
    assert cache.loads == 4
    png(a, np.full((8, 8, 3), 0.9, np.float32))  # replaced on disk: another size, so another key
    assert isinstance(cache.get(a), Reference) and cache.get(a) is not first and cache.loads == 5
    with pytest.raises(ReferenceError, match="gone.png"):
        cache.get(tmp_path / "gone.png")
    small = ReferenceCache(size=4, max_pixels=150)  # two 8 x 8 photos fit, a third pushes the oldest out
    kept = [small.get(p) for p in (b, c)]
    small.get(a)
    assert small.get(c) is kept[1] and small.get(b) is not kept[0] and small.loads == 4


def test_with_a_tiny_difix_ref_the_reference_changes_the_restored_face(faces, tmp_path):
    """The real runner through the face path: the reference's face crop reaches the model and matters."""
    from tiny_base import make_tiny_difix_ref

    from engine.faces.detect import FaceDetector
    from engine.runtime import ModelRunner

    runner = ModelRunner.from_pretrained(make_tiny_difix_ref(tmp_path / "ref"), accept_license=True, device="cpu",
                                         compile="off")
    pipeline = FramePipeline(runner, detector=FaceDetector(min_face=32))
    frame = canvas(faces, (300, 360), [("astronaut", 50, 20, 0.5)])
    outputs = []
    for name in ("astronaut", "grace_hopper"):
        pipeline.set_reference(canvas(faces, (300, 260), [(name, 0, 0, 0.5)]), name)
        result = pipeline.restore([frame], ["auto"])[0]
        assert result.mode == "faces" and len(result.faces) == 1
        outputs.append(result.rgb)
    assert np.abs(outputs[0] - outputs[1]).max() > 1 / 255


def test_the_cli_refuses_a_reference_without_a_face_in_faces_mode(faces, tmp_path):
    from tiny_base import make_tiny_difix_ref

    weights = make_tiny_difix_ref(tmp_path / "ref")
    frame = png(tmp_path / "frame.png", canvas(faces, (180, 240), [("astronaut", 60, 20, 0.3)]))
    wall = png(tmp_path / "wall.png", np.full((120, 160, 3), 0.6, np.float32))
    r = subprocess.run([sys.executable, "-m", "engine", "restore", str(frame), "-o", str(tmp_path / "out"),
                        "--weights", str(weights), "--accept-license", "--device", "cpu", "--reference", str(wall),
                        "--faces", "auto", "--min-face", "32"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "wall.png: no face found" in errors[0], r.stderr
    assert not (tmp_path / "out" / "frame.png").exists()
