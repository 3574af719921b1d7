"""`python -m engine restore`: folders in, same names out, failures named, exit codes, nothing half-written."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.cli import main
from engine.images import read_image
from engine.runtime import ModelRunner

ROOT = Path(__file__).resolve().parents[1]


def _write(path, shape=(48, 40, 3), dtype=np.uint8, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    hi = np.iinfo(dtype).max
    cv2.imwrite(str(path), (np.random.default_rng(seed).random(shape) * hi).astype(dtype))
    return path


def _no_partials(folder):
    return not [p for p in Path(folder).rglob("*") if ".partial" in p.name]


def test_restores_a_folder_to_the_same_names(tiny_weights, tmp_path, capsys):
    src = tmp_path / "renders"
    _write(src / "a.png", (48, 40, 3))
    _write(src / "b.png", (64, 64, 4), np.uint16)
    _write(src / "c.jpg", (30, 70, 3))
    out = tmp_path / "out"
    assert main(["restore", str(src), "-o", str(out), "--weights", str(tiny_weights), "--device", "cpu",
                 "--batch-size", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.jpg"]
    b_in, b_out = read_image(src / "b.png"), read_image(out / "b.png")
    assert b_out.bit_depth == 16 and np.array_equal(b_out.alpha, b_in.alpha)
    assert "restored 3, skipped 0, failed 0" in capsys.readouterr().out


def test_output_matches_the_restorer(tiny_weights, tmp_path):
    src = _write(tmp_path / "in" / "f.png", (56, 72, 3))
    main(["restore", str(src), "-o", str(tmp_path / "out"), "--weights", str(tiny_weights), "--device", "cpu",
          "--faces", "off"])  # larger than the tiny model's 64 px: whole-frame (tiled) restore asked for
    expected = ModelRunner.from_pretrained(tiny_weights, device="cpu").restore([read_image(src).rgb])[0]
    got = read_image(tmp_path / "out" / "f.png").rgb
    assert np.abs(got - expected).max() <= 0.5 / 255 + 1e-6


def test_bad_inputs_are_named_and_the_rest_still_done(tiny_weights, tmp_path, capsys):
    src = tmp_path / "in"
    _write(src / "good.png")
    (src / "empty.png").write_bytes(b"")
    (src / "text.png").write_bytes(b"not an image")
    (src / "cut.png").write_bytes(_write(tmp_path / "whole.png").read_bytes()[:100])
    out = tmp_path / "out"
    assert main(["restore", str(src), "-o", str(out), "--weights", str(tiny_weights), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    for name in ("empty.png", "text.png", "cut.png"):
        assert name in err
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]


def test_recursive_keeps_subfolders(tiny_weights, tmp_path):
    _write(tmp_path / "in" / "shot1" / "0001.png")
    _write(tmp_path / "in" / "shot2" / "0001.png")
    assert main(["restore", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--recursive",
                 "--weights", str(tiny_weights), "--device", "cpu"]) == 0
    assert (tmp_path / "out" / "shot1" / "0001.png").is_file() and (tmp_path / "out" / "shot2" / "0001.png").is_file()


def test_existing_outputs_need_a_decision(tiny_weights, tmp_path, capsys):
    src = _write(tmp_path / "in" / "f.png")
    out = tmp_path / "out"
    (out).mkdir()
    (out / "f.png").write_bytes(b"keep me")
    args = ["restore", str(src), "-o", str(out), "--weights", str(tiny_weights), "--device", "cpu"]
    assert main(args) == 1 and "--overwrite" in capsys.readouterr().err
    assert main(args + ["--skip-existing"]) == 0 and (out / "f.png").read_bytes() == b"keep me"
    assert main(args + ["--overwrite"]) == 0 and read_image(out / "f.png").size == (40, 48)


def test_input_is_never_overwritten(tiny_weights, tmp_path, capsys):
    src = _write(tmp_path / "f.png")
    before = src.read_bytes()
    assert main(["restore", str(src), "-o", str(tmp_path), "--overwrite", "--weights", str(tiny_weights),
                 "--device", "cpu"]) == 1
    assert src.read_bytes() == before and "input file itself" in capsys.readouterr().err


def test_unwritable_output_folder_fails_clearly(tiny_weights, tmp_path, capsys):
    src = _write(tmp_path / "f.png")
    blocker = tmp_path / "file_not_folder"
    blocker.write_bytes(b"")
    assert main(["restore", str(src), "-o", str(blocker / "out"), "--weights", str(tiny_weights),
                 "--device", "cpu"]) == 1
    assert "file_not_folder" in capsys.readouterr().err


def test_write_failure_leaves_nothing_half_written(tiny_weights, tmp_path, monkeypatch, capsys):
    src = _write(tmp_path / "in" / "f.png")
    monkeypatch.setattr("os.replace", lambda a, b: (_ for _ in ()).throw(OSError(13, "Permission denied")))
    assert main(["restore", str(src), "-o", str(tmp_path / "out"), "--weights", str(tiny_weights),
                 "--device", "cpu"]) == 1
    assert "Permission denied" in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == []


def test_usage_errors_exit_2(tiny_weights, tmp_path):
    assert main(["restore", str(tmp_path / "nope"), "-o", str(tmp_path / "o"), "--weights", str(tiny_weights)]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["restore", str(tmp_path / "empty"), "-o", str(tmp_path / "o"),
                 "--weights", str(tiny_weights)]) == 2
    with pytest.raises(SystemExit) as e:
        main(["restore", "x.png"])
    assert e.value.code == 2


def test_missing_weights_fail_with_the_file_named(tmp_path, capsys):
    src = _write(tmp_path / "f.png")
    assert main(["restore", str(src), "-o", str(tmp_path / "o"), "--weights", str(tmp_path / "w.safetensors")]) == 1
    assert "w.safetensors does not exist" in capsys.readouterr().err


def test_runs_as_a_module(tiny_weights, tmp_path):
    src = _write(tmp_path / "f.png")
    r = subprocess.run([sys.executable, "-m", "engine", "restore", str(src), "-o", str(tmp_path / "o"),
                        "--weights", str(tiny_weights), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "restored 1" in r.stdout and (tmp_path / "o" / "f.png").is_file()


def test_one_frame_raising_anything_costs_that_frame_only(tiny_weights, tmp_path, monkeypatch, capsys):
    import engine.pipeline.steps
    from engine.faces.restore import FramePipeline

    src = tmp_path / "in"
    for name in ("a.png", "b.png", "c.png", "d.png"):
        _write(src / name)
    real_read, real_model = engine.pipeline.steps.read_image, FramePipeline.run_model

    def read(path):
        if Path(path).name == "a.png":
            raise cv2.error("imdecode exploded")
        return real_read(path)

    def run_model(self, prepared):  # any batch holding c.png fails, as a library bug on one frame would
        if any(np.array_equal(p.image, bad) for p in prepared):
            raise KeyError("tile")
        return real_model(self, prepared)

    bad = read_image(_write(src / "c.png", seed=3)).rgb
    monkeypatch.setattr(engine.pipeline.steps, "read_image", read)
    monkeypatch.setattr(FramePipeline, "run_model", run_model)
    out = tmp_path / "out"
    assert main(["restore", str(src), "-o", str(out), "--weights", str(tiny_weights), "--device", "cpu",
                 "--batch-size", "2"]) == 1
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["b.png", "d.png"]
    assert "a.png: cannot read: error: imdecode exploded" in captured.err
    assert "c.png: restorer failed: KeyError: 'tile'" in captured.err
    assert "restored 2, skipped 0, failed 2" in captured.out
    assert _no_partials(out)


def test_an_input_the_os_refuses_to_list_is_a_usage_error_naming_it(tiny_weights, tmp_path, capsys, monkeypatch):
    """A network share that answers "permission denied" when listed: exit 2 and the folder named, no traceback."""
    import os

    share = tmp_path / "share"
    share.mkdir()
    real_scandir = os.scandir

    def refusing(path="."):
        if os.fspath(path) == os.fspath(share):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    assert main(["restore", str(share), "-o", str(tmp_path / "out"), "--weights", str(tiny_weights)]) == 2
    err = capsys.readouterr().err
    assert f"input {share}: cannot read: Permission denied" in err
    assert main(["restore", "a\0b.png", "-o", str(tmp_path / "out"), "--weights", str(tiny_weights)]) == 2
    assert "NUL" in capsys.readouterr().err
