"""One training-pair render: the scene seen from one capture camera at a photo's size, saved as PNG, and the scene
left exactly as it was (camera, resolution, output settings, markers, frame) however the render ends."""
import contextlib
import sys
from pathlib import Path

import bpy

SIMPLE = {"BOOLEAN", "INT", "FLOAT", "STRING", "ENUM"}


def _simple_props(struct) -> list[str]:
    """The settable plain properties of `struct`, in RNA order: Blender 5's image settings need media_type set before
    file_format, and file_format before its depth and mode, which is the order RNA lists them in."""
    return [p.identifier for p in struct.bl_rna.properties
            if not p.is_readonly and p.type in SIMPLE and getattr(p, "is_array", False) is False]


def _snapshot(struct) -> list:
    return [(name, getattr(struct, name)) for name in _simple_props(struct)]


def _restore(struct, saved: list, problems: list) -> None:
    for name, value in saved:
        try:
            if getattr(struct, name) != value:
                setattr(struct, name, value)
        except (TypeError, AttributeError, ValueError) as e:
            problems.append(f"{name}: {e}")


@contextlib.contextmanager
def kept_scene(scene):
    """Whatever a pair render changes, put back on leaving, on success, error and cancel alike."""
    render = scene.render
    saved = {"camera": scene.camera, "frame": (scene.frame_current, scene.frame_subframe),
             "render": [(n, getattr(render, n)) for n in ("resolution_x", "resolution_y", "resolution_percentage",
                                                          "filepath", "use_border")],
             "image": _snapshot(render.image_settings),
             "markers": [(m, m.camera) for m in scene.timeline_markers],
             "auto_restore": getattr(getattr(scene, "splat_restore", None), "auto_restore", None)}
    try:
        yield
    finally:
        problems: list = []
        _restore(render.image_settings, saved["image"], problems)
        _restore(render, saved["render"], problems)
        for marker, camera in saved["markers"]:
            marker.camera = camera
        scene.camera = saved["camera"]
        if saved["auto_restore"] is not None:
            scene.splat_restore.auto_restore = saved["auto_restore"]
        if (scene.frame_current, scene.frame_subframe) != saved["frame"]:
            scene.frame_set(saved["frame"][0], subframe=saved["frame"][1])
        if problems:  # not expected; say so rather than leave a changed setting unmentioned
            print(f"Splat Restore: could not restore output settings: {'; '.join(problems)}", file=sys.stderr)


def render_to(scene, camera, size: tuple, bit_depth: int, path: Path) -> None:
    """Render `scene` from `camera` at `size` (100 %) with its own render settings, and save the Render Result
    (the view transform applied, as every PNG Blender writes) to `path` as an RGB PNG of `bit_depth` bits."""
    with kept_scene(scene):
        # timeline markers bound to cameras would switch the camera back when the render starts
        for marker in scene.timeline_markers:
            marker.camera = None
        scene.camera = camera
        render = scene.render
        render.resolution_x, render.resolution_y = size
        render.resolution_percentage = 100
        render.use_border = False  # a pair is the whole frame
        if getattr(scene, "splat_restore", None) is not None:
            scene.splat_restore.auto_restore = False  # a pair render is not a frame to restore
        if bpy.ops.render.render(write_still=False, scene=scene.name) != {"FINISHED"}:
            raise RuntimeError(f"the render from camera {camera.name} did not finish")
        settings = render.image_settings
        if hasattr(settings, "media_type"):  # Blender 5: a video or multilayer output offers no PNG until IMAGE
            settings.media_type = "IMAGE"
        settings.file_format, settings.color_mode, settings.color_depth = "PNG", "RGB", str(bit_depth)
        result = bpy.data.images.get("Render Result")
        if result is None:
            raise RuntimeError(f"the render from camera {camera.name} left no Render Result")
        result.save_render(str(path), scene=scene)
    if not path.is_file():
        raise RuntimeError(f"Blender did not write the render from camera {camera.name} to {path}")
