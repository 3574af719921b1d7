"""Without mediapipe: one clear error at start naming the install command; frames that need no faces still restore."""
import io
import json
import sys
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.faces import detect as face_detect
from engine.cli import main

ROOT = Path(__file__).resolve().parents[1]


class NoMediapipe:
    """An import hook that makes `import mediapipe` fail, counting the attempts."""

    def __init__(self):
        self.attempts = 0

    def find_spec(self, name, path=None, target=None):
        if name == "mediapipe":
            self.attempts += 1
            raise ImportError("No module named 'mediapipe'")
        return None


@pytest.fixture
def no_mediapipe(monkeypatch):
    hook = NoMediapipe()
    for name in [n for n in sys.modules if n == "mediapipe" or n.startswith("mediapipe.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [hook, *sys.meta_path])
    face_detect.faces_unavailable.cache_clear()
    yield hook
    face_detect.faces_unavailable.cache_clear()


def _write(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8))
    return path


def test_restore_fails_once_at_start_naming_the_install_command(no_mediapipe, tiny_weights, tmp_path, capsys):
    src = tmp_path / "in"
    _write(src / "big.png", 80)  # larger than the tiny model's 64 px: auto mode looks for faces
    _write(src / "small.png", 48)
    out = tmp_path / "out"
    assert main(["restore", str(src), "-o", str(out), "--weights", str(tiny_weights), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 1 of 2 frames need face detection (first: ") and "big.png" in err
    assert face_detect.INSTALL_FACES in err and "--faces off" in err and len(err.strip().splitlines()) == 1
    assert no_mediapipe.attempts == 1 and list(out.iterdir()) == []


def test_frames_no_larger_than_the_model_need_no_mediapipe(no_mediapipe, tiny_weights, tmp_path):
    src = _write(tmp_path / "in" / "crop.png", 48)
    assert main(["restore", str(src), "-o", str(tmp_path / "out"), "--weights", str(tiny_weights),
                 "--device", "cpu"]) == 0
    assert (tmp_path / "out" / "crop.png").is_file() and no_mediapipe.attempts == 0


def test_service_serves_whole_frames_and_fails_face_frames_without_retrying_the_import(no_mediapipe, tiny_weights,
                                                                                       tmp_path):
    from engine.faces.restore import FramePipeline
    from engine.runtime import ModelRunner
    from engine.service import Service

    out = io.BytesIO()
    service = Service(FramePipeline(ModelRunner.from_pretrained(tiny_weights, device="cpu")), out)
    assert service.describe()["faces"]["available"] is False
    for k in range(3):
        items = [{"input": str(_write(tmp_path / f"big{k}.png", 80)), "output": str(tmp_path / "o" / f"big{k}.png")},
                 {"input": str(_write(tmp_path / f"small{k}.png", 48)),
                  "output": str(tmp_path / "o" / f"small{k}.png")}]
        service.handle_line(json.dumps({"id": k, "op": "restore", "items": items}).encode())
    service.closing = True
    service.work_loop()
    answers = [m for m in map(json.loads, out.getvalue().splitlines()) if "event" not in m]
    assert len(answers) == 3
    for a in answers:
        assert a["error"]["code"] == "engine_error" and face_detect.INSTALL_FACES in a["error"]["message"]
        assert a["result"]["restored"] == 1 and a["result"]["failed"] == 1
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["small0.png", "small1.png", "small2.png"]
    assert no_mediapipe.attempts == 1


def test_the_install_command_installs_the_faces_extra():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["faces"]
    assert tuple(extra) == face_detect.FACES_EXTRA
