"""The stdio service and its torch-free client: the protocol, every bad message, cancel, a killed engine, load."""
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from blender_addon.engine_link import protocol
from blender_addon.engine_link.client import EngineClient, EngineDied, EngineError, EngineSettings
from engine.faces.restore import FrameResult
from engine.images import read_image
from engine.runtime import ModelRunner

ROOT = Path(__file__).resolve().parents[1]


def _image(path, size=(40, 48), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), (np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8))
    return path


def _settings(weights, **kw):
    return EngineSettings(python=sys.executable, weights=str(weights), device="cpu", cwd=str(ROOT), **kw)


@pytest.fixture(scope="module")
def engine(tiny_weights):
    client = EngineClient(_settings(tiny_weights, batch_size=4))
    client.start(timeout=120)
    yield client
    client.shutdown()


class RawEngine:
    """The engine driven line by line, for messages the client would never send."""

    def __init__(self, weights):
        self.p = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--weights", str(weights),
                                   "--device", "cpu"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)
        self.ready = json.loads(self.p.stdout.readline())

    def ask(self, line: bytes) -> dict:
        self.p.stdin.write(line.rstrip(b"\n") + b"\n")
        self.p.stdin.flush()
        while True:
            msg = json.loads(self.p.stdout.readline())
            if "event" not in msg:  # progress and compile events come between answers
                return msg

    def close(self):
        self.p.stdin.close()
        return self.p.wait(30)


@pytest.fixture(scope="module")
def raw(tiny_weights):
    r = RawEngine(tiny_weights)
    yield r
    r.close()


def test_ready_line_describes_the_engine(engine):
    assert engine.ready["ok"] and engine.ready["protocol"] == 1
    assert engine.ready["device"] == "cpu" and engine.ready["batch_size"] == 4
    assert engine.request("ping").wait(10) == {"pong": True}
    assert engine.request("info").wait(10)["model"]["input_range"] == "-1,1"


def test_the_compile_state_is_in_the_ready_line_and_info_and_sent_as_an_event(engine):
    off = {"state": "off", "mode": None, "shapes": [], "seconds": 0}  # auto: compiled on CUDA only
    assert engine.ready["compile"] == off and engine.request("info").wait(10)["compile"] == off
    deadline = time.monotonic() + 10
    while engine.compile.get("event") != "compile" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.compile == {"event": "compile", **off} and not engine.compiling


def test_restore_one_frame_matches_the_restorer(engine, tiny_weights, tmp_path):
    src = _image(tmp_path / "in.png")
    result = engine.restore([(src, tmp_path / "out.png")]).wait(60)
    assert result["restored"] == 1
    expected = ModelRunner.from_pretrained(tiny_weights, device="cpu").restore([read_image(src).rgb])[0]
    assert np.abs(read_image(tmp_path / "out.png").rgb - expected).max() <= 0.5 / 255 + 1e-6


def test_restore_a_list_reports_progress(engine, tmp_path):
    items = [(_image(tmp_path / f"{i}.png", seed=i), tmp_path / "out" / f"{i}.png") for i in range(6)]
    seen = []
    request = engine.restore(items, on_progress=lambda d, t: seen.append((d, t)))
    result = request.wait(60)
    assert result["restored"] == 6 and seen[-1] == (6, 6) and len(seen) == 6
    assert all(o.is_file() for _, o in items)
    # each progress event names the frame it decided, exactly as the final answer does (crash-resends rely on it)
    key = lambda i: i["output"]  # noqa: E731
    assert sorted(request.decided, key=key) == sorted(result["items"], key=key)


@pytest.mark.parametrize("line, code", [
    (b"this is not json", "bad_json"),
    (b"[1, 2]", "bad_json"),
    (b'{"op": "ping"}', "bad_request"),
    (b'{"id": 1, "op": "explode"}', "unknown_op"),
    (b'{"id": 2, "op": "restore"}', "bad_request"),
    (b'{"id": 3, "op": "restore", "input": "a.png"}', "bad_request"),
    (b'{"id": 4, "op": "restore", "items": []}', "bad_request"),
    (b'{"id": 5, "op": "restore", "items": ["a.png"]}', "bad_request"),
    (b'{"id": 6, "op": "restore", "input": "a.png", "output": "b.png", "overwrite": "yes"}', "bad_request"),
    (b'{"id": 7, "op": "cancel"}', "bad_request"),
    (b'{"id": 8, "op": "restore", "input": "/no/such/file.png", "output": "/tmp/x.png"}', "bad_input"),
    (b'{"id": 9, "op": "restore", "input": "a.png", "output": "b.png", "reference": 5}', "bad_request"),
    (b'{"id": 10, "op": "restore", "input": "a.png", "output": "b.png", "reference": " "}', "bad_request"),
])
def test_bad_messages_get_an_error_and_the_service_keeps_serving(raw, line, code):
    answer = raw.ask(line)
    assert answer["ok"] is False and answer["error"]["code"] == code and answer["error"]["message"]
    assert raw.ask(b'{"id": "p", "op": "ping"}')["ok"]


def test_bad_images_and_outputs_are_named(raw, tiny_weights, tmp_path):
    good = _image(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(good.read_bytes()[:80])
    (tmp_path / "blocker").write_bytes(b"")
    cases = [
        ({"input": str(tmp_path / "corrupt.png"), "output": str(tmp_path / "o1.png")}, "bad_input", "corrupt.png"),
        ({"input": str(good), "output": str(tmp_path / "blocker" / "o.png")}, "bad_output", "blocker"),
        ({"input": str(good), "output": str(good)}, "bad_output", "input file itself"),
    ]
    for k, (msg, code, needle) in enumerate(cases):
        answer = raw.ask(json.dumps({"id": f"c{k}", "op": "restore", **msg}).encode())
        assert answer["error"]["code"] == code and needle in answer["error"]["message"]
    assert not (tmp_path / "o1.png").exists()
    before = read_image(good).rgb
    answer = raw.ask(json.dumps({"id": "inplace", "op": "restore", "input": str(good), "output": str(good),
                                 "in_place": True}).encode())
    assert answer["ok"] and read_image(good).size == (48, 40)
    # the restored pixels replace the file's, not the same pixels under new text chunks
    expected = ModelRunner.from_pretrained(tiny_weights, device="cpu").restore([before])[0]
    assert np.abs(read_image(good).rgb - expected).max() <= 0.5 / 255 + 1e-6
    assert np.abs(expected - before).max() > 4 / 255


def test_cancel_drops_queued_frames(engine, tmp_path):
    items = [(_image(tmp_path / f"{i}.png", (64, 64), seed=i), tmp_path / "out" / f"{i}.png") for i in range(40)]
    req = engine.restore(items)
    engine.cancel(req)
    with pytest.raises(EngineError) as e:
        req.wait(60)
    assert e.value.code == "cancelled" and e.value.result["cancelled"] > 0
    written = {Path(i["output"]) for i in e.value.result["items"] if i["status"] == "restored"}
    for _, out in items:
        assert out.exists() == (out in written)
    for out in written:
        read_image(out)  # whole
    assert engine.request("ping").wait(10)["pong"]


def test_killed_engine_is_reported_and_restarted(tiny_weights, tmp_path):
    client = EngineClient(_settings(tiny_weights))
    client.start(timeout=120)
    items = [(_image(tmp_path / f"{i}.png", (64, 64), seed=i), tmp_path / "out" / f"{i}.png") for i in range(50)]
    req = client.restore(items)
    deadline = time.time() + 60
    while req.done_count < 2 and time.time() < deadline:
        time.sleep(0.01)
    client.process.kill()
    with pytest.raises(EngineDied, match="exited with code"):
        req.wait(30)
    assert not client.alive
    finished = [o for _, o in items if o.exists()]
    assert 2 <= len(finished) < 50
    for out in finished:
        read_image(out)
    assert not [p for p in (tmp_path / "out").iterdir() if ".partial" in p.name]
    client.ensure_running(timeout=120)
    assert client.request("ping").wait(10)["pong"]
    client.shutdown()
    assert not client.alive


def test_load_failure_is_reported_with_the_reason(tmp_path):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(EngineError, match="w.safetensors") as e:
        EngineClient(_settings(bad)).start(timeout=120)
    assert e.value.code == "load_failed"


def test_wrong_interpreter_is_reported(tiny_weights, tmp_path):
    settings = _settings(tiny_weights)
    settings.python = str(tmp_path / "no" / "python.exe")
    with pytest.raises(EngineError, match="interpreter not found") as e:
        EngineClient(settings).start()
    assert e.value.code == "no_interpreter"


def test_interpreter_without_the_engine_is_reported(tiny_weights, tmp_path):
    settings = _settings(tiny_weights)
    settings.cwd = str(tmp_path)
    settings.env = {"PYTHONNOUSERSITE": "1"}
    settings.python = str(Path(sys.base_prefix) / "bin" / "python3")
    if not Path(settings.python).exists():
        pytest.skip("no base interpreter at the usual place")
    with pytest.raises(EngineError, match="No module named engine|exited with code"):
        EngineClient(settings).start(timeout=60)


def test_client_imports_without_torch_or_numpy():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['numpy'] = None; "
            "import blender_addon.engine_link.client, blender_addon.engine_link.protocol")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_a_thousand_requests_with_bad_ones_are_all_answered(tiny_weights, tmp_path):
    client = EngineClient(_settings(tiny_weights, batch_size=8))
    client.start(timeout=120)
    src = _image(tmp_path / "in.png", (16, 16))
    (tmp_path / "bad.png").write_bytes(b"nope")
    requests = []
    for i in range(1000):
        if i % 10 == 3:
            requests.append(("bad", client.restore([(tmp_path / "bad.png", tmp_path / "o" / f"{i}.png")])))
        elif i % 10 == 7:
            requests.append(("ping", client.request("ping")))
        else:
            requests.append(("ok", client.restore([(src, tmp_path / "o" / f"{i}.png")])))
    for kind, req in requests:
        if kind == "bad":
            with pytest.raises(EngineError) as e:
                req.wait(120)
            assert e.value.code == "bad_input"
        else:
            req.wait(120)
    assert client.alive and client.request("ping").wait(10)["pong"]
    assert len(list((tmp_path / "o").iterdir())) == 800
    client.shutdown()


def test_protocol_benchmark_prints_its_table(tiny_weights):
    r = subprocess.run([sys.executable, "-m", "engine", "bench-protocol", "--weights", str(tiny_weights),
                        "--device", "cpu", "--frames", "5", "--size", "64"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "protocol overhead" in r.stdout and "% of model time" in r.stdout


def test_an_unexpected_fault_fails_the_frames_not_the_service(tiny_weights, tmp_path):
    import io

    from engine.service import Service

    class Exploding(Passthrough):
        batch_size = 2

        def run_model(self, images):
            raise KeyError("simulated bug")

    out = io.BytesIO()
    service = Service(Exploding(), out)
    src = _image(tmp_path / "in.png")
    service.handle_line(json.dumps({"id": 1, "op": "restore", "input": str(src), "output": str(tmp_path / "o.png")})
                        .encode())
    service.closing = True
    service.work_loop()
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    final = [a for a in answers if a.get("id") == 1 and "ok" in a][0]
    assert final["error"]["code"] == "engine_error" and "simulated bug" in final["error"]["message"]
    assert not (tmp_path / "o.png").exists()


def test_an_over_long_line_is_dropped_unread_answered_and_serving_goes_on(raw):
    answer = raw.ask(b'{"id": 1, "op": "ping", "pad": "' + b"x" * protocol.MAX_LINE + b'"}')
    assert answer["ok"] is False and answer["error"]["code"] == "bad_request"
    assert f"over the {protocol.MAX_LINE}-byte limit" in answer["error"]["message"]
    assert raw.ask(b'{"id": "after", "op": "ping"}')["ok"]


class ReadRecorder(io.BytesIO):
    """A binary stream that remembers the longest piece it handed out."""
    longest = 0

    def readline(self, size=-1):
        line = super().readline(size)
        self.longest = max(self.longest, len(line))
        return line


def test_reads_never_hold_more_than_the_limit_and_stay_in_step(monkeypatch):
    monkeypatch.setattr(protocol, "MAX_LINE", 64)
    stream = ReadRecorder(b'{"id": 1}\n' + b"y" * 1000 + b"\n" + b'{"id": 2}\n' + b"z" * 65)
    assert protocol.read_line(stream) == b'{"id": 1}\n'
    with pytest.raises(protocol.ProtocolError, match="1001 bytes is over the 64-byte limit") as e:
        protocol.read_line(stream)
    assert e.value.code == "bad_request"
    assert protocol.read_line(stream) == b'{"id": 2}\n'
    with pytest.raises(protocol.ProtocolError):  # unterminated and over-long at the end: still refused
        protocol.read_line(stream)
    assert protocol.read_line(stream) == b"" and stream.longest <= 65


def test_the_client_drops_an_over_long_engine_line_and_keeps_reading(monkeypatch, tiny_weights):
    monkeypatch.setattr(protocol, "MAX_LINE", 64)

    class Process:
        stdout = ReadRecorder(b'{"event": "ready", "ok": true}\n' + b"{" * 5000 + b"\n" + b'{"id": "r1", "ok": true}\n')

    client = EngineClient(_settings(tiny_weights))
    client._dispatch_lines(Process)
    assert client.ready == {"event": "ready", "ok": True} and Process.stdout.longest <= 65
    assert any("over the 64-byte limit" in line for line in client.stderr_tail())


def _cycle(weights, frames, k):
    """Start, restore (face frame, whole frame), ping, info, shutdown; odd cycles shut down with work still queued."""
    p = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--weights", str(weights), "--device", "cpu"],
                         cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert json.loads(p.stdout.readline())["ok"]
        requests = [{"id": 1, "op": "restore", "faces": "auto", "overwrite": True,
                     "items": [{"input": str(f), "output": str(f.parent / f"out{k}" / f.name)} for f in frames]},
                    {"id": 2, "op": "ping"}, {"id": 3, "op": "info"}]
        if k % 2:
            requests.append({"id": 4, "op": "restore", "faces": "auto", "overwrite": True,
                             "items": [{"input": str(frames[0]), "output": str(frames[0].parent / f"q{k}.png")}] * 3})
        p.stdin.write(b"".join(protocol.encode(r) for r in requests))
        p.stdin.flush()
        answered = set()
        while not {1, 2, 3} <= answered:
            message = json.loads(p.stdout.readline())
            if "event" not in message:
                answered.add(message["id"])
        p.stdin.write(protocol.encode({"id": 5, "op": "shutdown"}))
        p.stdin.flush()
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, out, err.decode(errors="replace")


def test_thirty_start_serve_shutdown_cycles_all_exit_0(tiny_weights, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    frames = [_image(tmp_path / "face.png", (72, 88)), _image(tmp_path / "crop.png", (40, 48))]
    with ThreadPoolExecutor(3) as pool:  # three at a time: the load under which aborts at exit were seen
        runs = list(pool.map(lambda k: _cycle(tiny_weights, frames, k), range(30)))
    codes = [code for code, _, _ in runs]
    assert codes == [0] * 30, [err[-400:] for code, _, err in runs if code]
    for _, out, err in runs:
        assert {"id": 5, "ok": True, "result": {"shutdown": True}} in [json.loads(line) for line in out.splitlines()]
        assert "terminate called" not in err


# one unusable path or line costs its own request only (issue 22) -------------------------------------------------
class Passthrough:
    """A pipeline that hands each frame back as it came, counting the frames it was given."""
    batch_size, provenance = 4, {}

    def __init__(self):
        self.frames = 0

    def prepare(self, image, mode, place=None, in_order=None):
        return image

    def run_model(self, images):
        self.frames += len(images)
        return images

    def finish(self, image, output):
        return FrameResult(output, "whole")

    def describe(self):
        return {}


def _restore(request_id, src, out) -> bytes:
    return json.dumps({"id": request_id, "op": "restore", "input": str(src), "output": str(out)}).encode()


def _serve_in_process(lines, pipeline=None) -> dict:
    """Each line handled as the reader would, then the queue served to its end: {id: final answer}."""
    from engine.service import Service

    out = io.BytesIO()
    service = Service(pipeline or Passthrough(), out)
    for line in lines:
        service.handle_line(line)
    service.closing = True
    service.work_loop()
    return {a["id"]: a for a in map(json.loads, out.getvalue().splitlines()) if "event" not in a}


def _shown(path: str) -> str:
    """A path as messages name it: what cannot be shown, escaped."""
    return path.replace("\0", "\\x00").replace("\ud800", "\\ud800")


@pytest.mark.parametrize("name, reason", [
    ("a\0b.png", "NUL"),
    ("x" * 296 + ".png", "name is 300 "),
    ("x" * 246 + ".png", "at most 237"),  # fits the OS, but the temporary written first would not
    ("y" * 300 + "/o.png", "folder name in it is 300 "),
    ("d/" * 20000 + "o.png", "fit in a path"),
])
def test_an_output_path_no_file_can_have_fails_its_request_before_restoring(tmp_path, name, reason):
    src, bad, pipeline = _image(tmp_path / "in.png"), str(tmp_path / name), Passthrough()
    answers = _serve_in_process([_restore(1, src, tmp_path / "o1.png"), _restore(2, src, bad),
                                 _restore(3, src, tmp_path / "o3.png")], pipeline)
    assert answers[1]["ok"] and answers[3]["ok"] and pipeline.frames == 2
    error = answers[2]["error"]
    assert error["code"] == "bad_output" and _shown(bad) in error["message"] and reason in error["message"]


@pytest.mark.parametrize("name", ["in\0put.png", pytest.param(
    "\ud800.png", marks=pytest.mark.skipif(os.name == "nt", reason="Windows file names may hold lone surrogates"))])
def test_an_input_path_no_file_can_have_is_bad_input_and_named(tmp_path, name):
    src, bad = _image(tmp_path / "in.png"), str(tmp_path / name)
    answers = _serve_in_process([_restore(1, bad, tmp_path / "o1.png"), _restore(2, src, tmp_path / "o2.png")])
    assert answers[2]["ok"] and not (tmp_path / "o1.png").exists()
    assert answers[1]["error"]["code"] == "bad_input" and _shown(bad) in answers[1]["error"]["message"]


def test_an_output_the_os_refuses_to_probe_fails_that_frame_only(tmp_path, monkeypatch):
    src, denied = _image(tmp_path / "in.png"), tmp_path / "share" / "o.png"
    real_stat, real_exists = Path.stat, Path.exists

    def refuse(real):  # as a network share answers a probe where the user may not look
        def probe(self, *args, **kwargs):
            if self == denied:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *args, **kwargs)
        return probe
    monkeypatch.setattr(Path, "stat", refuse(real_stat))
    monkeypatch.setattr(Path, "exists", refuse(real_exists))
    answers = _serve_in_process([_restore(1, src, denied), _restore(2, src, tmp_path / "o2.png")])
    assert answers[2]["ok"]
    error = answers[1]["error"]
    assert error["code"] == "bad_output" and str(denied) in error["message"] and "Permission denied" in error["message"]


def test_whatever_checking_one_frame_raises_costs_that_frame_only(tmp_path, monkeypatch):
    import engine.service

    real_check = engine.service.check_item

    def check(item, *args):
        if item.input.name == "odd.png":
            raise KeyError("simulated fault")
        return real_check(item, *args)
    monkeypatch.setattr(engine.service, "check_item", check)
    odd, src = _image(tmp_path / "odd.png"), _image(tmp_path / "in.png")
    batch = json.dumps({"id": 1, "op": "restore", "items": [{"input": str(odd), "output": str(tmp_path / "o1.png")},
                                                            {"input": str(src), "output": str(tmp_path / "o2.png")}]})
    answers = _serve_in_process([batch.encode(), _restore(2, src, tmp_path / "o3.png")])
    assert answers[1]["result"]["restored"] == 1 and (tmp_path / "o2.png").is_file() and answers[2]["ok"]
    assert answers[1]["error"]["code"] == "engine_error"
    assert str(odd) in answers[1]["error"]["message"] and "simulated fault" in answers[1]["error"]["message"]


def _read_all(lines: list[bytes]) -> list[dict]:
    """What the reader answers to `lines`, read from a stream to its end."""
    from engine.service import Service

    out = io.BytesIO()
    Service(Passthrough(), out).read_loop(io.BytesIO(b"".join(line + b"\n" for line in lines)))
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_line_nested_too_deeply_is_answered_without_an_id_and_reading_goes_on():
    first, after = _read_all([b"[" * 100_000, b'{"id": "after", "op": "ping"}'])
    assert first["id"] is None and first["error"]["code"] == "bad_json" and "nested" in first["error"]["message"]
    assert after == {"id": "after", "ok": True, "result": {"pong": True}}


def test_the_reader_answers_a_line_it_fails_to_handle_and_reads_on(monkeypatch):
    real_parse = protocol.parse_request

    def parse(message):
        if message["op"] == "odd":
            raise KeyError("simulated fault")
        return real_parse(message)
    monkeypatch.setattr(protocol, "parse_request", parse)
    first, after = _read_all([b'{"id": 1, "op": "odd"}', b'{"id": 2, "op": "ping"}'])
    assert first["id"] is None and first["error"]["code"] == "engine_error"
    assert "simulated fault" in first["error"]["message"]
    assert after == {"id": 2, "ok": True, "result": {"pong": True}}


def test_unusable_paths_and_lines_cost_only_their_requests_and_shutdown_exits_0(tiny_weights, tmp_path):
    src = _image(tmp_path / "in.png")
    bad = {"nul-out": (src, str(tmp_path / "a\0b.png"), "bad_output"),
           "long-name": (src, str(tmp_path / ("x" * 296 + ".png")), "bad_output"),
           "nul-in": (str(tmp_path / "i\0n.png"), tmp_path / "o.png", "bad_input")}
    lines = [_restore("good1", src, tmp_path / "good1.png"), *(_restore(k, i, o) for k, (i, o, _) in bad.items()),
             b"[" * 100_000, _restore("good2", src, tmp_path / "good2.png")]
    engine = RawEngine(tiny_weights)
    try:
        engine.p.stdin.write(b"".join(line + b"\n" for line in lines))  # all queued at once, as the add-on sends
        engine.p.stdin.flush()
        answers = {}
        while len(answers) < len(lines):
            message = json.loads(engine.p.stdout.readline() or b'{"id": "engine exited"}')
            assert message.get("id") != "engine exited"
            if "event" not in message:
                answers[message["id"]] = message
        assert answers["good1"]["ok"] and answers["good2"]["ok"]
        for k, (i, o, code) in bad.items():
            named = str(o if code == "bad_output" else i)
            assert answers[k]["error"]["code"] == code and _shown(named) in answers[k]["error"]["message"]
        assert answers[None]["error"]["code"] == "bad_json"
        assert engine.ask(b'{"id": "bye", "op": "shutdown"}')["ok"]
        assert engine.p.wait(60) == 0
    finally:
        if engine.p.poll() is None:
            engine.p.kill()
    assert read_image(tmp_path / "good1.png").size == read_image(tmp_path / "good2.png").size == (48, 40)


# pipelined (issue 26) -------------------------------------------------------------------------------------------
class SlowPassthrough(Passthrough):
    batch_size = 2

    def run_model(self, images):
        time.sleep(0.05)
        return super().run_model(images)


def test_a_pipelined_service_answers_each_request_after_all_its_frames_and_a_cancel_after_those_in_flight(tmp_path):
    """Workers read and write while the model runs; a request's answer comes after every progress line of it, and
    a request cancelled with frames in flight is answered once they are back, never before."""
    from engine.service import Service

    src = [_image(tmp_path / f"in{k}.png", seed=k) for k in range(12)]
    out = io.BytesIO()
    service = Service(SlowPassthrough(), out, workers=3)
    items = lambda name: [{"input": str(p), "output": str(tmp_path / name / p.name)} for p in src]  # noqa: E731
    for request_id in ("a", "b"):
        service.handle_line(json.dumps({"id": request_id, "op": "restore", "items": items(request_id)}).encode())
    worker = threading.Thread(target=service.work_loop)
    worker.start()
    while not any(json.loads(line).get("id") == "b" for line in out.getvalue().splitlines()):
        time.sleep(0.01)
    service.handle_line(b'{"id": "c", "op": "cancel", "target": "b"}')
    with service.cond:
        service.closing = True
        service.cond.notify_all()
    worker.join(30)
    assert not worker.is_alive()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    for request_id in ("a", "b"):
        mine = [x for x in lines if x.get("id") == request_id]
        final = [k for k, x in enumerate(mine) if "ok" in x]
        assert final == [len(mine) - 1], f"{request_id}: one answer, after all its progress"
    a = [x for x in lines if x.get("id") == "a" and "ok" in x][0]
    assert a["ok"] and a["result"]["restored"] == 12
    b = [x for x in lines if x.get("id") == "b" and "ok" in x][0]
    assert b["error"]["code"] == "cancelled" and 0 < b["result"]["restored"] < 12
    assert b["result"]["restored"] + b["result"]["cancelled"] == 12
    assert len(list((tmp_path / "b").iterdir())) == b["result"]["restored"]  # written = reported restored
