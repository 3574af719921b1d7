"""The scene's Reference Photo in real Blender: sent with Restore Render, Restore Every Frame and Restore Folder when
the engine's weights take one (a tiny Difix-ref, CPU), never to weights that cannot use it; the panel says which."""
from pathlib import Path

import bpy
import numpy as np
import pytest
from conftest import run_engine
from scene import pixels


@pytest.fixture(scope="session")
def tiny_difix_ref(tmp_path_factory):
    """A tiny model in NVIDIA Difix-ref's published layout, built by the engine's Python."""
    folder = tmp_path_factory.mktemp("difix_ref") / "difix_ref"
    r = run_engine("-c", f"import sys; from pathlib import Path; sys.path.insert(0, 'tests'); "
                         f"from tiny_base import make_tiny_difix_ref; make_tiny_difix_ref(Path(r'{folder}'))")
    assert r.returncode == 0, r.stderr
    return folder


@pytest.fixture
def photo(tmp_path):
    """A reference photo (any image: the tiny model knows no faces) the size of no frame."""
    r = run_engine("-c", f"import numpy as np, cv2; rng = np.random.default_rng(5); "
                         f"cv2.imwrite(r'{tmp_path / 'photo.png'}', (rng.random((40, 30, 3)) * 255).astype('uint8'))")
    assert r.returncode == 0, r.stderr
    return tmp_path / "photo.png"


@pytest.fixture
def with_reference(scene, addon, tiny_difix_ref, photo):
    """The Difix-ref model chosen and accepted, the photo set; all put back afterwards."""
    addon.model, addon.difix_weights, addon.accept_license = "difix", str(tiny_difix_ref), True
    scene.splat_restore.reference_photo = str(photo)
    yield scene
    scene.splat_restore.reference_photo = ""
    addon.model, addon.accept_license = "checkpoint", False


def _engine(*args, tmp_path, reference=None, weights):
    out = tmp_path / "expected"
    r = run_engine("-m", "engine", "restore", *args, "-o", out, "--weights", weights, "--device", "cpu",
                   "--accept-license", "--overwrite", *(["--reference", reference] if reference else []))
    assert r.returncode == 0, r.stderr
    return out


def _restored_render(scene, tmp_path) -> Path:
    from blender_addon.operators import save_render_png

    bpy.ops.render.render()
    assert bpy.ops.splat_restore.restore_render() == {"FINISHED"}
    save_render_png(scene, tmp_path / "render.png")
    return tmp_path / "render.png"


def test_restore_render_sends_the_reference_photo_to_weights_that_take_one(with_reference, tiny_difix_ref, photo,
                                                                          tmp_path):
    src = _restored_render(with_reference, tmp_path)
    expected = _engine(src, tmp_path=tmp_path, reference=photo, weights=tiny_difix_ref) / "render.png"
    assert np.abs(pixels(bpy.data.images["Restored Render"]) - pixels(expected)).max() < 1e-6
    other = tmp_path / "other.png"  # and the photo matters: another one restores otherwise
    run_engine("-c", f"import shutil; shutil.copy(r'{src}', r'{other}')")
    with_reference.splat_restore.reference_photo = str(other)
    assert bpy.ops.splat_restore.restore_render() == {"FINISHED"}
    assert np.abs(pixels(bpy.data.images["Restored Render"]) - pixels(expected)).max() > 1e-3


def test_weights_that_need_a_reference_say_so_without_one(with_reference):
    with_reference.splat_restore.reference_photo = ""
    bpy.ops.render.render()
    with pytest.raises(RuntimeError, match="need a reference photo of the person and none was given"):
        bpy.ops.splat_restore.restore_render()


def test_every_frame_and_folder_restores_carry_the_reference(with_reference, tiny_difix_ref, photo, tmp_path):
    scene = with_reference
    scene.splat_restore.auto_restore, scene.splat_restore.temporal = True, False
    scene.render.filepath = str(tmp_path / "shot" / "f_####")
    try:
        bpy.ops.render.render(animation=True)
    finally:
        scene.splat_restore.auto_restore = False
    names = ["f_0001.png", "f_0002.png", "f_0003.png"]
    expected = _engine(tmp_path / "shot", tmp_path=tmp_path, reference=photo, weights=tiny_difix_ref)
    for name in names:
        assert np.array_equal(pixels(tmp_path / "shot" / "restored" / name), pixels(expected / name)), name
    assert bpy.ops.splat_restore.restore_folder(input_dir=str(tmp_path / "shot"), output_dir=str(tmp_path / "folder"),
                                                existing="overwrite") == {"FINISHED"}
    for name in names:
        assert np.array_equal(pixels(tmp_path / "folder" / name), pixels(expected / name)), name


def test_plain_weights_restore_without_the_photo_and_the_panel_says_why(scene, addon, tiny_weights, photo,
                                                                         tmp_path):
    scene.splat_restore.reference_photo = str(photo)
    try:
        notes = _panel_labels()
        assert any("cannot use a Reference Photo" in text for text in notes), notes
        src = _restored_render(scene, tmp_path)  # the photo is not sent: plain weights would refuse it
        r = run_engine("-m", "engine", "restore", src, "-o", tmp_path / "plain", "--weights", tiny_weights,
                       "--device", "cpu")
        assert r.returncode == 0, r.stderr
        assert np.abs(pixels(bpy.data.images["Restored Render"]) - pixels(tmp_path / "plain" / "render.png")).max() \
            < 1e-6
        scene.splat_restore.reference_photo = ""
        assert not any("Reference Photo" in text for text in _panel_labels())
    finally:
        scene.splat_restore.reference_photo = ""


def test_the_panel_tells_difix_ref_weights_need_the_photo(with_reference):
    assert any("Restores use this photo" in text for text in _panel_labels())
    with_reference.splat_restore.reference_photo = ""
    assert any("need a Reference Photo" in text for text in _panel_labels())


class _Layout:
    """Stands in for a panel's UILayout and keeps every label drawn into it or its rows and columns."""

    def __init__(self, labels=None):
        self.labels = [] if labels is None else labels

    def label(self, text="", **_):
        self.labels.append(text)

    def row(self, **_):
        return _Layout(self.labels)

    column = box = row

    def prop(self, *_, **__):
        pass

    def operator(self, *_, **__):
        return type("Props", (), {})()


def _panel_labels() -> list[str]:
    from blender_addon import ui

    layout = _Layout()
    ui._draw(layout, bpy.context)
    return layout.labels
