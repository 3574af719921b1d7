"""One folder scan for the command line and the add-on: images only, no hidden or half-written files, never the
output folder, natural order."""
from pathlib import Path

import cv2
import numpy as np

from blender_addon.engine_link.scan import IMAGE_SUFFIXES, remove_temporaries, scan_folder
from blender_addon.folder_restore import folder_items
from engine.cli import main
from engine.images import FLOAT_SUFFIXES, SUPPORTED_SUFFIXES
from engine.jobs import collect_items


def _png(path: Path, seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), (np.random.default_rng(seed).random((24, 24, 3)) * 255).astype(np.uint8))
    return path


def _renders(root: Path) -> None:
    for name in ("f_10.png", "f_2.png", "f_1.png", "sub/f_3.png", ".hidden.png", "notes.txt",
                 ".f_1.0123abcd.partial.png", "f_9.partial.png", "f_8.png.partial", "take.partial_v2.png", ".cache/f_4.png", "restored/f_1.png"):
        if name.endswith(".png"):
            _png(root / name)
        else:
            (root / name).write_text("x")


def test_the_scan_skips_temporary_files_and_the_output_and_sorts_naturally(tmp_path):
    _renders(tmp_path)
    rel = [p.relative_to(tmp_path).as_posix() for p in scan_folder(tmp_path, tmp_path / "restored")]
    assert rel == ["f_1.png", "f_2.png", "f_10.png", "take.partial_v2.png"]
    rel = [p.relative_to(tmp_path).as_posix() for p in scan_folder(tmp_path, tmp_path / "restored", recursive=True)]
    assert rel == ["f_1.png", "f_2.png", "f_10.png", "sub/f_3.png", "take.partial_v2.png"]


def test_the_add_on_and_the_command_line_pick_the_same_files(tmp_path):
    _renders(tmp_path)
    out = tmp_path / "restored"
    for recursive in (False, True):
        addon = folder_items(tmp_path, out, recursive)
        cli = [(i.input, i.output) for i in collect_items([tmp_path], out, recursive)]
        assert addon == cli and not [p for p, _ in addon if ".partial." in p.name or p.name.startswith(".")]


def test_the_scan_knows_every_format_the_engine_reads_or_refuses_by_name():
    assert IMAGE_SUFFIXES == set(SUPPORTED_SUFFIXES) | FLOAT_SUFFIXES


def test_a_recursive_restore_into_its_own_input_does_not_restore_its_outputs(tiny_weights, tmp_path):
    src = tmp_path / "renders"
    for name in ("a.png", "sub/b.png"):
        _png(src / name)
    args = ["restore", str(src), "-o", str(src / "restored"), "--recursive", "--weights", str(tiny_weights),
            "--device", "cpu", "--overwrite"]
    assert main(args) == 0 and main(args) == 0  # the second run must see the same two inputs
    written = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.png"))
    assert written == ["a.png", "restored/a.png", "restored/sub/b.png", "sub/b.png"]


def test_temporaries_of_the_given_outputs_only_are_removed(tmp_path):
    names = [".f_1.0123abcd.partial.png", ".f_1.89abcdef.partial.png", ".f_2.0123abcd.partial.png", "f_1.png",
             ".f_1.0123abcd.partial.exr", ".f_1.png.0123abcd.partial.png", "f_1.partial.png", ".f_1.xyz.partial.png"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".f_1.0123abcd.partial.png").write_bytes(b"x")
    remove_temporaries(tmp_path / "f_1.png", tmp_path / "gone" / "f_1.png")
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted(set(names) - {".f_1.0123abcd.partial.png", ".f_1.89abcdef.partial.png"}
                          | {"sub/.f_1.0123abcd.partial.png"})


def test_a_folder_that_cannot_be_listed_is_named_not_skipped(tmp_path, monkeypatch):
    """os.walk skips what it cannot list; a share refusing one subfolder would lose its frames without a word."""
    import os

    import pytest

    (tmp_path / "shot" / "locked").mkdir(parents=True)
    real_scandir = os.scandir

    def refusing(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    with pytest.raises(PermissionError):
        scan_folder(tmp_path / "shot", recursive=True)
    with pytest.raises(ValueError, match=r"cannot read .*locked: Permission denied"):
        folder_items(tmp_path / "shot", None, recursive=True)
