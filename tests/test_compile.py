"""torch.compile never holds a frame up, compiles each batch bucket once, and keeps its kernels on disk.

One test compiles (about 95 s per compile of the tiny model on this project's 2-core CPU), so it checks everything
that needs a compiled model at once."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest


def _faces_frame(count: int) -> np.ndarray:
    """A 360 x 1000 frame with `count` bundled faces side by side: larger than the tiny model, so faces mode."""
    from engine.faces.bundled import bundled_faces

    photos = bundled_faces()
    canvas = np.full((360, 1000, 3), 0.35, np.float32)
    for name, x, y, scale in [("astronaut", 40, 30, 0.6), ("grace_hopper", 380, 40, 0.45),
                              ("astronaut", 680, 30, 0.6)][:count]:
        photo = cv2.resize(photos[name], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) / 255.0
        canvas[y:y + photo.shape[0], x:x + photo.shape[1]] = photo
    return canvas


def test_frames_and_face_crops_compile_once_per_bucket_in_the_background(tiny_weights, tmp_path):
    pytest.importorskip("mediapipe")
    from torch._dynamo.utils import counters

    from engine.faces.detect import FaceDetector
    from engine.faces.restore import FramePipeline
    from engine.runtime import ModelRunner

    before = counters["stats"]["unique_graphs"]
    restorer = ModelRunner.from_pretrained(tiny_weights, device="cpu", batch_size=4, compile="on",
                                        compile_cache=str(tmp_path / "cache"))
    frames = [np.random.default_rng(k).random((64, 64, 3), dtype=np.float32) for k in range(5)]
    eager = restorer.restore(frames[:1])[0]  # served at once, while the buckets compile
    assert restorer.forward.state == "compiling" and restorer.forward.compiled_calls == 0
    assert restorer.describe()["compile"]["state"] == "compiling"
    assert restorer.forward.wait(1200), "compiling the tiny model's two buckets took over 20 minutes"
    warmed = counters["stats"]["unique_graphs"]
    assert restorer.forward.status()["shapes"] == [[1, 3, 64, 64], [4, 3, 64, 64]]
    assert warmed - before <= 2  # batch 1 and batch 4

    restored = restorer.restore(frames)  # 5 frames at batch 4: a call of 4 and a call of 1
    pipeline = FramePipeline(restorer, detector=FaceDetector(min_face=32))
    found = [len(pipeline.restore([_faces_frame(k)], ["auto"])[0].faces) for k in (1, 2, 3)]

    assert found == [1, 2, 3]  # crops in calls of 1, 2 and 3: padded to buckets 1, 4 and 4
    assert counters["stats"]["unique_graphs"] == warmed  # not one compile after the warm-up
    assert restorer.forward.compiled_calls == 5
    assert np.abs(restored[0] - eager).max() < 1e-3  # the compiled model restores as the eager one did
    assert any((tmp_path / "cache").rglob("fxgraph*"))  # FX graphs kept for the next engine start

    from engine.benches.restart import measure_in_subprocess

    warm = measure_in_subprocess(tmp_path / "cache", str(tiny_weights), None, "sd-turbo", 64, [1, 4], "cpu", "auto",
                                 "on")
    assert warm["cache_hits"] >= 2  # a restarted engine loads both buckets' graphs from the cache
    print(f"compiled buckets 1 and 4 in {restorer.forward.status()['seconds']:.1f} s cold, "
          f"{warm['seconds']:.1f} s on a restart")


def test_every_model_call_is_padded_to_a_batch_bucket_and_the_padding_dropped(tiny_weights):
    from engine.runtime import ModelRunner

    restorer = ModelRunner.from_pretrained(tiny_weights, device="cpu", batch_size=4, compile="off")
    calls = []
    forward = restorer.forward
    restorer.forward = lambda x: calls.append(tuple(x.shape)) or forward(x)
    frames = [np.random.default_rng(k).random((64, 64, 3), dtype=np.float32) for k in range(7)]
    restored = restorer.restore(frames)  # calls of 4 and 3 frames
    alone = restorer.restore(frames[6:])  # a call of 1
    assert [c[0] for c in calls] == [4, 4, 1] and len(restored) == 7
    assert np.abs(restored[6] - alone[0]).max() < 1e-5  # the black padding frames change nothing


@pytest.mark.parametrize("device, mode, expected", [("cuda", "auto", "reduce-overhead"), ("cpu", "auto", None),
                                                    ("mps", "auto", None), ("cpu", "on", "default"),
                                                    ("cuda", "off", None)])
def test_compiling_uses_cuda_graphs_on_cuda_only(device, mode, expected):
    from engine.fastpath import inductor_mode

    assert inductor_mode(device, mode) == expected


def test_the_compile_cache_lives_in_the_users_cache_folder(tmp_path, monkeypatch):
    from engine.fastpath import default_compile_cache, use_compile_cache

    assert default_compile_cache({"XDG_CACHE_HOME": "/c"}, "linux") == Path("/c/splat-restore/compile")
    assert default_compile_cache({"LOCALAPPDATA": "C:/L"}, "win32") == Path("C:/L/splat-restore/compile")
    assert default_compile_cache({}, "darwin").parts[-3:] == ("Caches", "splat-restore", "compile")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "env"))
    assert use_compile_cache() == tmp_path / "env"  # an Inductor cache the user set up is kept
    assert use_compile_cache(tmp_path / "mine") == tmp_path / "mine"
    assert Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]) == tmp_path / "mine"


def test_compiling_off_reports_off_and_never_starts_a_thread(tiny_weights):
    from engine.runtime import ModelRunner

    restorer = ModelRunner.from_pretrained(tiny_weights, device="cpu", compile="off")
    restorer.restore([np.zeros((64, 64, 3), np.float32)])
    assert restorer.describe()["compile"] == {"state": "off", "mode": None, "shapes": [], "seconds": 0}
    assert restorer.forward._thread is None


def test_a_restore_that_ends_while_compiling_exits_with_its_own_code(tiny_weights, tmp_path):
    import subprocess
    import sys

    for k in range(2):
        cv2.imwrite(str(tmp_path / f"f_{k}.png"), np.full((64, 64, 3), 40 * k, np.uint8))
    done = subprocess.run([sys.executable, "-m", "engine", "restore", str(tmp_path), "-o", str(tmp_path / "out"),
                           "--weights", str(tiny_weights), "--device", "cpu", "--compile", "on",
                           "--compile-cache", str(tmp_path / "cache")],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]  # not SIGABRT from tearing down a compile half-way
    assert "restored 2, skipped 0, failed 0" in done.stdout


def test_frames_are_served_eagerly_until_their_shape_is_compiled_then_compiled(tmp_path, monkeypatch):
    import threading

    import torch

    from engine.fastpath import FastForward

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    forward = FastForward(torch.nn.Conv2d(3, 3, 1), torch.device("cpu"), "on")
    release, calls, states = threading.Event(), [], []

    def compiler_stand_in(x):  # what torch.compile's first call does: block for minutes, then run compiled code
        calls.append(tuple(x.shape))
        release.wait(30)
        return x * 0 + 7
    forward.compiled = compiler_stand_in
    forward.on_change = lambda: states.append(forward.state)
    with torch.inference_mode():
        x = torch.ones(2, 3, 8, 8)
        assert forward(x).ne(7).all()  # eager at once, while its shape compiles
        assert forward.state == "compiling" and not forward.wait(0.2)
        release.set()
        assert forward.wait(30) and forward.state == "ready"
        assert forward(x).eq(7).all() and forward.compiled_calls == 1
    assert calls == [(2, 3, 8, 8), (2, 3, 8, 8)] and states[0] == "compiling" and states[-1] == "ready"
    assert forward.status()["shapes"] == [[2, 3, 8, 8]]


def test_a_failing_compile_is_reported_once_and_frames_stay_eager(tmp_path, monkeypatch):
    import torch

    from engine.fastpath import FastForward

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    forward = FastForward(torch.nn.Conv2d(3, 3, 1), torch.device("cpu"), "on")

    def broken(x):
        raise RuntimeError("no C++ compiler")
    forward.compiled = broken
    forward.compile_async([(1, 3, 8, 8), (2, 3, 8, 8)])
    assert forward.wait(30) and forward.state == "failed"
    assert "no C++ compiler" in forward.status()["message"] and forward.status()["shapes"] == []
    with torch.inference_mode():
        assert forward(torch.ones(1, 3, 8, 8)).shape == (1, 3, 8, 8)  # served eagerly
