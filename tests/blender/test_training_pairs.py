"""Make Training Pairs in real Blender: a capture rig's cameras rendered at their photos' sizes beside the photos,
split, listed, and the scene left exactly as it was; every way it can go wrong named, nothing half-written."""
import json
from pathlib import Path

import addon_utils
import bpy
import numpy as np
import pytest
from capture_scene import as_exif_rotated_jpeg, build_capture_scene, render_photos
from conftest import engine_python

from blender_addon.training_pairs import MANIFEST, png_size


@pytest.fixture(scope="module")
def pairs_addon():
    """The add-on, enabled without the restore tests' tiny model (making pairs needs no weights)."""
    enabled_here = not addon_utils.check("blender_addon")[1]
    if enabled_here:
        assert addon_utils.enable("blender_addon", default_set=True) is not None
    bpy.context.preferences.addons["blender_addon"].preferences.engine_python = engine_python()
    yield
    if enabled_here:
        addon_utils.disable("blender_addon", default_set=True)


@pytest.fixture
def rig(pairs_addon, tmp_path):
    """The capture scene, its photos in tmp/photos, and the settings pointing there and at tmp/pairs."""
    scene = build_capture_scene(cameras=5)
    photos = render_photos(scene, tmp_path / "photos")
    settings = scene.splat_restore.training_pairs
    settings.photos_dir, settings.output_dir = str(tmp_path / "photos"), str(tmp_path / "pairs")
    settings.cameras, settings.holdout = "ALL", 8
    return scene, photos, tmp_path / "pairs"


def _summary() -> dict:
    from blender_addon.pairs_operator import PairsState

    return PairsState.last_summary


def _scene_state(scene) -> dict:
    """Everything a pair render may touch, as the user set it."""
    r, s = scene.render, scene.render.image_settings
    return {"camera": scene.camera.name, "frame": (scene.frame_current, scene.frame_subframe),
            "render": (r.resolution_x, r.resolution_y, r.resolution_percentage, r.filepath, r.use_border,
                       r.pixel_aspect_x, r.engine, scene.cycles.samples),
            "image": {p.identifier: getattr(s, p.identifier) for p in s.bl_rna.properties
                      if p.type in {"ENUM", "INT", "BOOLEAN", "FLOAT", "STRING"} and not p.is_readonly},
            "markers": [(m.name, m.frame, m.camera and m.camera.name) for m in scene.timeline_markers],
            "auto_restore": scene.splat_restore.auto_restore}


def _unusual_settings(scene) -> None:
    """Output settings a pair render must change and put back: EXR 32-bit, 50 %, a border, a marker-bound camera."""
    r = scene.render
    r.image_settings.file_format, r.image_settings.color_depth = "OPEN_EXR", "32"
    r.image_settings.color_mode = "RGBA"
    r.resolution_percentage, r.use_border, r.filepath = 50, True, "//frames/shot_"
    marker = scene.timeline_markers.new("cut", frame=1)
    marker.camera = bpy.data.objects["cam_002"]  # would switch every pair render to cam_002
    scene.camera = bpy.data.objects["cam_002"]
    scene.frame_set(2)


def _raw(path: Path) -> np.ndarray:
    """A PNG's stored values in [0, 1], top row first, without Blender's colour conversion (16-bit too)."""
    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        image.colorspace_settings.name = "Non-Color"
        a = np.empty(len(image.pixels), np.float32)
        image.pixels.foreach_get(a)
        return a.reshape(image.size[1], image.size[0], image.channels)[::-1, :, :3]
    finally:
        bpy.data.images.remove(image)


def _png_bit_depth(path: Path) -> int:
    return path.read_bytes()[24]


def _files(folder: Path) -> list:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_pairs_from_every_camera_at_each_photos_size_and_the_scene_kept(rig, tmp_path):
    scene, photos, out = rig
    render_photos(scene, tmp_path / "photos", sizes={"cam_003": (72, 48)}, depth16=("cam_004",),
                  names=["cam_003", "cam_004"])
    upright = _raw(photos["cam_002"])
    as_exif_rotated_jpeg(photos["cam_002"], engine_python())
    (tmp_path / "photos" / "stray.png").write_bytes(photos["cam_001"].read_bytes())
    bpy.ops.object.camera_add(location=(0, -6, 1))
    bpy.context.active_object.name = "cam_extra"  # no photo
    _unusual_settings(scene)
    scene.splat_restore.training_pairs.holdout = 2
    before = _scene_state(scene)
    assert bpy.ops.splat_restore.make_training_pairs() == {"FINISHED"}
    assert _scene_state(scene) == before
    names = [f"cam_{k:03d}" for k in range(1, 6)]
    assert _files(out) == sorted([MANIFEST] + [f"{f}/{n}.png" for f in ("clean", "degraded") for n in names])
    sizes = {n: tuple(png_size(out / "degraded" / f"{n}.png")) for n in names}
    assert sizes == {n: (72, 48) if n == "cam_003" else (48, 32) for n in names}
    assert all(tuple(png_size(out / "clean" / f"{n}.png")) == sizes[n] for n in names)
    assert [_png_bit_depth(out / f / "cam_004.png") for f in ("degraded", "clean")] == [16, 16]
    assert _png_bit_depth(out / "degraded" / "cam_001.png") == 8
    # each render is its own camera's view: nearer its photo than any other camera's render
    renders = {n: _raw(out / "degraded" / f"{n}.png") for n in names}
    for n in [n for n in names if n != "cam_003"]:  # cam_003's photo is the only one of its size
        clean = _raw(out / "clean" / f"{n}.png")
        own = np.abs(renders[n] - clean).mean()
        others = [np.abs(renders[m] - clean).mean() for m in names if m != n and renders[m].shape == clean.shape]
        assert own < 0.6 * min(others), (n, own, others)
    assert np.abs(_raw(out / "clean" / "cam_002.png") - upright).mean() < 0.02  # EXIF orientation applied
    records = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert [(r["name"], r["file"], r["split"], r["status"]) for r in records] == [
        (n, f"{n}.png", "test" if n in ("cam_001", "cam_003", "cam_005") else "train", "ok") for n in names]
    assert records[2]["photo_size"] == records[2]["render_size"] == [72, 48]
    assert records[1]["source"] == str(tmp_path / "photos" / "cam_002.jpg")
    summary = _summary()
    assert summary["unmatched_cameras"] == ["cam_extra"] and summary["unmatched_photos"] == ["stray.png"]
    assert summary["test"] == ["cam_001", "cam_003", "cam_005"] and not summary["failed"]


def test_no_camera_matching_a_photo_is_an_error_and_writes_nothing(rig, tmp_path):
    scene, photos, out = rig
    for path in photos.values():
        path.rename(path.with_name("IMG_" + path.name))
    with pytest.raises(RuntimeError, match="no camera matches a photo"):
        bpy.ops.splat_restore.make_training_pairs()
    assert not out.exists()


def test_an_undecodable_photo_is_named_and_the_other_pairs_made(rig, tmp_path):
    scene, photos, out = rig
    data = photos["cam_003"].read_bytes()
    photos["cam_003"].write_bytes(data[: len(data) // 2])  # cut short: no IEND
    before = _scene_state(scene)
    assert bpy.ops.splat_restore.make_training_pairs() == {"FINISHED"}
    assert _scene_state(scene) == before
    failed = _summary()["failed"]
    assert list(failed) == ["cam_003"] and str(photos["cam_003"]) in failed["cam_003"]
    assert "truncated" in failed["cam_003"]
    made = ["cam_001", "cam_002", "cam_004", "cam_005"]
    assert _files(out) == sorted([MANIFEST] + [f"{f}/{n}.png" for f in ("clean", "degraded") for n in made])
    assert [json.loads(line)["name"] for line in (out / MANIFEST).read_text().splitlines()] == made


def test_every_photo_undecodable_is_an_error_and_leaves_no_folder(rig):
    scene, photos, out = rig
    for path in photos.values():
        path.write_bytes(b"not a photo")
    with pytest.raises(RuntimeError, match="no pair can be made.*cam_001.png: not an image"):
        bpy.ops.splat_restore.make_training_pairs()
    assert not out.exists()


def test_cancel_between_cameras_leaves_only_whole_listed_pairs(rig):
    from blender_addon.pairs_operator import PairsRun, tick

    scene, photos, out = rig
    _unusual_settings(scene)
    before = _scene_state(scene)
    cameras = [o for o in scene.objects if o.type == "CAMERA"]
    run = PairsRun(scene, cameras, photos["cam_001"].parent, out, 8, engine_python())
    run.prepare()
    run.start_import()
    while tick(run, cancel=False) == "importing":  # as the modal operator's timer events do
        run.importer.wait()
    while len(run.records) < 2:
        assert tick(run, cancel=False) == "rendering"
    assert _scene_state(scene) == before  # between cameras the scene is the user's
    assert tick(run, cancel=True) == "done"  # Esc
    summary = run.finish(cancelled=True)
    assert summary["pairs"] == ["cam_001", "cam_002"] and summary["not_made"] == ["cam_003", "cam_004", "cam_005"]
    assert _files(out) == sorted([MANIFEST] + [f"{f}/{n}.png" for f in ("clean", "degraded")
                                                for n in ("cam_001", "cam_002")])
    assert _scene_state(scene) == before


def test_a_render_that_fails_midway_leaves_the_scene_and_no_files(rig, monkeypatch):
    import blender_addon.pairs_render as pairs_render

    scene, photos, out = rig
    _unusual_settings(scene)
    before = _scene_state(scene)

    class FailingOps:  # the render happens, then fails as a full disk or a crashed render would
        class render:
            @staticmethod
            def render(**kw):
                bpy.ops.render.render(**kw)
                if scene.camera.name == "cam_004":
                    raise RuntimeError("simulated render failure")
                return {"FINISHED"}

    monkeypatch.setattr(pairs_render, "bpy", type("bpy", (), {"ops": FailingOps, "data": bpy.data}))
    assert bpy.ops.splat_restore.make_training_pairs() == {"FINISHED"}
    assert _scene_state(scene) == before
    assert _summary()["failed"] == {"cam_004": "simulated render failure"}
    assert "cam_004.png" not in " ".join(_files(out))


def test_a_portrait_photo_with_sensor_fit_auto_is_refused_naming_both_sizes(rig, tmp_path):
    scene, photos, out = rig
    render_photos(scene, tmp_path / "photos", sizes={"cam_002": (32, 48)}, names=["cam_002"])
    assert bpy.ops.splat_restore.make_training_pairs() == {"FINISHED"}
    reason = _summary()["failed"]["cam_002"]
    assert "32x48 (portrait)" in reason and "48x32 (landscape)" in reason and "Sensor Fit" in reason
    assert not (out / "degraded" / "cam_002.png").exists() and len(_summary()["pairs"]) == 4
    bpy.data.objects["cam_002"].data.sensor_fit = "HORIZONTAL"  # the sensor spans the width, whatever the shape
    assert bpy.ops.splat_restore.make_training_pairs(overwrite=True) == {"FINISHED"}
    assert tuple(png_size(out / "degraded" / "cam_002.png")) == (32, 48) and not _summary()["failed"]


def test_a_folder_holding_pairs_is_kept_unless_replaced_and_foreign_files_never(rig):
    scene, photos, out = rig
    assert bpy.ops.splat_restore.make_training_pairs() == {"FINISHED"}
    first = (out / "degraded" / "cam_001.png").stat().st_mtime_ns
    with pytest.raises(RuntimeError, match="already holds 5 pairs"):
        bpy.ops.splat_restore.make_training_pairs()
    photos["cam_005"].unlink()
    assert bpy.ops.splat_restore.make_training_pairs(overwrite=True) == {"FINISHED"}
    assert (out / "degraded" / "cam_001.png").stat().st_mtime_ns != first
    assert not (out / "degraded" / "cam_005.png").exists()  # the old pair went with its manifest record
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="notes.txt"):
        bpy.ops.splat_restore.make_training_pairs(overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and len(_files(out / "degraded")) == 4


def test_selected_cameras_only(rig):
    scene, photos, out = rig
    for obj in scene.objects:
        obj.select_set(obj.name in ("cam_002", "cam_004"))
    scene.splat_restore.training_pairs.cameras = "SELECTED"
    assert bpy.ops.splat_restore.make_training_pairs() == {"FINISHED"}
    assert _summary()["pairs"] == ["cam_002", "cam_004"] and _summary()["test"] == ["cam_002"]
    assert _summary()["unmatched_photos"] == ["cam_001.png", "cam_003.png", "cam_005.png"]


def test_a_pair_that_cannot_be_listed_is_removed_whole(rig, monkeypatch):
    import blender_addon.pairs_operator as pairs_operator

    scene, photos, out = rig
    real = pairs_operator.tp.write_manifest

    def full_disk(folder, records):
        if records[-1]["name"] == "cam_004":
            raise OSError(28, "No space left on device")
        real(folder, records)

    monkeypatch.setattr(pairs_operator.tp, "write_manifest", full_disk)
    assert bpy.ops.splat_restore.make_training_pairs() == {"FINISHED"}
    assert "No space left" in _summary()["failed"]["cam_004"]
    made = ["cam_001", "cam_002", "cam_003", "cam_005"]
    assert _files(out) == sorted([MANIFEST] + [f"{f}/{n}.png" for f in ("clean", "degraded") for n in made])
    assert [json.loads(line)["name"] for line in (out / MANIFEST).read_text().splitlines()] == made


def test_the_settings_default_to_all_cameras_holding_out_every_8th(pairs_addon):
    group = bpy.types.Scene.bl_rna.properties["splat_restore"].fixed_type.properties["training_pairs"].fixed_type
    assert (group.properties["cameras"].default, group.properties["holdout"].default) == ("ALL", 8)


class _Layout:
    """Stands in for a panel's layout (there is no UI in background mode): records what draw() puts in it."""

    def __init__(self, log=None):
        self.log = [] if log is None else log

    def __getattr__(self, name):
        def call(*args, **kw):
            self.log.append((name, args[1] if name == "prop" else args[0] if args else "", kw.get("text")))
            return _Layout(self.log)
        return call


def test_the_panel_offers_replacing_pairs_once_a_folder_holds_them_and_shows_the_report(rig):
    from blender_addon.ui import SPLATRESTORE_PT_training_pairs as panel

    scene, photos, out = rig
    drawn = _Layout()
    panel.draw(type("Panel", (), {"layout": drawn})(), bpy.context)
    assert [e[1] for e in drawn.log if e[0] == "prop"] == ["photos_dir", "output_dir", "cameras", "holdout"]
    assert [e[2] for e in drawn.log if e[0] == "operator"] == [None]
    assert bpy.ops.splat_restore.make_training_pairs() == {"FINISHED"}
    drawn = _Layout()
    panel.draw(type("Panel", (), {"layout": drawn})(), bpy.context)
    assert [e[2] for e in drawn.log if e[0] == "operator"] == [None, "Replace Existing Pairs"]
    assert any(e[0] == "label" and "5 training pairs" in e[2] for e in drawn.log)
