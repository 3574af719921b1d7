"""`python -m engine import-photos`: capture photos become upright sRGB PNGs of their own depth, or are named."""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from engine.photos import UsageError, run

ROOT = Path(__file__).resolve().parents[1]


def _records(capsys) -> dict:
    return {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}


def _read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1]


def _halves(w=40, h=20) -> np.ndarray:
    """Left half red, right half blue: which way it was turned shows."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (230, 20, 20)
    a[:, w // 2:] = (20, 20, 230)
    return a


def test_an_exif_rotated_jpeg_comes_out_upright_with_its_size_swapped(tmp_path, capsys):
    src = tmp_path / "in" / "cam_001.jpg"
    src.parent.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    Image.fromarray(_halves()).save(src, quality=95, exif=exif)
    assert run([str(src.parent)], str(tmp_path / "out"), as_json=True) == 0
    record = _records(capsys)["cam_001"]
    assert (record["width"], record["height"], record["bit_depth"]) == (20, 40, 8)
    out = _read(Path(record["file"]))
    assert out.shape == (40, 20, 3) and out.dtype == np.uint8
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60  # the red half is on top now
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60
    with Image.open(src) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), np.float32)
    assert np.abs(out - expected).mean() < 2  # as Pillow shows it (decoders may differ in the last bit)


def test_a_16_bit_png_stays_16_bit_to_the_last_bit(tmp_path, capsys):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65536, (12, 16, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "cam_002.png"), pixels[..., ::-1])
    assert run([str(tmp_path / "cam_002.png")], str(tmp_path / "out"), as_json=True) == 0
    record = _records(capsys)["cam_002"]
    assert record["bit_depth"] == 16 and (record["width"], record["height"]) == (16, 12)
    out = _read(Path(record["file"]))
    assert out.dtype == np.uint16 and np.array_equal(out, pixels)


def test_truncated_and_garbage_photos_are_named_and_the_rest_written(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_halves(64, 48)).save(src / "good.jpg", quality=95)
    data = (src / "good.jpg").read_bytes()
    (src / "cut.jpg").write_bytes(data[: len(data) // 2])
    (src / "junk.png").write_bytes(b"this is not a picture at all" * 10)
    out = tmp_path / "out"
    assert run([str(src)], str(out), as_json=True) == 1
    records = _records(capsys)
    assert records["good"]["status"] == "ok"
    for name, problem in (("cut", "truncated"), ("junk", "not an image")):
        assert records[name]["status"] == "failed"
        assert str(src / f"{name}.{'jpg' if name == 'cut' else 'png'}") in records[name]["error"]
        assert problem in records[name]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]  # nothing half-written, no temporaries


def test_a_photo_is_written_whole_or_not_at_all(tmp_path, capsys, monkeypatch):
    Image.fromarray(_halves()).save(tmp_path / "a.png")
    out = tmp_path / "out"

    def failing_rename(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", failing_rename)
    assert run([str(tmp_path / "a.png")], str(out), as_json=True) == 1
    record = _records(capsys)["a"]
    assert "No space left" in record["error"] and str(tmp_path / "a.png") in record["error"]
    assert list(out.iterdir()) == []  # neither the PNG nor its temporary


def test_alpha_grey_and_cmyk_become_rgb(tmp_path, capsys):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[...] = (200, 100, 50, 255)
    rgba[:, 4:, 3] = 0  # transparent half: black, as Blender writes a transparent render without alpha
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    Image.fromarray(np.full((8, 8), 77, np.uint8)).save(tmp_path / "grey.png")
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=100)  # pure cyan
    Image.new("CMYK", (8, 8), (0, 0, 0, 128)).save(tmp_path / "black.tif")  # half black: OpenCV reads K as alpha
    assert run([str(tmp_path)], str(tmp_path / "out"), as_json=True) == 0
    records = _records(capsys)
    alpha = _read(Path(records["alpha"]["file"]))
    assert alpha.shape == (8, 8, 3) and tuple(alpha[0, 0]) == (200, 100, 50) and alpha[:, 4:].max() == 0
    assert "alpha composited over black" in records["alpha"]["notes"]
    grey = _read(Path(records["grey"]["file"]))
    assert grey.shape == (8, 8, 3) and (grey == 77).all()
    cyan = _read(Path(records["cmyk"]["file"])).astype(int)
    assert cyan.shape == (8, 8, 3) and cyan[..., 0].max() < 8 and cyan[..., 1:].min() > 247
    grey = _read(Path(records["black"]["file"])).astype(int)
    assert grey.shape == (8, 8, 3) and np.abs(grey - 127).max() <= 2, grey[0, 0]


def _cmyk_profile() -> bytes:
    """A printer profile (ICC v2, CMYK -> Lab through a 2-point table) that prints any ink without black as pure red
    and any with black as black: a conversion that ignored it would give cyan for cyan."""
    red, black = bytes([136, 208, 195]), bytes([0, 128, 128])  # 8-bit Lab: L * 2.55, a + 128, b + 128
    table = b"".join(red if i % 2 == 0 else black for i in range(16))  # K varies fastest
    lut = b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + b"".join(struct.pack(">i", 1 << 16 if i % 4 == 0 else 0)
                                                            for i in range(9))
    lut += bytes(range(256)) * 4 + table + bytes(range(256)) * 3
    white = b"XYZ " + bytes(4) + struct.pack(">iii", 63190, 65536, 54061)  # D50
    tags = [(b"A2B0", lut + bytes(-len(lut) % 4)), (b"wtpt", white)]
    start = 128 + 4 + 12 * len(tags)
    directory, body = b"", b""
    for sig, data in tags:
        directory += sig + struct.pack(">II", start + len(body), len(data))
        body += data
    header = struct.pack(">I4sI4s4s4s", start + len(body), b"lcms", 0x02100000, b"prtr", b"CMYK", b"Lab ") \
        + bytes(12) + b"acsp" + bytes(28) + struct.pack(">iii", 63190, 65536, 54061) + bytes(48)
    return header + struct.pack(">I", len(tags)) + directory + body


def test_a_cmyk_photo_goes_through_its_own_profile(tmp_path, capsys):
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(tmp_path / "print.jpg", quality=100, icc_profile=_cmyk_profile())
    assert run([str(tmp_path / "print.jpg")], str(tmp_path / "out"), as_json=True) == 0
    record = _records(capsys)["print"]
    assert record["notes"] == ["CMYK converted to sRGB through unnamed profile"]
    red = _read(Path(record["file"])).astype(int)
    assert red[..., 0].min() > 240 and red[..., 1:].max() < 16


def _linear_profile() -> bytes:
    """sRGB's primaries with straight-line (gamma 1) curves, under another name: a photo in linear light."""
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    data[84:100] = bytes(16)  # no profile ID (an MD5 of the old bytes)
    count = struct.unpack(">I", data[128:132])[0]
    for k in range(count):
        sig, offset, size = struct.unpack(">4sII", data[132 + 12 * k: 144 + 12 * k])
        if sig in (b"rTRC", b"gTRC", b"bTRC"):  # parametric curve type 0: Y = X ^ 1.0
            data[offset:offset + size] = (b"para" + bytes(4) + struct.pack(">HHi", 0, 0, 1 << 16)).ljust(size, b"\0")
    name = "sRGB built-in".encode("utf-16-be")
    assert data.count(name) == 1
    return bytes(data.replace(name, "Lin1 built-in".encode("utf-16-be")))


def _srgb_encode(x):
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


@pytest.mark.parametrize("depth", [8, 16])
def test_an_icc_profile_is_converted_to_srgb(tmp_path, capsys, depth):
    icc = _linear_profile()
    top = 255 if depth == 8 else 65535
    ramp = np.linspace(0, top, 64).round().astype(np.uint8 if depth == 8 else np.uint16)
    pixels = np.stack([ramp, ramp[::-1], np.full_like(ramp, top // 3)], -1)[None].repeat(4, 0)  # (4, 64, 3)
    if depth == 8:
        Image.fromarray(pixels).save(tmp_path / "lin.png", icc_profile=icc)
    else:  # OpenCV writes the 16-bit PNG (Pillow cannot); the profile goes in as engine/images.py writes it
        from engine.images import _with_icc
        ok, buf = cv2.imencode(".png", pixels[..., ::-1])
        (tmp_path / "lin.png").write_bytes(_with_icc(buf.tobytes(), "PNG", icc, pixels.shape))
    assert run([str(tmp_path / "lin.png")], str(tmp_path / "out"), as_json=True) == 0
    record = _records(capsys)["lin"]
    assert record["bit_depth"] == depth and any("Lin1 built-in" in n for n in record["notes"])
    out = _read(Path(record["file"])).astype(np.float64) / top
    expected = _srgb_encode(pixels.astype(np.float64) / top)
    assert np.abs(out - expected).max() < 1.5 / 255  # LittleCMS rounds to 8 bits; the 16-bit table adds no more
    assert np.abs(out - pixels / top).max() > 0.2  # it was converted, not copied


def test_an_unreadable_profile_is_named(tmp_path, capsys):
    Image.fromarray(_halves()).save(tmp_path / "bad.png", icc_profile=b"not a profile" * 20)
    assert run([str(tmp_path / "bad.png")], str(tmp_path / "out"), as_json=True) == 1
    error = _records(capsys)["bad"]["error"]
    assert str(tmp_path / "bad.png") in error and "ICC colour profile cannot be read" in error


def test_usage_errors_write_nothing(tmp_path):
    Image.fromarray(_halves()).save(tmp_path / "Cam.jpg")
    Image.fromarray(_halves()).save(tmp_path / "cam.png")
    with pytest.raises(UsageError, match="Cam.jpg and .*cam.png would both become"):
        run([str(tmp_path)], str(tmp_path / "out"))
    with pytest.raises(UsageError, match="is the photo itself"):
        run([str(tmp_path / "cam.png")], str(tmp_path), overwrite=True)
    with pytest.raises(UsageError, match="no such file"):
        run([str(tmp_path / "missing.jpg")], str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "cam.png").write_bytes(b"mine")
    with pytest.raises(UsageError, match="already exists"):
        run([str(tmp_path / "cam.png")], str(tmp_path / "out"))
    assert (tmp_path / "out" / "cam.png").read_bytes() == b"mine"


def test_the_command_line_takes_a_list_file_and_prints_json_lines(tmp_path):
    Image.fromarray(_halves()).save(tmp_path / "ok.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff" + bytes(50))
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'ok.png'}\n{tmp_path / 'bad.jpg'}\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "engine", "import-photos", "--from-list", str(listing), "--out",
           str(tmp_path / "out"), "--json"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["name"], x["status"]) for x in lines] == [("ok", "ok"), ("bad", "failed")]
    cmd[5] = str(tmp_path / "none.txt")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "none.txt" in r.stderr


def test_the_module_needs_no_torch():
    code = "import sys, engine.photos; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0
