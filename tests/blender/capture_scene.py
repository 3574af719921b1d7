"""A capture rig in real Blender for the training-pair tests: a textured object seen by cameras on a circle, and its
"photos" (the same views rendered sharper: a finer texture, more samples), optionally shifted by a known offset.

The scene's own look stands in for a splat avatar's (a soft texture, 8 samples); the photos for the capture (the
sharp texture, 32 samples). Tiny sizes keep each Cycles render well under a second on two CPU cores.

    scene = build_capture_scene(cameras=5)
    photos = render_photos(scene, folder, shift={"cam_003": (3, -2)})  # photo[y + dy, x + dx] == render[y, x]
"""
from __future__ import annotations

import math
import subprocess
from pathlib import Path

import bpy
import numpy as np
from mathutils import Vector

TEXTURE = 128
SOFT, SHARP = "capture_soft", "capture_sharp"


def _pattern(sharp: bool) -> np.ndarray:
    """RGBA (TEXTURE, TEXTURE, 4): checks and dots in colour; the soft one is the sharp one box-blurred."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[:TEXTURE, :TEXTURE]
    img = np.zeros((TEXTURE, TEXTURE, 4), np.float32)
    checks = ((x // 8 + y // 8) % 2).astype(np.float32)
    img[..., 0] = 0.25 + 0.6 * checks
    img[..., 1] = 0.3 + 0.5 * ((x // 16) % 2)
    img[..., 2] = 0.2 + 0.6 * rng.random((TEXTURE, TEXTURE)) ** 4
    img[..., 3] = 1
    if not sharp:
        k = 2
        pad = np.pad(img[..., :3], ((k, k), (k, k), (0, 0)), mode="wrap")
        c = pad.cumsum(0).cumsum(1)
        c = np.pad(c, ((1, 0), (1, 0), (0, 0)))
        n = 2 * k + 1
        img[..., :3] = (c[n:, n:] - c[:-n, n:] - c[n:, :-n] + c[:-n, :-n])[:TEXTURE, :TEXTURE] / n ** 2
    return img


def _texture(name: str, sharp: bool):
    image = bpy.data.images.get(name) or bpy.data.images.new(name, TEXTURE, TEXTURE, alpha=True)
    image.pixels.foreach_set(_pattern(sharp).ravel())
    image.update()
    return image


def _clear(scene) -> None:
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    for marker in list(scene.timeline_markers):
        scene.timeline_markers.remove(marker)


def build_capture_scene(cameras: int = 5, size=(48, 32), samples: int = 8, radius: float = 4.0):
    """The current scene, emptied and rebuilt: Cycles CPU at `size`, a textured cube on a plane, `cameras` cameras
    named cam_001... on a circle around it, all looking at it (sensor fit Auto)."""
    scene = bpy.context.scene
    _clear(scene)
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.render.resolution_x, scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1
    scene.render.use_border = False
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_depth = "8"
    scene.render.image_settings.color_mode = "RGBA"
    scene.frame_set(1)
    if hasattr(scene, "splat_restore"):
        scene.splat_restore.auto_restore = False
    material = bpy.data.materials.get("capture") or bpy.data.materials.new("capture")
    if material.node_tree is None:  # Blender before 5.0: a new material has no nodes until asked
        material.use_nodes = True
    nodes = material.node_tree.nodes
    tex = nodes.get("capture_texture") or nodes.new("ShaderNodeTexImage")
    tex.name = "capture_texture"
    tex.image = _texture(SOFT, sharp=False)
    _texture(SHARP, sharp=True)
    material.node_tree.links.new(tex.outputs["Color"], nodes["Principled BSDF"].inputs["Base Color"])
    bpy.ops.mesh.primitive_plane_add(size=6, location=(0, 0, -1))
    bpy.ops.mesh.primitive_cube_add(size=1.6, location=(0, 0, 0), rotation=(0.3, 0.2, 0.5))
    bpy.context.active_object.data.materials.append(material)
    bpy.ops.object.light_add(type="SUN", location=(2, 2, 4))
    bpy.context.active_object.data.energy = 3
    world = bpy.data.worlds.get("capture") or bpy.data.worlds.new("capture")
    world.color = (0.2, 0.25, 0.3)
    scene.world = world
    for k in range(cameras):
        angle = 2 * math.pi * k / cameras
        location = Vector((radius * math.cos(angle), radius * math.sin(angle), 1.2))
        bpy.ops.object.camera_add(location=location)
        camera = bpy.context.active_object
        camera.name = camera.data.name = f"cam_{k + 1:03d}"
        camera.rotation_euler = (-location).to_track_quat("-Z", "Y").to_euler()
    scene.camera = bpy.data.objects["cam_001"]
    return scene


def capture_cameras() -> list:
    return sorted((o for o in bpy.context.scene.objects if o.type == "CAMERA"), key=lambda o: o.name)


def render_photos(scene, folder: Path, shift: dict | None = None, sizes: dict | None = None,
                  depth16: tuple = (), samples: int = 32, names: list | None = None) -> dict:
    """The photos: each camera (or those in `names`) rendered with the sharp texture and `samples`, saved as
    folder/NAME.png (16-bit for the names in `depth16`) at the scene's size or `sizes[name]`. `shift[name]` = (dx, dy)
    moves that photo's content by dx px right and dy px down (a camera lens shift: an exact 2D translation), so
    photo[y + dy, x + dx] shows what the render shows at [y, x]. The scene is left as it was."""
    folder.mkdir(parents=True, exist_ok=True)
    tex = bpy.data.materials["capture"].node_tree.nodes["capture_texture"]
    render, settings = scene.render, scene.render.image_settings
    kept = (scene.camera, render.resolution_x, render.resolution_y, scene.cycles.samples, settings.color_mode,
            settings.color_depth, settings.file_format)
    out = {}
    try:
        tex.image = bpy.data.images[SHARP]
        scene.cycles.samples = samples
        for camera in capture_cameras():
            if names is not None and camera.name not in names:
                continue
            w, h = (sizes or {}).get(camera.name, kept[1:3])
            dx, dy = (shift or {}).get(camera.name, (0, 0))
            lens_shift = camera.data.shift_x, camera.data.shift_y
            camera.data.shift_x, camera.data.shift_y = -dx / max(w, h), dy / max(w, h)
            scene.camera = camera
            render.resolution_x, render.resolution_y = w, h
            try:
                bpy.ops.render.render(write_still=False)
            finally:
                camera.data.shift_x, camera.data.shift_y = lens_shift
            settings.file_format, settings.color_mode = "PNG", "RGB"
            settings.color_depth = "16" if camera.name in depth16 else "8"
            out[camera.name] = folder / f"{camera.name}.png"
            bpy.data.images["Render Result"].save_render(str(out[camera.name]), scene=scene)
    finally:
        tex.image = bpy.data.images[SOFT]
        (scene.camera, render.resolution_x, render.resolution_y, scene.cycles.samples, settings.file_format,
         settings.color_mode, settings.color_depth) = (kept[0], kept[1], kept[2], kept[3], kept[6], kept[4], kept[5])
    return out


def as_exif_rotated_jpeg(png: Path, python: str) -> Path:
    """png -> NAME.jpg stored turned a quarter (as a camera held upright writes it) with the EXIF orientation (6)
    that turns it back; the PNG is removed. Pillow runs in the engine's Python (Blender's has none)."""
    jpg = png.with_suffix(".jpg")
    code = ("import sys; from PIL import Image; im = Image.open(sys.argv[1]).convert('RGB'); "
            "exif = Image.Exif(); exif[0x0112] = 6; "
            "im.transpose(Image.Transpose.ROTATE_90).save(sys.argv[2], quality=97, exif=exif)")
    r = subprocess.run([python, "-c", code, str(png), str(jpg)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    png.unlink()
    return jpg
