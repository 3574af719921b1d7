"""Reading and writing frames: formats, bit depth, alpha; errors that name the file and the problem.

The model works on display-referred sRGB in [0, 1]. Float images (EXR, 32-bit TIFF) hold scene-linear light whose
display transform (Blender's AgX/Filmic view, exposure) is not in the file and cannot be inverted after restoring,
so they are refused with advice instead of being silently tone-mapped.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import write_bytes_atomic

SUPPORTED_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF",
                      ".webp": "WEBP"}
FLOAT_SUFFIXES = {".exr", ".hdr"}
# Restoring a frame whole holds several float32 copies of it at once: the decoded colour, its padded copy, the tiles'
# outputs (x1.3 for the overlaps), the blend's sum and weights, the result and the encoder's temporaries. Measured
# peak resident memory above the loaded model (`restore --faces off`, 1600x1200 and 3200x2400): 101 bytes per pixel.
# The limit keeps that under MEMORY_BUDGET, so a frame near it is restored within a 16 GB machine's memory (model
# included) instead of being killed by it; Pillow's 16K x 16K guard, switched off before, let 25 GB through.
BYTES_PER_PIXEL = 104
MEMORY_BUDGET = 8 * 1024 ** 3
MAX_PIXELS = MEMORY_BUDGET // BYTES_PER_PIXEL  # 82.6 megapixels: 16K x 5K, two and a half 8K UHD frames
JPEG_QUALITY = 95


class ImageError(RuntimeError):
    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


@dataclass
class Frame:
    """Colour as float32 (H, W, 3) in [0, 1]; alpha and everything needed to write it back as it came."""
    rgb: np.ndarray
    alpha: np.ndarray | None  # in the file's own dtype, written back untouched
    bit_depth: int  # 8 or 16
    format: str
    grayscale: bool = False

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in SUPPORTED_SUFFIXES or path.suffix.lower() in FLOAT_SUFFIXES


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from the file's header, pixels not decoded; None if unreadable (reading it fails later)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # read_image refuses it, by name
            with Image.open(path) as im:
                return im.size
    except Exception:  # noqa: BLE001 - any reason: read_image names it when the frame's turn comes
        return None


def _too_large(path: Path, pixels: int, size: str) -> ImageError:
    return ImageError(path, f"{size}{pixels / 1e6:.0f} megapixels is too large: restoring it would take about "
                            f"{pixels * BYTES_PER_PIXEL / 1024 ** 3:.0f} GB of memory; the limit is "
                            f"{MAX_PIXELS / 1e6:.0f} megapixels (about {MEMORY_BUDGET / 1024 ** 3:.0f} GB). Render it "
                            f"smaller or in parts")


def _check_header(path: Path) -> str:
    """The format, from the header alone: refuses what the engine cannot or should not decode before decoding it."""
    from PIL import Image, UnidentifiedImageError

    # Pillow's decompression-bomb guard at our own limit: it warns above it (our check below refuses with the
    # memory figures) and refuses outright at twice it, before reading any pixel data
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt, (w, h) = im.format, im.size
                mode = im.mode
    except Image.DecompressionBombError as e:  # Pillow names the pixel count, not the dimensions
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_large(path, int(pixels.group(1)) if pixels else 2 * MAX_PIXELS, "") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image (or a format this engine does not read: PNG, JPEG, TIFF, WebP)") \
            from None
    except OSError as e:
        raise ImageError(path, f"cannot read the image header: {e}") from None
    if w * h > MAX_PIXELS:
        raise _too_large(path, w * h, f"{w}x{h}, ")
    if mode in ("F", "I") or mode.startswith("I;32"):
        raise ImageError(path, f"{fmt} with {mode} (float/32-bit) pixels is not supported: the restorer works "
                               f"on display-referred sRGB; save 8- or 16-bit PNG with the view transform applied")
    return fmt


def read_image(path: str | os.PathLike) -> Frame:
    import cv2

    path = Path(path)
    if path.suffix.lower() in FLOAT_SUFFIXES:
        raise ImageError(path, "EXR/HDR (scene-linear float) is not supported: the restorer works on "
                               "display-referred sRGB; render to 8- or 16-bit PNG (Blender applies the view "
                               "transform to those)")
    try:
        if not path.stat().st_size:
            raise ImageError(path, "file is empty (0 bytes)")
    except FileNotFoundError:
        raise ImageError(path, "file does not exist") from None
    except OSError as e:
        raise ImageError(path, f"cannot read: {e.strerror or e}") from None
    fmt = _check_header(path)  # before the file is read into memory and decoded
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(path, f"cannot read: {e.strerror or e}") from None
    # imdecode (not imread) so non-ASCII paths work on Windows too
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ImageError(path, f"{fmt} data is corrupt or truncated")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ImageError(path, f"{pixels.dtype} pixels are not supported: save 8- or 16-bit")
    if fmt == "PNG" and not _png_complete(data):
        raise ImageError(path, "PNG is truncated (no IEND chunk)")
    scale = 255.0 if pixels.dtype == np.uint8 else 65535.0
    gray = pixels.ndim == 2 or pixels.shape[2] in (1, 2)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    alpha = pixels[..., -1].copy() if pixels.shape[2] in (2, 4) else None
    colour = pixels[..., :1] if gray else pixels[..., 2::-1]  # OpenCV decodes BGR(A)
    rgb = np.repeat(colour, 3, axis=2) if gray else colour
    return Frame(np.ascontiguousarray(rgb, dtype=np.float32) / scale, alpha, 8 if scale == 255.0 else 16, fmt, gray)


def _png_complete(data: bytes) -> bool:
    return data.rstrip(b"\0")[-12:-8] == b"\0\0\0\0" and data.rstrip(b"\0")[-8:-4] == b"IEND"


def png_with_text(png: bytes, text: dict[str, str]) -> bytes:
    """`png` with one text chunk per item after IHDR (tEXt when Latin-1 will do, else UTF-8 iTXt)."""
    import struct
    import zlib

    chunks = []
    for key, value in text.items():
        try:
            kind, data = b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")
        except UnicodeEncodeError:
            kind, data = b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8")
        chunks.append(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, then IHDR's length, type, 13 bytes of data, CRC
    return png[:ihdr_end] + b"".join(chunks) + png[ihdr_end:]


def encode_image(frame: Frame, rgb: np.ndarray, suffix: str, text: dict[str, str] | None = None) -> bytes:
    """Restored rgb in [0, 1] with `frame`'s alpha, bit depth and channel layout, encoded for `suffix`."""
    import cv2

    fmt = SUPPORTED_SUFFIXES.get(suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot write {suffix!r}; use one of {', '.join(sorted(SUPPORTED_SUFFIXES))}")
    depth = frame.bit_depth if fmt in ("PNG", "TIFF") else 8
    dtype, scale = (np.uint16, 65535.0) if depth == 16 else (np.uint8, 255.0)
    if frame.grayscale:
        lum = rgb @ np.array([0.2126, 0.7152, 0.0722], np.float32)
        channels = [lum[..., None]]
    else:
        channels = [rgb[..., ::-1]]
    out = np.concatenate(channels, axis=2)
    out = np.clip(np.rint(out * scale), 0, scale).astype(dtype)
    if frame.alpha is not None:
        a = frame.alpha if frame.alpha.dtype == dtype else _convert_depth(frame.alpha, dtype)
        out = np.concatenate([out, a[..., None]], axis=2)
    if out.shape[2] == 1:
        out = out[..., 0]
    params = {"JPEG": [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY],
              "WEBP": [cv2.IMWRITE_WEBP_QUALITY, 101]}.get(fmt, [])  # 101 = lossless WebP
    ok, buf = cv2.imencode(suffix.lower(), out, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {fmt} of shape {out.shape}")
    return png_with_text(buf.tobytes(), text) if text and fmt == "PNG" else buf.tobytes()


def _convert_depth(a: np.ndarray, dtype) -> np.ndarray:
    if dtype == np.uint8:
        return (a.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    return (a.astype(np.uint32) * 257).astype(np.uint16)


def write_image(path: str | os.PathLike, frame: Frame, rgb: np.ndarray, text: dict[str, str] | None = None) -> None:
    """Atomic: the file at `path` is either the complete new image or whatever was there before. `text` goes into
    PNG text chunks (the model and its licence)."""
    path = Path(path)
    try:
        data = encode_image(frame, rgb, path.suffix, text)
    except ValueError as e:
        raise ImageError(path, str(e)) from None
    try:
        write_bytes_atomic(path, data)
    except OSError as e:
        raise ImageError(path, f"cannot write: {e.strerror or e}") from None
