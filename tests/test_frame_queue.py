"""The add-on's bpy-free logic: where restored frames go, which file Blender wrote, folder batches, reports."""
import os
import time
from pathlib import Path

import pytest

from blender_addon.engine_link.client import EngineDied, EngineSettings, find_venv_python
from blender_addon.folder_restore import folder_items, sequence_items
from blender_addon.frame_queue import FrameQueue, QueueReport
from blender_addon.output_paths import check_restored_folder, newest_existing, restored_path


def test_restored_frames_go_to_a_sibling_folder_or_in_place():
    frame = Path("renders") / "shot_0007.png"
    assert restored_path(frame) == Path("renders") / "restored" / "shot_0007.png"
    assert restored_path(frame, in_place=True) == frame
    assert restored_path(frame, folder="fixed") == Path("renders") / "fixed" / "shot_0007.png"
    assert restored_path(frame, folder="a/../fixed\\x") == Path("renders") / "fixed" / "x" / "shot_0007.png"


@pytest.mark.parametrize("folder, problem", [
    ("", "is empty"), ("   ", "is empty"), (".", "output folder itself"), ("a/..", "output folder itself"),
    ("/tmp/restored", "absolute"), ("//restored", "absolute"), ("C:\\restored", "absolute"),
    ("\\\\server\\share", "absolute"), ("..", "'..'"), ("../restored", "'..'"), ("a/../../b", "'..'"),
    ("a\\..\\..\\b", "'..'"),
])
def test_a_folder_that_would_overwrite_or_escape_the_renders_is_refused(folder, problem):
    with pytest.raises(ValueError, match="Folder setting") as e:
        check_restored_folder(folder)
    assert problem in str(e.value)
    with pytest.raises(ValueError):
        restored_path(Path("renders") / "f.png", folder=folder)


class _Request:
    def __init__(self, dies: bool):
        self.dies, self.done, self.decided = dies, True, []


class _Recorder:
    """A stand-in engine client that records what it is asked to do; the first `dying` requests are lost to a
    crash."""
    alive = True

    def __init__(self, dying: int = 0):
        self.calls = []
        self.dying = dying

    @property
    def sent(self) -> list[dict]:
        return [options for _, options in self.calls]

    def restore(self, items, **options):
        self.calls.append((items, options))
        self.dying -= 1
        return _Request(self.dying >= 0)

    def wait(self, request):
        if request.dies:
            raise EngineDied("killed")
        return {"items": []}

    def check_hung(self):
        pass


class _Manager:
    starting = False

    def __init__(self):
        self.client = _Recorder()

    def client_for(self, settings):
        return self.client


def test_frames_are_replaced_only_when_in_place_is_on(tmp_path):
    frame = tmp_path / "f_0001.png"
    for in_place, expected in ((False, tmp_path / "restored" / frame.name), (True, frame)):
        manager = _Manager()
        FrameQueue(manager, EngineSettings("py", "w"), in_place=in_place).submit(frame)
        [([(src, dst)], options)] = manager.client.calls
        assert (Path(dst), options["in_place"]) == (expected, in_place)
    with pytest.raises(ValueError, match="is empty"):
        FrameQueue(_Manager(), EngineSettings("py", "w"), folder="")
    FrameQueue(_Manager(), EngineSettings("py", "w"), in_place=True, folder="")  # unused in place: no complaint


def test_the_newest_candidate_is_the_written_frame(tmp_path):
    old, new = tmp_path / "x.png", tmp_path / "x0001.png"
    old.write_bytes(b"a")
    time.sleep(0.01)
    new.write_bytes(b"b")
    assert newest_existing([old, new, tmp_path / "missing.png"]) == new
    assert newest_existing([tmp_path / "missing.png"]) is None


def test_folder_items_skip_the_output_folder_and_non_images(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    (tmp_path / "restored").mkdir()
    (tmp_path / "restored" / "a.png").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jpg").write_bytes(b"")
    assert folder_items(tmp_path, None) == [(tmp_path / "a.png", tmp_path / "restored" / "a.png")]
    assert [o for _, o in folder_items(tmp_path, None, recursive=True)] == [
        tmp_path / "restored" / "a.png", tmp_path / "restored" / "sub" / "b.jpg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        folder_items(tmp_path / "empty", None)
    with pytest.raises(ValueError, match="does not exist"):
        folder_items(tmp_path / "nope", None)


def test_an_empty_input_folder_is_refused_not_taken_as_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    for empty in ("", "  "):
        with pytest.raises(ValueError, match="no input folder"):
            folder_items(empty, None)


def test_report_names_the_first_failure():
    r = QueueReport(restored=["a", "b"], failed=[("/r/f_0003.png", "corrupt")], restarts=1)
    assert r.summary() == ("Splat Restore: 2 restored, 1 failed (engine restarted 1x). "
                           "First failure: f_0003.png: corrupt")


def test_venv_interpreters_are_found_on_every_platform(tmp_path):
    win = tmp_path / "win" / ".venv" / "Scripts" / "python.exe"
    posix = tmp_path / "posix" / ".venv" / "bin" / "python"
    for p in (win, posix):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"")
    assert find_venv_python(tmp_path / "win") == win
    assert find_venv_python(tmp_path / "posix") == posix
    assert find_venv_python(tmp_path) is None


def test_engine_command_uses_the_given_interpreter():
    s = EngineSettings(python=os.path.join("C:\\", "venv", "Scripts", "python.exe"), weights="w.safetensors",
                       base="stabilityai/sd-turbo", device="cuda")
    cmd = s.command()
    assert cmd[:4] == [s.python, "-m", "engine", "serve"] and cmd[-2:] == ["--base", "stabilityai/sd-turbo"]


def test_the_farm_exit_code_can_be_set_per_scene_or_by_environment():
    from blender_addon.exit_status import fail_on_errors

    assert fail_on_errors(True, {}) and not fail_on_errors(False, {})
    assert not fail_on_errors(True, {"SPLAT_RESTORE_FAIL_ON_ERRORS": "0"})
    assert fail_on_errors(False, {"SPLAT_RESTORE_FAIL_ON_ERRORS": "1"})


@pytest.mark.parametrize("recorded, code", [(True, 1), (False, 0)])
def test_a_recorded_failure_makes_the_process_exit_non_zero_at_the_end(recorded, code):
    import subprocess
    import sys

    script = ("import atexit, sys; from blender_addon.exit_status import FAILURES\n"
              + ("FAILURES.record('Splat Restore: 0 restored, 3 failed')\n" if recorded else "")
              + "print('rendered', flush=True)\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == code and "rendered" in r.stdout
    assert ("3 failed" in r.stderr and "SPLAT_RESTORE_FAIL_ON_ERRORS=0" in r.stderr) == recorded


def test_the_device_menu_lists_gpus_with_memory_and_keeps_the_saved_choice():
    from blender_addon.devices import describe, menu

    listed = describe([{"id": "cpu", "name": "CPU (2 threads)"},
                       {"id": "cuda:0", "name": "NVIDIA H100", "memory": 80 * 2 ** 30, "free": 79.5 * 2 ** 30}])
    assert ("cuda:0", "cuda:0: NVIDIA H100 (80.0 GiB, 79.5 GiB free)", "NVIDIA H100") in listed
    assert [i[0] for i in menu(listed, "cuda:0")] == ["auto", "cpu", "cuda:0"]
    assert [i[0] for i in menu([], "auto")] == ["auto", "cpu"]  # background, before any Refresh
    assert [i[0] for i in menu([], "cuda:1")] == ["auto", "cpu", "cuda:1"]


@pytest.mark.parametrize("temporal", [True, False])
def test_an_animation_render_sends_its_frames_numbered_in_one_sequence(tmp_path, temporal):
    manager = _Manager()
    queue = FrameQueue(manager, EngineSettings(python="py", weights="w"), temporal=temporal)
    for k in range(3):
        queue.submit(tmp_path / f"f_{k}.png")
    sent = manager.client.sent
    if temporal:
        assert [o["index"] for o in sent] == [0, 1, 2] and len({o["sequence"] for o in sent}) == 1
        assert FrameQueue(manager, EngineSettings(python="py", weights="w"), temporal=True).sequence != \
            queue.sequence  # every render is its own sequence
    else:
        assert not any("sequence" in o or "index" in o for o in sent)


def test_a_folder_of_frames_is_sent_as_one_sequence_per_folder_in_natural_order(tmp_path):
    names = ["f_10.png", "f_2.png", "f_1.png"]
    items = [(tmp_path / n, tmp_path / "out" / n) for n in names] + [(tmp_path / "b" / "x.png", tmp_path / "o.png")]
    sent = sequence_items(items)
    assert [Path(i["input"]).name for i in sent] == ["f_1.png", "f_2.png", "f_10.png", "x.png"]
    assert [i["index"] for i in sent] == [0, 1, 2, 0]
    assert sent[0]["sequence"] == sent[2]["sequence"] != sent[3]["sequence"]


def test_frames_resent_after_a_crash_start_a_new_sequence(tmp_path):
    manager = _Manager()
    manager.client.dying = 2  # the first two frames are lost, the third was restored before the crash was seen
    queue = FrameQueue(manager, EngineSettings(python="py", weights="w"), temporal=True)
    for k in range(3):
        queue.submit(tmp_path / f"f_{k}.png")
    report = queue.drain()
    first, resent = manager.client.sent[:3], manager.client.sent[3:]
    assert len(report.restored) == 3 and len(resent) == 2
    assert [o["index"] for o in resent] == [0, 1] and resent[0]["sequence"] != first[0]["sequence"]


def test_a_frame_that_cannot_be_found_keeps_the_frames_around_it_from_being_fused(tmp_path):
    manager = _Manager()
    queue = FrameQueue(manager, EngineSettings(python="py", weights="w"), temporal=True)
    queue.submit(tmp_path / "f_1.png")
    queue.record_missing(str(tmp_path / "f_2.png"), "cannot find the frame Blender just wrote")
    queue.submit(tmp_path / "f_3.png")
    # the engine fuses a frame with the last one only when its index follows that one's (engine/temporal/sequences)
    assert [o["index"] for o in manager.client.sent] == [0, 2]
    assert queue.report.failed == [(str(tmp_path / "f_2.png"), "cannot find the frame Blender just wrote")]
