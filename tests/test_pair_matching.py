"""Make Training Pairs' rules without Blender (blender_addon/training_pairs.py, photo_import.py): cameras to photos by
name, held-out cameras, the sensor-fit rule, what a pairs folder may hold, and the photo decoder run as a process."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blender_addon import training_pairs as tp
from blender_addon.photo_import import PhotoImport


def _touch(folder: Path, *names) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")
    return tp.list_photos(folder)


def test_cameras_take_the_photo_of_their_name_ignoring_case_and_the_rest_is_listed(tmp_path):
    photos = _touch(tmp_path, "CAM_012.JPG", "cam_2.png", "cam_10.tif", "stray.jpg", "notes.txt", ".hidden.png",
                    "cam_7.CR2", "cam_9.nef", "cam_9.jpg")
    m = tp.match_cameras(["cam_012", "cam_10", "cam_2", "cam_3", "cam_7", "cam_9"], photos)
    assert [(c, p.name) for c, p in m.pairs] == [("cam_2", "cam_2.png"), ("cam_9", "cam_9.jpg"),
                                                 ("cam_10", "cam_10.tif"), ("cam_012", "CAM_012.JPG")]
    assert m.unmatched_cameras == ["cam_3"] and m.unmatched_photos == ["stray.jpg"]
    assert list(m.not_read) == ["cam_7"] and "cam_7.CR2" in m.not_read["cam_7"] and "JPEG" in m.not_read["cam_7"]


def test_two_photos_for_one_camera_and_cameras_differing_in_case_are_errors_naming_both(tmp_path):
    photos = _touch(tmp_path, "cam_1.jpg", "Cam_1.png")
    with pytest.raises(ValueError, match=r"photos (cam_1.jpg and Cam_1.png|Cam_1.png and cam_1.jpg) both match"):
        tp.match_cameras(["cam_1"], photos)
    with pytest.raises(ValueError, match="cameras 'cam_1' and 'CAM_1' differ only in case"):
        tp.match_cameras(["cam_1", "CAM_1"], photos[:1])


def test_no_match_at_all_is_an_error_listing_both_sides(tmp_path):
    photos = _touch(tmp_path, "IMG_0001.jpg", "IMG_0002.jpg")
    with pytest.raises(ValueError, match="no camera matches a photo.*cameras cam_1, cam_2; photos IMG_0001.jpg, "
                                         "IMG_0002.jpg"):
        tp.match_cameras(["cam_2", "cam_1"], photos)
    with pytest.raises(ValueError, match="does not exist"):
        tp.list_photos(tmp_path / "missing")


def test_every_nth_camera_in_name_order_is_held_out_and_at_least_one_of_two():
    names = [f"cam_{k}" for k in range(1, 21)]
    splits = tp.holdout_splits(names[::-1], 8)
    assert sorted((n for n, s in splits.items() if s == "test"), key=names.index) == ["cam_1", "cam_9", "cam_17"]
    assert tp.holdout_splits(["b", "a"], 8) == {"a": "test", "b": "train"}
    assert tp.holdout_splits(["only"], 8) == {"only": "train"}
    with pytest.raises(ValueError, match="holdout 1"):
        tp.holdout_splits(names, 1)


@pytest.mark.parametrize("fit, scene, photo, refused", [
    ("AUTO", (1920, 1080), (4000, 6000), True),  # portrait photo, landscape scene: the sensor would turn
    ("AUTO", (1080, 1920), (6000, 4000), True),
    ("AUTO", (1000, 1000), (4000, 6000), False),  # a square frame fits its width and its height alike
    ("AUTO", (1080, 1920), (3000, 3000), False),
    ("AUTO", (1920, 1080), (6000, 4000), False),  # another aspect, same side: the width keeps its view
    ("AUTO", (1920, 1080), (3000, 3000), False),
    ("HORIZONTAL", (1920, 1080), (4000, 6000), False),
    ("VERTICAL", (1920, 1080), (4000, 6000), False)])
def test_sensor_fit_auto_refuses_a_photo_of_the_other_orientation(fit, scene, photo, refused):
    problem = tp.fit_problem("cam_1", fit, scene, photo)
    assert (problem is not None) == refused
    if refused:
        assert f"{photo[0]}x{photo[1]}" in problem and f"{scene[0]}x{scene[1]}" in problem
        assert "cam_1" in problem and "Sensor Fit to Horizontal or Vertical" in problem


def test_pixel_aspect_must_be_square():
    assert tp.pixel_aspect_problem(1, 1) is None and tp.pixel_aspect_problem(2, 2) is None
    assert "2:1" in tp.pixel_aspect_problem(2, 1)


def _pairs_folder(out: Path, names=("a", "b")) -> None:
    for folder in ("degraded", "clean", "mask"):
        _touch(out / folder, *[f"{n}.png" for n in names])
    tp.write_manifest(out, [{"name": n, "file": f"{n}.png", "split": "train"} for n in names])


def test_an_output_folder_with_pairs_is_replaced_only_when_asked_and_never_with_foreign_files(tmp_path):
    out = tmp_path / "pairs"
    assert tp.existing_pairs(out, overwrite=False) == []
    out.mkdir()
    (out / f"{tp.STAGING_PREFIX}x").mkdir()
    (out / f"{tp.STAGING_PREFIX}x" / "a.png").write_bytes(b"a crashed run's staging")
    (out / ".DS_Store").write_bytes(b"")
    assert tp.existing_pairs(out, overwrite=False) == []
    _pairs_folder(out)
    with pytest.raises(ValueError, match="already holds 2 pairs"):
        tp.existing_pairs(out, overwrite=False)
    replaced = tp.existing_pairs(out, overwrite=True)
    assert sorted(p.relative_to(out).as_posix() for p in replaced) == [
        "clean/a.png", "clean/b.png", "degraded/a.png", "degraded/b.png", "manifest.jsonl", "mask/a.png", "mask/b.png"]
    (out / "degraded" / "c.png").write_bytes(b"not listed")
    with pytest.raises(ValueError, match=r"holds 1 files that no pairs run wrote \(degraded/c.png\)"):
        tp.existing_pairs(out, overwrite=True)
    (out / "file").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        tp.existing_pairs(out / "file", overwrite=True)


def test_the_manifest_is_replaced_whole(tmp_path, monkeypatch):
    tp.write_manifest(tmp_path, [{"name": "a", "file": "a.png"}])
    monkeypatch.setattr(tp.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        tp.write_manifest(tmp_path, [{"name": "a", "file": "a.png"}, {"name": "b", "file": "b.png"}])
    assert [p.name for p in tmp_path.iterdir()] == [tp.MANIFEST]
    assert [r["name"] for r in tp.read_records(tmp_path)] == ["a"]


def test_png_size_and_the_report(tmp_path):
    Image.fromarray(np.zeros((7, 11, 3), np.uint8)).save(tmp_path / "a.png")
    assert tuple(tp.png_size(tmp_path / "a.png")) == (11, 7)
    (tmp_path / "b.png").write_bytes(b"GIF89a" + bytes(30))
    with pytest.raises(ValueError, match="not a PNG"):
        tp.png_size(tmp_path / "b.png")
    text = tp.describe_summary({"output": "/p", "pairs": ["a", "b"], "test": ["a"], "unmatched_cameras": ["c"],
                                "unmatched_photos": ["x.jpg"], "failed": {"d": "d.jpg: truncated"},
                                "cancelled": True, "not_made": ["e"]})
    assert text == ("Splat Restore: 2 training pairs in /p (1 test: a); cancelled, 1 cameras not rendered; "
                    "1 unmatched cameras: c; 1 unmatched photos: x.jpg; 1 failed: d.jpg: truncated")


def test_the_photos_are_decoded_by_the_engine_python_with_each_outcome_named(tmp_path):
    Image.fromarray(np.full((6, 9, 3), 90, np.uint8)).save(tmp_path / "a.jpg")
    (tmp_path / "b.png").write_bytes(b"garbage")
    staging = tmp_path / "staging"
    staging.mkdir()
    job = PhotoImport(sys.executable, [tmp_path / "a.jpg", tmp_path / "b.png"], staging,
                      cwd=str(Path(__file__).resolve().parents[1]))
    job.start()
    job.wait()
    assert job.done and job.progress == (2, 2)
    result = job.result()
    a, b = result[tmp_path / "a.jpg"], result[tmp_path / "b.png"]
    assert (a["status"], a["width"], a["height"], a["bit_depth"]) == ("ok", 9, 6, 8)
    assert Path(a["file"]) == staging / "photos" / "a.png" and Path(a["file"]).is_file()
    assert b["status"] == "failed" and str(tmp_path / "b.png") in b["error"]
    assert json.loads(json.dumps(result[tmp_path / "a.jpg"])) == a


def test_an_interpreter_without_the_engine_is_named(tmp_path):
    bare = shutil.which("python3")
    if not bare or subprocess.run([bare, "-c", "import engine"], cwd=tmp_path).returncode == 0:
        pytest.skip("no interpreter without the project's packages here")
    job = PhotoImport(bare, [tmp_path / "a.jpg"], tmp_path, cwd=str(tmp_path))
    job.start()
    job.wait()
    with pytest.raises(ValueError, match="no Splat Restore engine.*Install Engine"):
        job.result()
    with pytest.raises(ValueError, match="engine interpreter not found"):
        PhotoImport(str(tmp_path / "nope"), [], tmp_path).start()
