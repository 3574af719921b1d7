"""Reading and writing frames: formats, bit depth, alpha, grey, colour profile; errors that name the file and the
problem.

The model works on display-referred sRGB in [0, 1]. Float images (EXR, 32-bit TIFF) hold scene-linear light whose
display transform (Blender's AgX/Filmic view, exposure) is not in the file and cannot be inverted after restoring,
so they are refused with advice instead of being silently tone-mapped. A photo's EXIF orientation is applied on
reading (faces are only found upright), so outputs are written upright and carry no orientation; its ICC profile
is written back with the restored pixels, which stay in the input's colour space.
"""
from __future__ import annotations

import io
import os
import re
import struct
import warnings
import zlib
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
    icc_profile: bytes | None = None  # the input's colour profile, written back as it came

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


@dataclass
class _Header:
    format: str
    mode: str  # Pillow's
    orientation: int  # EXIF orientation still to apply to the decoded pixels, 1 (as stored) to 8
    icc_profile: bytes | None


def _check_header(path: Path) -> _Header:
    """What the header says: refuses what the engine cannot or should not decode before decoding it."""
    from PIL import Image, UnidentifiedImageError

    # Pillow's decompression-bomb guard at our own limit: it warns above it (our check below refuses with the
    # memory figures) and refuses outright at twice it, before reading any pixel data
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt, (w, h) = im.format, im.size
                mode, exif, icc = im.mode, im.info.get("exif"), im.info.get("icc_profile")
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
    return _Header(fmt, mode, _orientation(exif), icc or None)


def _orientation(exif: bytes | None) -> int:
    """The orientation in a JPEG's, WebP's or PNG's EXIF block. A TIFF's is a tag of the image itself, kept out of
    Pillow's info["exif"], and OpenCV's TIFF decoder applies it (4.11, every layout; tests/test_images.py checks)."""
    from PIL import Image

    if not exif:
        return 1
    tags = Image.Exif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's "Corrupt EXIF data": what it could read is used
            tags.load(exif)
    except Exception:  # noqa: BLE001 - an EXIF block Pillow cannot parse at all: the pixels as stored
        return 1
    orientation = tags.get(0x0112, 1)
    return orientation if orientation in _UPRIGHT else 1


# EXIF orientation -> what makes the stored pixels upright (Pillow's ImageOps.exif_transpose, on (H, W, C) arrays)
_UPRIGHT = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
            5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, -1)[::-1],
            8: lambda a: np.rot90(a, 1)}


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
    header = _check_header(path)  # before the file is read into memory and decoded
    fmt = header.format
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(path, f"cannot read: {e.strerror or e}") from None
    # grey+alpha: a PNG's IHDR says so (colour type 4; Pillow calls a 16-bit one RGBA), a TIFF's Pillow mode
    grey_alpha = data[25:26] == b"\x04" if fmt == "PNG" else header.mode == "LA"
    if fmt == "TIFF" and grey_alpha:  # OpenCV drops a grey TIFF's alpha; Pillow reads it (8-bit only)
        pixels = _decode_with_pillow(data)
    else:  # imdecode (not imread) so non-ASCII paths work on Windows too
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ImageError(path, f"{fmt} data is corrupt or truncated")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ImageError(path, f"{pixels.dtype} pixels are not supported: save 8- or 16-bit")
    if fmt == "PNG" and not _png_complete(data):
        raise ImageError(path, "PNG is truncated (no IEND chunk)")
    scale = 255.0 if pixels.dtype == np.uint8 else 65535.0
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if grey_alpha and pixels.shape[2] == 4:  # OpenCV expands a grey+alpha PNG to BGRA
        pixels = pixels[..., [0, 3]]
    gray = pixels.shape[2] in (1, 2)
    pixels = _UPRIGHT[header.orientation](pixels)
    alpha = pixels[..., -1].copy() if pixels.shape[2] in (2, 4) else None
    return Frame(_to_float_rgb(pixels, gray, scale), alpha, 8 if scale == 255.0 else 16, fmt, gray,
                 header.icc_profile)


def _to_float_rgb(pixels: np.ndarray, gray: bool, scale: float) -> np.ndarray:
    """OpenCV's BGR(A) or grey(+alpha) pixels as float32 RGB in [0, 1]. cvtColor and one in-place divide: at
    1080p 4x faster than numpy's strided copy and a second array, with the same values."""
    import cv2

    colour = np.repeat(pixels[..., :1], 3, axis=2) if gray else \
        cv2.cvtColor(np.ascontiguousarray(pixels[..., :3]), cv2.COLOR_BGR2RGB)
    rgb = colour.astype(np.float32)
    return np.divide(rgb, np.float32(scale), out=rgb)


def _decode_with_pillow(data: bytes) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im)
    except OSError:  # reported as corrupt, as OpenCV's failures are
        return None


def _png_complete(data: bytes) -> bool:
    return data.rstrip(b"\0")[-12:-8] == b"\0\0\0\0" and data.rstrip(b"\0")[-8:-4] == b"IEND"


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IHDR_END = 8 + 4 + 4 + 13 + 4  # signature, then IHDR's length, type, 13 bytes of data, CRC


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_text(png: bytes, text: dict[str, str]) -> bytes:
    """`png` with one text chunk per item after IHDR (tEXt when Latin-1 will do, else UTF-8 iTXt)."""
    chunks = []
    for key, value in text.items():
        try:
            kind, data = b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")
        except UnicodeEncodeError:
            kind, data = b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8")
        chunks.append(_png_chunk(kind, data))
    return png[:_PNG_IHDR_END] + b"".join(chunks) + png[_PNG_IHDR_END:]


def encode_image(frame: Frame, rgb: np.ndarray, suffix: str, text: dict[str, str] | None = None) -> bytes:
    """Restored rgb in [0, 1] with `frame`'s alpha, bit depth, channel layout and colour profile, encoded for
    `suffix`. Never an orientation: the pixels were made upright on reading."""
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
    out = _quantize_bgr(rgb) if depth == 8 and not frame.grayscale else \
        np.clip(np.rint(np.concatenate(channels, axis=2) * scale), 0, scale).astype(dtype)
    if frame.alpha is not None:
        a = frame.alpha if frame.alpha.dtype == dtype else _convert_depth(frame.alpha, dtype)
        out = np.concatenate([out, a[..., None]], axis=2)
    data = _encode(out, fmt, suffix)
    if frame.icc_profile:
        data = _with_icc(data, fmt, frame.icc_profile, out.shape)
    return png_with_text(data, text) if text and fmt == "PNG" else data


def _quantize_bgr(rgb: np.ndarray) -> np.ndarray:
    """float RGB in [0, 1] -> 8-bit BGR, rounded half to even and saturated: numpy's rint-clip-astype in one
    OpenCV pass (saturate_cast rounds the same way), 6x faster at 1080p, where it was most of a PNG's encode."""
    import cv2

    bgr = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2BGR)
    return cv2.addWeighted(bgr, 255.0, bgr, 0.0, 0.0, dtype=cv2.CV_8U)


def _encode(out: np.ndarray, fmt: str, suffix: str) -> bytes:
    """OpenCV's encoding of BGR(A) or grey `out`. Grey+alpha, which OpenCV cannot write: PNG by hand, 8-bit TIFF
    through Pillow, and as colour+alpha where the format has no such layout (WebP, JPEG, 16-bit TIFF)."""
    import cv2

    if out.shape[2] == 2:
        if fmt == "PNG":
            return _png_grey_alpha(out)
        if fmt == "TIFF" and out.dtype == np.uint8:
            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(out).save(buffer, "TIFF", compression="tiff_lzw")
            return buffer.getvalue()
        out = out[..., [0, 0, 0, 1]]
    if out.shape[2] == 1:
        out = out[..., 0]
    params = {"JPEG": [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY],
              "WEBP": [cv2.IMWRITE_WEBP_QUALITY, 101]}.get(fmt, [])  # 101 = lossless WebP
    ok, buf = cv2.imencode(suffix.lower(), out, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {fmt} of shape {out.shape}")
    return buf.tobytes()


def _png_grey_alpha(la: np.ndarray) -> bytes:
    """An 8- or 16-bit grey+alpha PNG (colour type 4), rows filtered Up (each the difference from the one above),
    which suits smooth renders."""
    h, w, _ = la.shape
    rows = la.astype(la.dtype.newbyteorder(">")).reshape(h, -1).view(np.uint8)  # PNG samples are big-endian
    up = rows.copy()
    up[1:] -= rows[:-1]  # wraps modulo 256, as PNG's filter arithmetic does
    raw = np.concatenate([np.full((h, 1), 2, np.uint8), up], axis=1)  # filter type 2 (Up) before each row
    ihdr = struct.pack(">IIBBBBB", w, h, la.dtype.itemsize * 8, 4, 0, 0, 0)
    return (_PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw.tobytes()))
            + _png_chunk(b"IEND", b""))


def _with_icc(data: bytes, fmt: str, icc: bytes, shape: tuple) -> bytes:
    """`data` (as OpenCV or Pillow encoded it) with the ICC profile `icc` where each format's readers look for it."""
    if fmt == "PNG":
        return data[:_PNG_IHDR_END] + _png_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(icc)) \
            + data[_PNG_IHDR_END:]
    if fmt == "JPEG":
        return _jpeg_with_icc(data, icc)
    if fmt == "WEBP":
        return _webp_with_icc(data, icc, shape[1], shape[0], alpha=shape[2] in (2, 4))
    return _tiff_with_icc(data, icc)


def _jpeg_with_icc(jpeg: bytes, icc: bytes) -> bytes:
    """APP2 ICC_PROFILE segments (at most 64 KB each, numbered) after SOI and the JFIF APP0 segment."""
    size = 65535 - 2 - 14  # a segment's length field, then "ICC_PROFILE\0", its number and the count
    parts = [icc[i:i + size] for i in range(0, len(icc), size)]
    if len(parts) > 255:
        raise ValueError(f"the ICC profile ({len(icc)} bytes) is too large for a JPEG")
    segments = b"".join(b"\xff\xe2" + struct.pack(">H", 2 + 14 + len(part)) + b"ICC_PROFILE\0"
                        + bytes([k + 1, len(parts)]) + part for k, part in enumerate(parts))
    at = 2 + (2 + struct.unpack(">H", jpeg[4:6])[0] if jpeg[2:4] == b"\xff\xe0" else 0)
    return jpeg[:at] + segments + jpeg[at:]


def _riff_chunk(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2)


def _webp_with_icc(webp: bytes, icc: bytes, width: int, height: int, alpha: bool) -> bytes:
    """The simple (VP8L) WebP libwebp writes losslessly, made extended: a VP8X header, then the ICCP chunk."""
    if webp[12:16] == b"VP8X":
        raise ValueError("the WebP encoder wrote an extended WebP: its ICC profile cannot be added")
    flags = 0x20 | (0x10 if alpha else 0)  # ICC profile, alpha
    vp8x = bytes([flags, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + _riff_chunk(b"VP8X", vp8x) + _riff_chunk(b"ICCP", icc) + webp[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _tiff_with_icc(tiff: bytes, icc: bytes) -> bytes:
    """The image's directory copied to the end with an ICC profile tag (34675) added. Appending keeps every offset in
    the file valid; the old directory stays behind, unreferenced."""
    order = "<" if tiff[:2] == b"II" else ">"
    if struct.unpack(order + "H", tiff[2:4])[0] != 42:
        raise ValueError("the TIFF encoder wrote a BigTIFF: its ICC profile cannot be added")
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
    entries = [tiff[ifd + 2 + 12 * k:ifd + 14 + 12 * k] for k in range(count)]
    next_ifd = tiff[ifd + 2 + 12 * count:ifd + 6 + 12 * count]
    out = bytearray(tiff) + b"\0" * (len(tiff) % 2)  # TIFF offsets are even
    entries.append(struct.pack(order + "HHII", 34675, 7, len(icc), len(out)))  # 7: UNDEFINED bytes
    out += icc + b"\0" * (len(icc) % 2)
    entries.sort(key=lambda entry: struct.unpack(order + "H", entry[:2])[0])  # TIFF requires ascending tags
    out[4:8] = struct.pack(order + "I", len(out))
    out += struct.pack(order + "H", len(entries)) + b"".join(entries) + next_ifd
    return bytes(out)


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
