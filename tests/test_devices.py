"""A device that cannot be used is one clear line and exit code 1, never a traceback; a GPU left idle is mentioned."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.cli import main
from engine.model import Pix2PixTurbo
from engine.runtime import DeviceError, pick_device, unused_gpu_note

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def frame(tmp_path):
    path = tmp_path / "f.png"
    cv2.imwrite(str(path), np.zeros((32, 32, 3), np.uint8))
    return path


def test_cuda_without_cuda_is_one_clear_line(tiny_weights, frame, tmp_path, capsys):
    assert main(["restore", str(frame), "-o", str(tmp_path / "o"), "--weights", str(tiny_weights),
                 "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --device cuda asked for") and "no CUDA GPU" in err and len(err.splitlines()) == 1


def test_a_gpu_index_past_the_last_gpu_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match=r"--device cuda:7 asked for, but this machine has 1 CUDA GPU \(cuda:0\)"):
        pick_device("cuda:7")
    assert pick_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.parametrize("name", ["gpu", "xla", "cuda:x"])
def test_unknown_devices_are_refused(name):
    with pytest.raises(DeviceError, match="use auto, cpu, cuda, cuda:N or mps"):
        pick_device(name)


def test_out_of_memory_at_load_is_one_clear_line(tiny_weights, frame, tmp_path, monkeypatch, capsys):
    def to(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.7 GiB total)")

    monkeypatch.setattr(Pix2PixTurbo, "to", to)
    assert main(["restore", str(frame), "-o", str(tmp_path / "o"), "--weights", str(tiny_weights),
                 "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory loading the model onto cpu") and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "f.png").exists()


def test_serve_reports_a_bad_device_in_the_ready_line_and_on_stderr(tiny_weights):
    r = subprocess.run([sys.executable, "-m", "engine", "serve", "--weights", str(tiny_weights), "--device", "cuda:3"],
                       cwd=ROOT, input=b"", capture_output=True, timeout=120)
    assert r.returncode == 1
    ready = json.loads(r.stdout.splitlines()[0])
    assert ready["ok"] is False and ready["error"]["code"] == "load_failed"
    assert "--device cuda:3" in ready["error"]["message"]
    err = r.stderr.decode()
    assert "error: --device cuda:3" in err and "Traceback" not in err


def test_cpu_only_torch_beside_an_nvidia_gpu_says_how_to_get_a_cuda_build():
    note = unused_gpu_note("auto", torch.device("cpu"), ["NVIDIA GeForce RTX 4090"], None, "2.13.0+cpu")
    assert "RTX 4090" in note and "CPU-only build" in note
    assert "pip install --force-reinstall torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" in note


def test_cuda_torch_that_cannot_reach_the_gpu_points_at_the_driver():
    note = unused_gpu_note("auto", torch.device("cpu"), ["NVIDIA A10"], "12.8", "2.13.0+cu128")
    assert "driver" in note and "CUDA 12.8" in note


@pytest.mark.parametrize("requested, device, gpus", [
    ("cpu", "cpu", ["NVIDIA A10"]),  # asked for: not an accident
    ("auto", "cpu", []),  # no NVIDIA GPU
    ("auto", "cuda", ["NVIDIA A10"]),  # the GPU is used
])
def test_nothing_is_said_when_the_cpu_is_no_accident(requested, device, gpus):
    assert unused_gpu_note(requested, torch.device(device), gpus, None) is None


def test_windows_setup_takes_torch_from_the_cuda_index_and_linux_ci_from_pypi():
    import build

    assert build.torch_install_args("nt", {}) == [build.TORCH, "--index-url", "https://download.pytorch.org/whl/cu128"]
    assert build.torch_install_args("posix", {}) == [build.TORCH]
    assert build.torch_install_args("nt", {"SPLAT_RESTORE_TORCH": "torch.whl"}) == [build.TORCH]  # own wheel: as is
