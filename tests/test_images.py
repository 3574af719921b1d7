"""Image files: formats, bit depth, grey and colour profile kept, alpha untouched, photos upright, bad files named
with their problem."""
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from engine.images import ImageError, read_image, write_image


def _gradient(h=20, w=30):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x / (w - 1), y / (h - 1), (x + y) / (h + w - 2)], axis=2).astype(np.float32)


@pytest.mark.parametrize("suffix, depth, tol", [(".png", 8, 0), (".png", 16, 0), (".tif", 16, 0), (".tif", 8, 0),
                                                (".webp", 8, 0), (".jpg", 8, 12)])
def test_round_trip_keeps_format_and_bit_depth(tmp_path, suffix, depth, tol):
    dtype, scale = (np.uint16, 65535) if depth == 16 else (np.uint8, 255)
    pixels = np.rint(_gradient() * scale).astype(dtype)
    src = tmp_path / f"in{suffix}"
    cv2.imwrite(str(src), pixels[..., ::-1])
    frame = read_image(src)
    assert frame.bit_depth == depth and frame.alpha is None
    out = tmp_path / f"out{suffix}"
    write_image(out, frame, frame.rgb)
    back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert back.dtype == dtype and back.shape == pixels.shape
    assert np.abs(back[..., ::-1].astype(int) - pixels.astype(int)).max() <= tol * (257 if depth == 16 else 1)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_alpha_is_written_back_untouched(tmp_path, dtype):
    scale = np.iinfo(dtype).max
    rgba = np.rint(np.concatenate([_gradient(), _gradient()[..., :1][:, ::-1]], axis=2) * scale).astype(dtype)
    src = tmp_path / "a.png"
    cv2.imwrite(str(src), rgba[..., [2, 1, 0, 3]])
    frame = read_image(src)
    assert np.array_equal(frame.alpha, rgba[..., 3])
    write_image(tmp_path / "b.png", frame, np.zeros_like(frame.rgb))
    back = cv2.imread(str(tmp_path / "b.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(back[..., 3], rgba[..., 3]) and back[..., :3].max() == 0


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_grayscale_stays_grayscale(tmp_path, dtype):
    gray = (np.arange(200, dtype=dtype).reshape(10, 20)) * (257 if dtype == np.uint16 else 1)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    frame = read_image(tmp_path / "g.png")
    assert frame.grayscale and frame.rgb.shape == (10, 20, 3) and frame.bit_depth == 8 * gray.itemsize
    write_image(tmp_path / "o.png", frame, frame.rgb)
    assert np.array_equal(cv2.imread(str(tmp_path / "o.png"), cv2.IMREAD_UNCHANGED), gray)


def _png_claiming(w, h):
    """A small PNG file whose header claims w x h pixels (a decompression bomb's first bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def test_bad_files_are_named_with_their_problem(tmp_path):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.zeros((64, 64, 3), np.uint8) + 100)
    cases = {
        "empty.png": (b"", "empty"),
        "text.png": (b"hello, not an image", "not an image"),
        "truncated.png": (good.read_bytes()[:60], "truncated|corrupt"),
        "huge.png": (_png_claiming(100_000, 100_000), "too large"),
    }
    for name, (data, problem) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError, match=problem) as e:
            read_image(tmp_path / name)
        assert name in str(e.value)
    with pytest.raises(ImageError, match="does not exist"):
        read_image(tmp_path / "missing.png")


def test_float_images_are_refused_with_advice(tmp_path):
    (tmp_path / "f.exr").write_bytes(b"v/1\x01")
    with pytest.raises(ImageError, match="display-referred"):
        read_image(tmp_path / "f.exr")
    tif = tmp_path / "f.tif"
    cv2.imwrite(str(tif), np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ImageError, match="f.tif"):
        read_image(tif)


def test_failed_write_leaves_the_old_file_and_no_partial(tmp_path, monkeypatch):
    src = tmp_path / "x.png"
    cv2.imwrite(str(src), np.zeros((8, 8, 3), np.uint8))
    frame = read_image(src)
    target = tmp_path / "out.png"
    target.write_bytes(b"previous")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("os.fsync", broken_fsync)
    with pytest.raises(ImageError, match="No space left"):
        write_image(target, frame, frame.rgb)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "x.png"]


@pytest.mark.parametrize("w, h, says", [(10_000, 10_000, "10000x10000, 100 megapixels is too large: restoring it "
                                                          "would take about 10 GB"),
                                        (20_000, 20_000, "400 megapixels is too large: restoring it would take about "
                                                         "39 GB")])
def test_a_frame_too_large_for_memory_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch, w, h, says):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_claiming(w, h))
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded a frame that was to be refused"))
    with pytest.raises(ImageError, match="the limit is 83 megapixels") as e:
        read_image(path)
    assert str(e.value).startswith(f"{path}: {says}")


def test_a_frame_just_under_the_limit_passes_the_header_check(tmp_path):
    from engine.images import BYTES_PER_PIXEL, MAX_PIXELS, MEMORY_BUDGET, _check_header

    path = tmp_path / "big.png"
    path.write_bytes(_png_claiming(16_384, MAX_PIXELS // 16_384))
    assert _check_header(path).format == "PNG"
    assert MAX_PIXELS * BYTES_PER_PIXEL <= MEMORY_BUDGET <= 8 * 1024 ** 3


def test_a_killed_writers_temporaries_are_removed_once_the_file_is_whole(tmp_path):
    from engine.atomic import write_bytes_atomic

    stale = tmp_path / ".k_0001.bb14c424.partial.png"  # what an engine killed mid-write leaves
    others = [tmp_path / ".k_0002.0123abcd.partial.png", tmp_path / "k_0001.png.partial", tmp_path / "k_0002.png"]
    for p in [stale, *others]:
        p.write_bytes(b"x")
    write_bytes_atomic(tmp_path / "k_0001.png", b"complete")
    assert (tmp_path / "k_0001.png").read_bytes() == b"complete" and not stale.exists()
    assert all(p.exists() for p in others)  # other frames' files, and names not ours, are left alone


@pytest.mark.parametrize("hard_links", [True, False])
def test_new_files_never_replace_one_that_exists(tmp_path, monkeypatch, hard_links):
    import os

    from engine.atomic import write_bytes_new

    if not hard_links:  # e.g. a FAT or some network share: check-then-rename instead
        def no_link(src, dst):
            raise OSError(95, "Operation not supported")
        monkeypatch.setattr(os, "link", no_link)
    (tmp_path / "a.png").write_bytes(b"theirs")
    (tmp_path / "a-2.png").write_bytes(b"theirs too")
    assert write_bytes_new(tmp_path / "a.png", b"mine") == tmp_path / "a-3.png"
    assert write_bytes_new(tmp_path / "b.png", b"new") == tmp_path / "b.png"
    assert (tmp_path / "a.png").read_bytes() == b"theirs" and (tmp_path / "a-2.png").read_bytes() == b"theirs too"
    assert (tmp_path / "a-3.png").read_bytes() == b"mine" and (tmp_path / "b.png").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-2.png", "a-3.png", "a.png", "b.png"]  # no temporaries


def _blocks(h=32, w=48, channels=3):
    """Blocks of distinct colours, on JPEG's 16-pixel grid: any turn or mirror of it is far from it."""
    rng = np.random.default_rng(7)
    cells = rng.integers(0, 256, (h // 16, w // 16, channels), dtype=np.uint8)
    return np.repeat(np.repeat(cells, 16, axis=0), 16, axis=1)


def _photo(path, pixels, orientation=1, icc=None):
    """`pixels` saved by Pillow as a camera or editor would: an EXIF orientation, a colour profile."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {".jpg": {"quality": 98}, ".webp": {"lossless": True}}.get(path.suffix, {})
    Image.fromarray(pixels).save(path, exif=exif, icc_profile=icc, **options)
    return path


def _as_displayed(path):
    """What a viewer shows: Pillow's decoding with the file's orientation applied."""
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im))


@pytest.mark.parametrize("suffix, orientation", [(".jpg", o) for o in range(2, 9)]
                         + [(".webp", o) for o in (3, 6, 8)] + [(".tif", o) for o in (3, 6, 8)])
def test_exif_orientation_is_applied_on_reading(tmp_path, suffix, orientation):
    channels = 4 if suffix == ".webp" else 3  # alpha turns with the colour
    src = _photo(tmp_path / f"phone{suffix}", _blocks(channels=channels), orientation)
    frame = read_image(src)
    upright = _as_displayed(src)
    assert frame.size == (upright.shape[1], upright.shape[0])
    assert np.abs(frame.rgb * 255 - upright[..., :3]).max() <= (8 if suffix == ".jpg" else 0.5)
    if channels == 4:
        assert np.array_equal(frame.alpha, upright[..., 3])


def test_a_photo_whose_exif_cannot_be_parsed_is_read_as_stored(tmp_path):
    good = _photo(tmp_path / "good.jpg", _blocks()).read_bytes()
    junk = b"Exif\0\0not a TIFF header"
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + len(junk)) + junk
    (tmp_path / "bad.jpg").write_bytes(good[:2] + app1 + good[2:])
    assert read_image(tmp_path / "bad.jpg").size == (48, 32)


@pytest.mark.parametrize("suffix", [".jpg", ".webp", ".png"])
def test_upright_output_carries_no_orientation(tmp_path, suffix):
    src = _photo(tmp_path / "phone.jpg", _blocks(), orientation=6)
    frame = read_image(src)
    out = tmp_path / f"restored{suffix}"
    write_image(out, frame, frame.rgb)
    with Image.open(out) as im:
        assert im.getexif().get(0x0112, 1) == 1
    shown, upright = _as_displayed(out).astype(int), _as_displayed(src)
    assert shown.shape == upright.shape and np.abs(shown - upright).mean() <= 4  # JPEG twice; turned: about 80


SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _profile_and_pixels(path):
    with Image.open(path) as im:
        return im.info.get("icc_profile"), np.asarray(im)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tif"])
def test_icc_profile_is_carried_to_the_output(tmp_path, suffix):
    src = _photo(tmp_path / f"in{suffix}", _blocks(), icc=SRGB_PROFILE)
    frame = read_image(src)
    out = tmp_path / f"out{suffix}"
    write_image(out, frame, frame.rgb)
    profile, pixels = _profile_and_pixels(out)
    assert profile == SRGB_PROFILE
    assert np.abs(pixels - frame.rgb * 255).mean() <= 4  # the rest of the file still reads (JPEG: 2.6)


@pytest.mark.parametrize("suffix", [".png", ".webp", ".tif"])
def test_icc_profile_is_carried_beside_alpha(tmp_path, suffix):
    rgba = _blocks(channels=4)
    src = _photo(tmp_path / "in.png", rgba, icc=SRGB_PROFILE)
    frame = read_image(src)
    out = tmp_path / f"out{suffix}"
    write_image(out, frame, frame.rgb)
    profile, pixels = _profile_and_pixels(out)
    assert profile == SRGB_PROFILE and np.array_equal(pixels, rgba)
    assert np.array_equal(read_image(out).alpha, rgba[..., 3])  # OpenCV too (WebP: from the VP8X flags)


def _grey_alpha_png_16(la):
    """A 16-bit grey+alpha PNG, unfiltered (Pillow cannot write one)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    h, w, _ = la.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in la)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("suffix, depth", [(".png", 8), (".png", 16), (".tif", 8)])
def test_grey_with_alpha_stays_grey_with_alpha(tmp_path, suffix, depth):
    rng = np.random.default_rng(3)
    la = rng.integers(0, 2 ** depth, (10, 20, 2)).astype(np.uint16 if depth == 16 else np.uint8)
    src = tmp_path / f"la{suffix}"
    if depth == 16:
        src.write_bytes(_grey_alpha_png_16(la))
    else:
        Image.fromarray(la).save(src)
    frame = read_image(src)
    assert frame.grayscale and frame.bit_depth == depth and np.array_equal(frame.alpha, la[..., 1])
    out = tmp_path / f"out{suffix}"
    write_image(out, frame, frame.rgb)
    if suffix == ".png":
        assert out.read_bytes()[24:26] == bytes([depth, 4])  # IHDR: bit depth, colour type 4 (grey+alpha)
        back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)  # OpenCV expands grey+alpha to BGRA
        assert np.array_equal(back[..., 0], la[..., 0]) and np.array_equal(back[..., 3], la[..., 1])
    else:
        with Image.open(out) as im:
            assert im.mode == "LA" and np.array_equal(np.asarray(im), la)


def test_8_bit_conversions_give_numpys_values_exactly():
    """Decode and encode convert with OpenCV for speed: the values must be numpy's rint-clip and x / 255, including
    every half level (rounded half to even) and values outside [0, 1]."""
    from engine.images import _quantize_bgr, _to_float_rgb

    rng = np.random.default_rng(0)
    rgb = rng.random((300, 300, 3), dtype=np.float32) * 1.4 - 0.2
    steps = (np.arange(256 * 16) / 16 / 255).astype(np.float32)
    rgb.reshape(-1)[:steps.size] = steps
    expected = np.clip(np.rint(rgb[..., ::-1] * 255.0), 0, 255).astype(np.uint8)
    assert np.array_equal(_quantize_bgr(rgb), expected)
    bgr = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    assert np.array_equal(_to_float_rgb(bgr, False, 255.0), bgr[..., ::-1].astype(np.float32) / 255.0)
    deep = rng.integers(0, 65536, (50, 60, 4), dtype=np.uint16)
    assert np.array_equal(_to_float_rgb(deep, False, 65535.0), deep[..., 2::-1].astype(np.float32) / 65535.0)
    grey = rng.integers(0, 256, (50, 60, 1), dtype=np.uint8)
    assert np.array_equal(_to_float_rgb(grey, True, 255.0), np.repeat(grey, 3, 2).astype(np.float32) / 255.0)
