"""The add-on in real Blender: each use case end to end against the real engine (tiny model, CPU)."""
import shutil
import subprocess
import sys
from pathlib import Path

import bpy
import numpy as np
import pytest
from conftest import ROOT, engine_restore, run_engine
from scene import pixels


def _state():
    from blender_addon.state import MANAGER, RenderState

    return MANAGER, RenderState


def test_restore_render_matches_the_engine(scene, tiny_weights, tmp_path):
    from blender_addon.operators import save_render_png

    bpy.ops.render.render()
    assert bpy.ops.splat_restore.restore_render() == {"FINISHED"}
    restored = bpy.data.images["Restored Render"]
    assert tuple(restored.size) == (32, 32) and restored.packed_file is not None
    src = tmp_path / "render.png"
    save_render_png(scene, src)
    expected = engine_restore(src, tmp_path / "out", tiny_weights)
    assert np.abs(pixels(restored) - pixels(expected)).max() < 1e-6
    assert _state()[0].status == "ready"


def test_restore_render_keeps_the_scene_output_settings(scene):
    scene.render.image_settings.file_format = "JPEG"
    bpy.ops.render.render()
    bpy.ops.splat_restore.restore_render()
    assert scene.render.image_settings.file_format == "JPEG"


def test_every_animation_frame_is_restored_to_a_sibling_folder(scene, tiny_weights, tmp_path):
    scene.splat_restore.auto_restore = True
    scene.splat_restore.temporal = False  # frame by frame, as a single restore does it
    scene.render.filepath = str(tmp_path / "frame_####")
    bpy.ops.render.render(animation=True)
    names = [f"frame_{i:04d}.png" for i in (1, 2, 3)]
    assert sorted(p.name for p in (tmp_path / "restored").iterdir()) == names
    for name in names:
        expected = engine_restore(tmp_path / name, tmp_path / "expected", tiny_weights)
        got = pixels(tmp_path / "restored" / name)
        assert np.array_equal(got, pixels(expected))
        assert not np.array_equal(got, pixels(tmp_path / name))  # the originals are kept
    assert "3 restored, 0 failed" in _state()[1].last_report


def _keeping_the_renders(copies: Path):
    """A render_write handler that, put before the add-on's, copies each frame as Blender wrote it."""
    copies.mkdir(parents=True, exist_ok=True)

    def keep(scene_, *_):
        shutil.copy2(scene_.render.frame_path(frame=scene_.frame_current), copies)
    return keep


def test_in_place_replaces_each_frame_with_its_restore(scene, tiny_weights, tmp_path):
    scene.splat_restore.auto_restore = True
    scene.splat_restore.in_place = True
    shot, renders = tmp_path / "shot", tmp_path / "renders"
    scene.render.filepath = str(shot / "f_####")
    keep = _keeping_the_renders(renders)
    bpy.app.handlers.render_write.insert(0, keep)
    try:
        bpy.ops.render.render(animation=True)
    finally:
        bpy.app.handlers.render_write.remove(keep)
    names = ["f_0001.png", "f_0002.png", "f_0003.png"]
    assert sorted(p.name for p in shot.iterdir()) == names and "3 restored" in _state()[1].last_report
    expected = _engine_outputs(renders, tmp_path / "expected", tiny_weights, "--temporal")  # as the add-on sends them
    for name in names:
        replaced = pixels(shot / name)
        assert np.array_equal(replaced, pixels(expected / name)), name
        assert not np.array_equal(replaced, pixels(renders / name)), name


def test_still_render_with_write_is_restored(scene, tmp_path):
    scene.splat_restore.auto_restore = True
    scene.render.filepath = str(tmp_path / "still.png")
    scene.render.use_file_extension = False
    bpy.ops.render.render(write_still=True)
    scene.render.use_file_extension = True
    assert (tmp_path / "restored" / "still.png").is_file()


def test_exr_output_is_refused_clearly(scene, tmp_path):
    scene.splat_restore.auto_restore = True
    scene.render.image_settings.file_format = "OPEN_EXR"
    scene.render.filepath = str(tmp_path / "f_####")
    bpy.ops.render.render(animation=True)
    assert not (tmp_path / "restored").exists()
    assert "OPEN_EXR" in _state()[1].last_report and "sRGB" in _state()[1].last_report


def test_engine_killed_mid_animation_is_restarted_once(scene, tmp_path):
    manager, state = _state()
    scene.splat_restore.auto_restore = True
    scene.render.filepath = str(tmp_path / "k_####")
    scene.frame_end = 4

    def kill_after_second(scene_, *_):
        if scene_.frame_current == 2:
            manager.client.process.kill()
            manager.client.process.wait()
    bpy.app.handlers.render_write.append(kill_after_second)
    try:
        bpy.ops.render.render(animation=True)
    finally:
        bpy.app.handlers.render_write.remove(kill_after_second)
    report = state.last_report
    assert "restarted 1x" in report and "4 restored, 0 failed" in report, report
    for i in range(1, 5):
        assert pixels(tmp_path / "restored" / f"k_{i:04d}.png").shape == (32, 32, 4)
    assert not [p for p in (tmp_path / "restored").iterdir() if ".partial" in p.name]


def test_restore_folder_batch(scene, tiny_weights, tmp_path):
    scene.splat_restore.temporal = False
    scene.render.filepath = str(tmp_path / "saved" / "r_####")
    bpy.ops.render.render(animation=True)
    assert bpy.ops.splat_restore.restore_folder(input_dir=str(tmp_path / "saved"),
                                                output_dir=str(tmp_path / "fixed")) == {"FINISHED"}
    for i in (1, 2, 3):
        name = f"r_{i:04d}.png"
        expected = engine_restore(tmp_path / "saved" / name, tmp_path / "expected", tiny_weights)
        assert np.array_equal(pixels(tmp_path / "fixed" / name), pixels(expected))


def _render_slow_animation(scene, pattern: Path) -> list[str]:
    """Three frames of a cube turning slowly: motion the flow can follow, so fusion has something to carry."""
    cube = next(o for o in bpy.data.objects if o.name.startswith("Cube"))
    for f in (1, 2, 3):
        cube.rotation_euler = (0, 0, 0.05 * f)
        cube.keyframe_insert("rotation_euler", frame=f)
    scene.render.filepath = str(pattern)
    bpy.ops.render.render(animation=True)
    return [pattern.name.replace("####", f"{i:04d}") + ".png" for i in (1, 2, 3)]


def _engine_outputs(folder: Path, out: Path, weights: Path, *flags) -> Path:
    r = run_engine("-m", "engine", "restore", folder, "-o", out, "--weights", weights, "--device", "cpu", *flags)
    assert r.returncode == 0, r.stderr
    return out


def test_animation_renders_are_fused_by_default_as_restore_temporal_fuses_them(scene, tiny_weights, tmp_path):
    assert type(scene.splat_restore).bl_rna.properties["temporal"].default  # on unless unticked
    scene.splat_restore.auto_restore = True
    names = _render_slow_animation(scene, tmp_path / "frame_####")
    fused = _engine_outputs(tmp_path, tmp_path / "expected", tiny_weights, "--temporal")
    per_frame = _engine_outputs(tmp_path, tmp_path / "per_frame", tiny_weights)
    for name in names:
        assert np.array_equal(pixels(tmp_path / "restored" / name), pixels(fused / name))
    assert not np.array_equal(pixels(tmp_path / "restored" / names[2]), pixels(per_frame / names[2]))


def test_the_frame_after_one_that_cannot_be_found_is_restored_alone(scene, tiny_weights, tmp_path):
    def lose_frame_2(scene_, *_):  # before the add-on's handler looks for it
        if scene_.frame_current == 2:
            Path(scene_.render.frame_path(frame=2)).unlink()
    scene.splat_restore.auto_restore = True
    bpy.app.handlers.render_write.insert(0, lose_frame_2)
    try:
        names = _render_slow_animation(scene, tmp_path / "frame_####")
    finally:
        bpy.app.handlers.render_write.remove(lose_frame_2)
    assert "2 restored, 1 failed" in _state()[1].last_report
    assert sorted(p.name for p in (tmp_path / "restored").iterdir()) == [names[0], names[2]]
    per_frame = _engine_outputs(tmp_path, tmp_path / "per_frame", tiny_weights)  # frames 1 and 3, each alone
    assert np.array_equal(pixels(tmp_path / "restored" / names[2]), pixels(per_frame / names[2]))  # not fused with 1


def test_restore_folder_fuses_the_frames_with_temporal_smoothing(scene, tiny_weights, tmp_path):
    names = _render_slow_animation(scene, tmp_path / "saved" / "r_####")
    assert bpy.ops.splat_restore.restore_folder(input_dir=str(tmp_path / "saved"),
                                                output_dir=str(tmp_path / "fixed")) == {"FINISHED"}
    fused = _engine_outputs(tmp_path / "saved", tmp_path / "expected", tiny_weights, "--temporal")
    for name in names:
        assert np.array_equal(pixels(tmp_path / "fixed" / name), pixels(fused / name))


def _face_frame(path: Path) -> Path:
    """A 1280x720 frame with a bundled real face, written by the engine's Python (Blender has no sample faces)."""
    code = ("import cv2, numpy as np; from engine.benches.faces import compose_frame; "
            f"cv2.imwrite(r'{path}', (compose_frame(1280, 720, 1)[..., ::-1] * 255).round().astype(np.uint8))")
    path.parent.mkdir(parents=True, exist_ok=True)
    r = run_engine("-c", code)
    assert r.returncode == 0, r.stderr
    return path


def test_restore_folder_restores_faces_and_leaves_the_rest_of_the_frame(scene, tmp_path):
    src = _face_frame(tmp_path / "saved" / "shot.png")
    scene.splat_restore.faces = "auto"
    assert bpy.ops.splat_restore.restore_folder(input_dir=str(src.parent),
                                                output_dir=str(tmp_path / "fixed")) == {"FINISHED"}
    before, after = pixels(src), pixels(tmp_path / "fixed" / "shot.png")
    moved = np.abs(after - before).max(-1) > 1e-6
    assert moved.any() and moved.mean() < 0.5


def test_face_crops_mode_writes_the_crops_beside_the_output(scene, tmp_path):
    src = _face_frame(tmp_path / "saved" / "shot.png")
    scene.splat_restore.faces = "only-crops"
    assert bpy.ops.splat_restore.restore_folder(input_dir=str(src.parent),
                                                output_dir=str(tmp_path / "fixed")) == {"FINISHED"}
    assert sorted(p.name for p in (tmp_path / "fixed").iterdir()) == ["shot_face0.png"]


def test_a_render_without_a_face_comes_back_unchanged_in_faces_mode(scene, tmp_path):
    from blender_addon.operators import save_render_png

    scene.render.resolution_x = scene.render.resolution_y = 96  # larger than the tiny model: faces mode applies
    scene.splat_restore.auto_restore = True
    scene.splat_restore.faces = "auto"
    scene.render.filepath = str(tmp_path / "f_####")
    bpy.ops.render.render(animation=True)
    for i in (1, 2, 3):
        name = f"f_{i:04d}.png"
        assert np.array_equal(pixels(tmp_path / "restored" / name), pixels(tmp_path / name))
    assert "3 frames without a face left unchanged" in _state()[1].last_report
    scene.splat_restore.faces = "off"  # the whole frame, tiled
    bpy.ops.render.render()
    assert bpy.ops.splat_restore.restore_render() == {"FINISHED"}
    save_render_png(scene, tmp_path / "render.png")
    assert not np.array_equal(pixels(bpy.data.images["Restored Render"]), pixels(tmp_path / "render.png"))


def test_restore_folder_reports_an_empty_folder(addon, tmp_path):
    with pytest.raises(RuntimeError, match="no images"):
        bpy.ops.splat_restore.restore_folder(input_dir=str(tmp_path))


def test_wrong_interpreter_is_reported_in_the_ui(scene, addon):
    bpy.ops.render.render()
    good = addon.engine_python
    addon.engine_python = str(Path(good).parent / "no_such_python")
    try:
        with pytest.raises(RuntimeError, match="interpreter not found"):
            bpy.ops.splat_restore.restore_render()
        assert _state()[0].status in ("stopped", "error")
    finally:
        addon.engine_python = good


def test_missing_weights_are_reported_in_the_ui(scene, addon, tmp_path):
    bpy.ops.render.render()
    good = addon.weights
    addon.weights = str(tmp_path / "missing.safetensors")
    try:
        with pytest.raises(RuntimeError, match="weights not found"):
            bpy.ops.splat_restore.restore_render()
    finally:
        addon.weights = good


def test_stop_engine_frees_the_process(scene):
    bpy.ops.render.render()
    bpy.ops.splat_restore.restore_render()
    manager = _state()[0]
    process = manager.client.process
    assert bpy.ops.splat_restore.stop_engine() == {"FINISHED"}
    assert process.poll() is not None and manager.status == "stopped"


def test_the_built_zip_installs_and_restores(tiny_weights, tmp_path):
    from conftest import engine_python

    r = subprocess.run([sys.executable, str(ROOT / "build.py"), "addon"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    zip_path = Path(r.stdout.strip().splitlines()[-1])
    script = Path(__file__).with_name("zip_install_check.py")
    r = subprocess.run([sys.executable, str(script), str(zip_path), engine_python(), str(tiny_weights),
                        str(tmp_path)], capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "BLENDER_USER_RESOURCES": str(tmp_path / "user")})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "ZIP OK" in r.stdout


@pytest.fixture
def difix_model(addon, tiny_difix):
    addon.model, addon.difix_weights, addon.accept_license = "difix", str(tiny_difix), False
    yield addon
    addon.model, addon.accept_license = "checkpoint", False


def test_difix_is_refused_until_its_licence_is_accepted(scene, difix_model):
    bpy.ops.render.render()
    if "Restored Render" in bpy.data.images:
        bpy.data.images.remove(bpy.data.images["Restored Render"])
    with pytest.raises(RuntimeError, match="non-commercial"):
        bpy.ops.splat_restore.restore_render()
    assert "Restored Render" not in bpy.data.images


def test_difix_restores_once_accepted(scene, difix_model, tiny_difix, tmp_path):
    from blender_addon.operators import save_render_png

    difix_model.accept_license = True
    bpy.ops.render.render()
    assert bpy.ops.splat_restore.restore_render() == {"FINISHED"}
    src = tmp_path / "render.png"
    save_render_png(scene, src)
    r = run_engine("-m", "engine", "restore", src, "-o", tmp_path / "out", "--weights", tiny_difix, "--device",
                   "cpu", "--accept-license")
    assert r.returncode == 0, r.stderr
    restored = bpy.data.images["Restored Render"]
    assert np.abs(pixels(restored) - pixels(tmp_path / "out" / "render.png")).max() < 1e-6
