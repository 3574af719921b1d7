"""The client against stand-in engines: the protocol handshake and the time limits on a hung engine. No torch."""
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from blender_addon.engine_link import protocol
from blender_addon.engine_link.client import EngineClient, EngineError, EngineSettings
from blender_addon.engine_manager import EngineManager
from blender_addon.frame_queue import FrameQueue
from stand_in_engine import make_stand_in

ROOT = Path(__file__).resolve().parents[1]


def _settings(tmp_path, behaviour, **kw):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    return EngineSettings(python=str(make_stand_in(tmp_path / "bin", behaviour)), weights=str(weights), **kw)


def _frames(tmp_path, n):
    paths = [tmp_path / "renders" / f"f_{i:04d}.png" for i in range(1, n + 1)]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"frame %d" % len(str(p)))
    return paths


def test_an_engine_of_another_protocol_version_is_refused_naming_both(tmp_path):
    client = EngineClient(_settings(tmp_path, "protocol:2"))
    with pytest.raises(EngineError, match=r"protocol version 2 .* this add-on speaks version 1") as e:
        client.start()
    assert e.value.code == "protocol_mismatch" and not client.alive


def test_an_engine_that_never_gets_ready_is_stopped_at_the_start_up_limit(tmp_path):
    client = EngineClient(_settings(tmp_path, "silent-start", startup_timeout=1.0))
    started = time.monotonic()
    with pytest.raises(EngineError, match="did not become ready within 1 s") as e:
        client.start()
    assert e.value.code == "timeout" and time.monotonic() - started < 10
    assert client.process.poll() is not None


def test_a_hung_engine_fails_its_frames_at_the_per_frame_limit(tmp_path):
    client = EngineClient(_settings(tmp_path, "silent", stall_timeout=1.0))
    client.start()
    frames = _frames(tmp_path, 3)
    requests = [client.restore([(f, tmp_path / "out" / f.name)]) for f in frames]
    started = time.monotonic()
    with pytest.raises(EngineError, match="no answer for 1 s") as e:
        client.wait(requests[0])
    assert e.value.code == "timeout" and time.monotonic() - started < 10
    for r in requests[1:]:  # the others fail with it, at once
        with pytest.raises(EngineError, match="hung"):
            client.wait(r)
    assert not client.alive and client.process.poll() is not None


@pytest.mark.parametrize("behaviour", ["dies-writing", "hangs-writing"])
def test_an_engine_stopped_mid_write_leaves_no_half_frame_behind(tmp_path, behaviour):
    client = EngineClient(_settings(tmp_path, behaviour, stall_timeout=1.0))
    client.start()
    out = tmp_path / "out"
    out.mkdir()
    (out / ".f_0007.89abcdef.partial.png").write_bytes(b"not this request's")  # another frame's, left alone
    (out / "f_0001.png.partial").write_bytes(b"another program's")
    frames = _frames(tmp_path, 2)
    request = client.restore([(f, out / f.name) for f in frames])
    with pytest.raises(EngineError, match="exited with code 3" if behaviour == "dies-writing" else "hung"):
        client.wait(request)
    assert sorted(p.name for p in out.iterdir()) == [".f_0007.89abcdef.partial.png", "f_0001.png.partial"]


def test_a_slow_engine_that_keeps_finishing_frames_is_not_cut_off(tmp_path):
    client = EngineClient(_settings(tmp_path, "copy:0.4", stall_timeout=1.0))
    client.start()
    frames = _frames(tmp_path, 6)  # 2.4 s in all: longer than the limit, but never 1 s without an answer
    (tmp_path / "out").mkdir()
    requests = [client.restore([(f, tmp_path / "out" / f.name)]) for f in frames]
    for r in requests:
        assert client.wait(r)["restored"] == 1
    client.shutdown()


def test_the_engine_status_says_compiling_while_the_engine_compiles_in_the_background(tmp_path):
    manager = EngineManager()
    client = manager.client_for(_settings(tmp_path, "compiling"))
    deadline = time.monotonic() + 10
    while manager.status != "ready, compiling…" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert manager.status == "ready, compiling…"
    frame = _frames(tmp_path, 1)[0]
    (tmp_path / "out").mkdir()
    assert client.wait(client.restore([(frame, tmp_path / "out" / frame.name)]))["restored"] == 1
    assert manager.status == "ready" and client.compile["shapes"] == [[1, 3, 64, 64]]
    manager.stop()


def test_a_render_with_a_hung_engine_ends_with_every_frame_failed(tmp_path):
    settings = _settings(tmp_path, "silent", stall_timeout=1.0)
    queue = FrameQueue(EngineManager(), settings)
    for frame in _frames(tmp_path, 3):
        queue.submit(frame)
    started = time.monotonic()
    report = queue.drain()
    assert time.monotonic() - started < 10
    assert len(report.failed) == 3 and not report.restored and report.restarts == 0
    assert "no answer for 1 s" in report.summary()
    queue.manager.stop()


def test_frames_the_engine_wrote_before_it_died_are_not_restored_again_in_place(tmp_path):
    queue = FrameQueue(EngineManager(), _settings(tmp_path, "dies-mid-batch:2/4"), in_place=True)
    frames = _frames(tmp_path, 4)
    renders = [f.read_bytes() for f in frames]
    for frame in frames:
        queue.submit(frame)
    report = queue.drain()
    assert [f.read_bytes() for f in frames] == [r + b" restored" for r in renders]  # once each, never twice
    assert sorted(report.restored) == sorted(map(str, frames)) and not report.failed and report.restarts == 1
    queue.manager.stop()


class _FullPipe:
    """The engine's stdin while the pipe is full and the engine is busy writing: a write blocks until released."""

    def __init__(self):
        self.writing, self.released = threading.Event(), threading.Event()

    def write(self, data):
        self.writing.set()
        self.released.wait(30)

    def flush(self):
        pass


def test_the_engine_s_answers_are_taken_while_a_request_waits_to_be_written(tmp_path):
    client = EngineClient(_settings(tmp_path, "held"))
    client.start()
    frame = _frames(tmp_path, 1)[0]
    (tmp_path / "out").mkdir()
    held = client.restore([(frame, tmp_path / "out" / frame.name)])  # answered once the engine reads its next line
    engine_stdin, full = client.process.stdin, _FullPipe()
    client.process.stdin = full
    writer = threading.Thread(target=client.request, args=("ping",), daemon=True)
    writer.start()
    assert full.writing.wait(10)
    engine_stdin.write(protocol.encode({"id": "go", "op": "ping"}))
    engine_stdin.flush()
    try:
        assert held.wait(10)["restored"] == 1
    finally:
        full.released.set()
        writer.join(10)
        client.process.stdin = engine_stdin
        client.kill()


def test_the_engine_lists_its_devices():
    r = subprocess.run([sys.executable, "-m", "engine", "info", "--devices", "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    devices = json.loads(r.stdout)["devices"]
    assert devices[0]["id"] == "cpu" and all("name" in d for d in devices)


def test_engine_settings_reach_the_serve_command_line():
    from engine.cli import build_parser

    s = EngineSettings(python="py", weights="w.safetensors", device="cuda:1", batch_size=8, tile=256, min_face=40,
                       compile="off")
    a = build_parser().parse_args(s.command()[3:])
    assert (a.command, a.device, a.batch_size, a.tile, a.min_face, a.compile) == ("serve", "cuda:1", 8, 256, 40,
                                                                                  "off")
    assert "--tile" not in EngineSettings(python="py", weights="w").command()  # 0: the model's size


def test_accepting_a_licence_reaches_the_serve_command_line():
    assert "--accept-license" in EngineSettings("py", "nvidia/difix", accept_license=True).command()
    assert "--accept-license" not in EngineSettings("py", "nvidia/difix").command()


@pytest.mark.parametrize("text, hub", [("nvidia/difix", True), ("stabilityai/sd-turbo", True), ("./a/b", False),
                                       ("/abs/path", False), ("a/b/c", False), ("C:\\x\\y", False),
                                       ("weights.safetensors", False), ("org/", False)])
def test_hub_ids_are_told_from_paths(text, hub):
    from blender_addon.engine_link.weights import looks_like_hub_id

    assert looks_like_hub_id(text) is hub


def test_an_uncached_hub_id_reaches_the_engine_but_a_missing_file_does_not(tmp_path):
    from blender_addon.engine_link.weights import weights_exist

    assert weights_exist("nvidia/difix") and weights_exist(str(tmp_path))
    assert not weights_exist(str(tmp_path / "missing.safetensors")) and not weights_exist("")
