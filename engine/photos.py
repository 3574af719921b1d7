"""`python -m engine import-photos`: capture photos -> upright sRGB PNGs, the "clean" half of render/photo pairs.

The Blender add-on's Make Training Pairs runs this with the engine's Python (an engine from Install Engine has it), because Blender's own cannot do it right:
it has no Pillow, its image loader ignores EXIF orientation, and it linearises 16-bit files. Each photo is decoded
with the engine's reader (engine/images.py: EXIF orientation applied, 8 or 16 bit kept, truncated files refused),
then brought to what a render saved as PNG is: sRGB (through its ICC profile when it has one that is not sRGB), RGB
(grey expanded, CMYK converted, alpha composited over black as Blender writes a transparent render without alpha).
Each PNG is written under a temporary name and renamed, and each photo's outcome is printed (one JSON line with
--json) as soon as it is decided, so the add-on can show progress. No torch: this module imports Pillow, OpenCV and
numpy only.
"""
from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np

from blender_addon.engine_link.scan import is_temporary
from engine.atomic import write_bytes_atomic
from engine.images import ImageError, is_image_path, read_image

# 16-bit colour goes through a table of the 8-bit transform at these levels per axis (60), denser in the darks:
# squares of an even spacing keep a linear-light profile's steep start (x ** (1/2.4)) within the table's own 8-bit
# rounding (0.5/255), where every 5th level was 6/255 off
LUT_LEVELS = np.unique(np.rint(np.linspace(0, 1, 64) ** 2 * 255)).astype(np.uint8)


class UsageError(ValueError):
    """Bad arguments: exit 2, nothing written."""


def collect(photos: list[str], list_file: str | None = None) -> list[Path]:
    """The photos named (files, or folders whose top-level images are taken), one per stem: two photos whose names
    differ only in extension or case would become the same PNG."""
    named = [Path(p) for p in photos]
    if list_file:
        try:
            text = Path(list_file).read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot read the photo list {list_file}: {e.strerror or e}") from None
        named += [Path(line) for line in text.splitlines() if line.strip()]
    found: list[Path] = []
    for p in named:
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.is_file() and is_image_path(f) and not is_temporary(f.name))
        elif p.is_file():
            found.append(p)
        else:
            raise UsageError(f"{p}: no such file or folder")
    if not found:
        raise UsageError("no photos given (name image files or folders holding them)")
    first: dict[str, Path] = {}
    for p in found:
        if p.stem.casefold() in first:
            raise UsageError(f"{first[p.stem.casefold()]} and {p} would both become {p.stem}.png: rename or "
                             f"leave out one of them")
        first[p.stem.casefold()] = p
    return found


def _profile(icc: bytes, path: Path):
    from PIL import ImageCms

    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (ImageCms.PyCMSError, OSError, TypeError) as e:
        raise ImageError(path, f"its ICC colour profile cannot be read ({e}): save it with an sRGB profile "
                               f"or none") from None


def _describe(profile) -> str:
    return (profile.profile.profile_description or "unnamed profile").strip()


def _transform(profile, mode: str, path: Path):
    from PIL import ImageCms

    try:
        return ImageCms.buildTransform(profile, ImageCms.createProfile("sRGB"), mode, "RGB")
    except ImageCms.PyCMSError as e:
        raise ImageError(path, f"cannot convert from its ICC profile ({_describe(profile)}, "
                               f"{profile.profile.xcolor_space.strip()}) to sRGB: {e}") from None


def _apply(transform, pixels: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(transform.apply(Image.fromarray(pixels)))


def _lut_3d(table: np.ndarray, levels: np.ndarray, rgb: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Trilinear interpolation of `table` (n, n, n, 3), sampled at `levels` (n, rising, in [0, 1]) on each axis, at
    `rgb` (H, W, 3 in [0, 1]); in chunks of pixels, so a large photo needs a few hundred MB at most."""
    n = len(levels)
    flat = rgb.reshape(-1, 3)
    out = np.empty_like(flat)
    for start in range(0, len(flat), chunk):
        x = np.clip(flat[start:start + chunk], 0, 1)
        i0 = np.clip(np.searchsorted(levels, x, side="right") - 1, 0, n - 2)
        f = ((x - levels[i0]) / (levels[i0 + 1] - levels[i0])).astype(np.float32)
        acc = np.zeros_like(x)
        for corner in range(8):
            bits = [(corner >> k) & 1 for k in range(3)]
            weight = np.ones(len(x), np.float32)
            for k, b in enumerate(bits):
                weight *= f[:, k] if b else 1 - f[:, k]
            acc += weight[:, None] * table[i0[:, 0] + bits[0], i0[:, 1] + bits[1], i0[:, 2] + bits[2]]
        out[start:start + chunk] = acc
    return out.reshape(rgb.shape)


def to_srgb(rgb: np.ndarray, icc: bytes | None, grey: bool, bit_depth: int, path: Path) -> tuple[np.ndarray, str]:
    """`rgb` (float in [0, 1]) converted from the colour space its ICC profile names to sRGB, and a note saying what
    was done. 8-bit pixels go through LittleCMS as they are. Pillow's LittleCMS takes 8-bit pixels only, so 16-bit
    ones go through a table of the same transform sampled at 8-bit levels and interpolated: smooth (no banding), within
    about 0.5/255 of the exact conversion (the table's own rounding), and still 16-bit."""
    if not icc:
        return rgb, ""
    profile = _profile(icc, path)
    name = _describe(profile)
    if "srgb" in name.casefold():
        return rgb, ""
    transform = _transform(profile, "L" if grey else "RGB", path)
    if bit_depth == 8:
        pixels = np.rint((rgb[..., 0] if grey else rgb) * 255).astype(np.uint8)
        return _apply(transform, pixels).astype(np.float32) / 255, f"converted from {name} to sRGB"
    levels, at = LUT_LEVELS, LUT_LEVELS.astype(np.float32) / 255
    note = f"converted from {name} to sRGB (interpolated table, 16-bit kept)"
    if grey:
        curve = _apply(transform, levels[None, :]).reshape(-1, 3).astype(np.float32) / 255
        return np.stack([np.interp(rgb[..., 0], at, curve[:, c]) for c in range(3)], -1).astype(np.float32), note
    n = len(levels)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1)  # (n, n, n, 3)
    table = _apply(transform, grid.reshape(n * n, n, 3)).reshape(n, n, n, 3).astype(np.float32) / 255
    return _lut_3d(table, at, rgb), note


def _read_cmyk(path: Path) -> tuple[np.ndarray, str]:
    """A CMYK photo (JPEG or TIFF, which OpenCV would misread as BGRA): upright, through its profile when it has one."""
    from PIL import Image, ImageCms, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
            icc = im.info.get("icc_profile")
            if icc:
                profile = _profile(icc, path)
                rgb = _transform(profile, "CMYK", path).apply(im)
                note = f"CMYK converted to sRGB through {_describe(profile)}"
            else:
                rgb, note = im.convert("RGB"), "CMYK without a profile converted naively to RGB"
    except ImageCms.PyCMSError as e:
        raise ImageError(path, f"cannot convert its CMYK colours to sRGB: {e}") from None
    except OSError as e:  # Pillow's "image file is truncated", a broken stream
        raise ImageError(path, f"CMYK data is corrupt or truncated ({e})") from None
    return np.asarray(rgb).astype(np.float32) / 255, note


def _mode(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode
    except Exception:  # noqa: BLE001 - read_image names the problem
        return None


def decode_photo(path: Path) -> tuple[np.ndarray, int, list[str]]:
    """(uint8 or uint16 (H, W, 3) sRGB pixels, upright; bit depth; notes on what was converted)."""
    if _mode(path) == "CMYK":
        rgb, note = _read_cmyk(path)
        depth, notes = 8, [note]
    else:
        frame = read_image(path)
        rgb, depth, notes = frame.rgb, frame.bit_depth, []
        if frame.alpha is not None:
            scale = 255.0 if frame.alpha.dtype == np.uint8 else 65535.0
            rgb = rgb * (frame.alpha.astype(np.float32) / scale)[..., None]
            notes.append("alpha composited over black")
        rgb, note = to_srgb(rgb, frame.icc_profile, frame.grayscale, depth, path)
        notes += [note] if note else []
        if frame.grayscale:
            notes.append("grey expanded to RGB")
    dtype, scale = (np.uint16, 65535.0) if depth == 16 else (np.uint8, 255.0)
    return np.clip(np.rint(rgb * scale), 0, scale).astype(dtype), depth, notes


def encode_png(pixels: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(pixels[..., ::-1]))
    if not ok:
        raise ValueError(f"OpenCV could not encode a PNG of shape {pixels.shape}")
    return buf.tobytes()


def import_photo(path: Path, out_dir: Path) -> dict:
    """Decode one photo into `out_dir/<stem>.png`; its record says where, its upright size and depth, or the error."""
    record = {"name": path.stem, "source": str(path)}
    try:
        pixels, depth, notes = decode_photo(path)
        target = out_dir / f"{path.stem}.png"
        write_bytes_atomic(target, encode_png(pixels))
    except ImageError as e:
        return {**record, "status": "failed", "error": str(e)}
    except OSError as e:
        return {**record, "status": "failed", "error": f"{path}: cannot write its PNG in {out_dir}: {e}"}
    return {**record, "status": "ok", "file": str(target), "width": int(pixels.shape[1]),
            "height": int(pixels.shape[0]), "bit_depth": depth, "notes": notes}


def check_targets(photos: list[Path], out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file, not a folder")
    for p in photos:
        target = out_dir / f"{p.stem}.png"
        if target.exists() and os.path.samefile(target, p):
            raise UsageError(f"{target} is the photo itself: write the PNGs to another folder")
        if target.exists() and not overwrite:
            raise UsageError(f"{target} already exists: pass --overwrite to replace it, or write to a new folder")


def describe(record: dict) -> str:
    if record["status"] != "ok":
        return f"failed: {record['error']}"
    notes = f" ({'; '.join(record['notes'])})" if record["notes"] else ""
    return (f"{record['source']} -> {record['file']}: {record['width']}x{record['height']}, "
            f"{record['bit_depth']}-bit{notes}")


def run(photos: list[str], out: str, list_file: str | None = None, as_json: bool = False,
        overwrite: bool = False) -> int:
    """The command: 0 every photo written, 1 some failed (each named), UsageError (exit 2) before any is written."""
    found = collect(photos, list_file)
    out_dir = Path(out)
    check_targets(found, out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in found:
        record = import_photo(path, out_dir)
        failed += record["status"] != "ok"
        print(json.dumps(record) if as_json else describe(record), flush=True)
    if not as_json:
        print(f"{len(found) - failed} of {len(found)} photos written to {out_dir}", file=sys.stderr)
    return 1 if failed else 0
