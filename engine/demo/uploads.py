"""What the web page accepts: images (PNG, JPEG, TIFF, WebP) and, for sequences, zips of frames.

Every refusal is an `UploadError` whose text names the uploaded file (by the name the visitor gave it, not the
server's temporary path) and the problem; the page shows that text. The engine's own reader does the decoding, so
the page refuses exactly what `restore` refuses (EXR, corrupt or truncated files, non-images), plus a pixel limit of
its own: a shared page should not let one upload hold the GPU for minutes.
"""
from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from blender_addon.engine_link.scan import IMAGE_SUFFIXES, is_temporary, natural_key

from ..images import Frame, ImageError, header_size, read_image

MAX_UPLOAD_MB = 64  # per file, enforced by the web server before our code sees the upload
MAX_PIXELS = 4096 * 4096  # per image on the page (the CLI takes up to images.MAX_PIXELS)
MAX_IMAGES = 64  # per restore: one job should not hold the queue for long
MAX_FRAMES = 240  # per sequence: ten seconds at 24 fps
MAX_RUN_PIXELS = 100_000_000  # a run's images together (decoded, about 2 GB held): 48 frames at 1080p
MAX_ZIP_BYTES = 1024 ** 3  # uncompressed, per zip: a zip bomb is refused from its directory, before extracting


class UploadError(ValueError):
    """A refused upload; str() is the message the page shows."""


def display_name(path: str | os.PathLike) -> str:
    return Path(path).name


def load_image(path: str | os.PathLike, name: str | None = None, max_pixels: int = MAX_PIXELS) -> Frame:
    """The uploaded image at `path`, or UploadError naming `name` (default: the file's own name)."""
    name = name or display_name(path)
    size = header_size(path)
    if size and size[0] * size[1] > max_pixels:
        raise UploadError(f"{name}: {size[0]}x{size[1]} is too large for this page (at most "
                          f"{max_pixels / 1e6:.1f} megapixels); restore it with `python -m engine restore` instead")
    try:
        return read_image(path)
    except ImageError as e:
        raise UploadError(f"{name}: {e.problem}") from None


def check_run_size(paths: list, instead: str) -> None:
    """Refuse, from the headers, a run whose images would together hold more than MAX_RUN_PIXELS decoded."""
    pixels = sum(w * h for w, h in filter(None, map(header_size, paths)))
    if pixels > MAX_RUN_PIXELS:
        raise UploadError(f"{len(paths)} images of {pixels / 1e6:.0f} megapixels in all; this page takes at most "
                          f"{MAX_RUN_PIXELS / 1e6:.0f} at a time (fewer or smaller images), or use {instead}")


def _zip_members(archive: Path, name: str) -> list[zipfile.ZipInfo]:
    try:
        with zipfile.ZipFile(archive) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise UploadError(f"{name}: not a readable zip ({e})") from None
    members = [i for i in infos if not i.is_dir() and PurePosixPath(i.filename).suffix.lower() in IMAGE_SUFFIXES
               and not any(is_temporary(part) or part == "__MACOSX" for part in PurePosixPath(i.filename).parts)]
    if not members:
        raise UploadError(f"{name}: the zip holds no images (PNG, JPEG, TIFF, WebP)")
    if len(members) > MAX_FRAMES:
        raise UploadError(f"{name}: {len(members)} frames; this page takes at most {MAX_FRAMES} per sequence")
    if sum(i.file_size for i in members) > MAX_ZIP_BYTES:
        raise UploadError(f"{name}: its images unpack to more than {MAX_ZIP_BYTES // 1024 ** 2} MB")
    return members


def sequence_frames(paths: list[str | os.PathLike]) -> list[tuple[str, Frame]]:
    """(name, frame) in natural name order from uploaded frames and/or zips of frames. All frames must share one
    size (the flicker measure compares each frame with the one before)."""
    if not paths:
        raise UploadError("no frames uploaded: drop several image files or one zip of frames")
    named: list[tuple[str, Path]] = []
    with tempfile.TemporaryDirectory(prefix="splat-restore-demo-") as scratch:
        for path in map(Path, paths):
            if path.suffix.lower() != ".zip":
                named.append((display_name(path), path))
                continue
            members = _zip_members(path, display_name(path))
            with zipfile.ZipFile(path) as z:
                for info in members:
                    # extracted under our own names: a member called ../../x never leaves the scratch folder
                    target = Path(scratch) / f"{len(named):05d}{PurePosixPath(info.filename).suffix.lower()}"
                    try:
                        target.write_bytes(z.read(info))
                    except (zipfile.BadZipFile, OSError, ValueError) as e:
                        raise UploadError(f"{display_name(path)}: {info.filename} cannot be extracted ({e})") \
                            from None
                    named.append((f"{display_name(path)}/{info.filename}", target))
        if len(named) < 2:
            raise UploadError("a sequence needs at least 2 frames")
        if len(named) > MAX_FRAMES:
            raise UploadError(f"{len(named)} frames; this page takes at most {MAX_FRAMES} per sequence")
        named.sort(key=lambda item: natural_key(item[0]))
        check_run_size([p for _, p in named], "`python -m engine restore --temporal`")
        frames = [(name, load_image(path, name)) for name, path in named]
    first_name, first = frames[0]
    for name, frame in frames[1:]:
        if frame.size != first.size:
            raise UploadError(f"{name}: {frame.size[0]}x{frame.size[1]}, but {first_name} is "
                              f"{first.size[0]}x{first.size[1]}: a sequence's frames must share one size")
    return frames


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:  # PNGs are compressed already
        for name, data in files.items():
            z.writestr(name, data)
    return buffer.getvalue()
