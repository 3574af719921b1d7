"""The pipelined frame path (engine/pipeline): the same bytes as the serial path, outcomes in order, bounded memory,
faults that cost one frame, and bench-pipeline's report."""
import json
import threading
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from engine.benches.moving import moving_faces
from engine.faces.restore import FramePipeline, FrameResult
from engine.images import Frame, read_image, write_image
from engine.jobs import Item
from engine.pipeline.run import FramePath, restore_items
from engine.temporal.sequences import Sequences


def _folder(folder: Path, frames: list) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, rgb in enumerate(frames):
        paths.append(folder / f"f_{k:03d}.png")
        write_image(paths[-1], Frame(rgb, None, 8, "PNG", False, None), rgb)
    return paths


def _sequence(paths, out: Path, faces: str = "auto") -> list[Item]:
    return [Item(p, out / p.name, faces, sequence="shot", index=k) for k, p in enumerate(paths)]


@pytest.fixture(scope="module")
def runner(tiny_weights):
    from engine.runtime import ModelRunner

    return ModelRunner.from_pretrained(tiny_weights, device="cpu", batch_size=2, compile="off")


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    """A moving face at 480x270 (faces mode: the tiny model is 64 px), one frame corrupt in the middle."""
    folder = tmp_path_factory.mktemp("moving")
    paths = _folder(folder, moving_faces(480, 270, 9))
    paths[5].write_bytes(paths[5].read_bytes()[:300])  # truncated: that frame fails, its sequence starts again
    return paths


def _run(runner, paths, out: Path, workers: int):
    with closing(FramePipeline(runner, min_face=32, detect_every=4)) as pipeline:
        outcomes = restore_items(pipeline, _sequence(paths, out), temporal=Sequences(), workers=workers)
        return [o.to_dict() for o in outcomes], pipeline.tracker


def test_pipelined_frames_are_byte_identical_to_serial_ones_with_tracking_and_fusion(runner, moving, tmp_path):
    serial, serial_tracker = _run(runner, moving, tmp_path / "serial", workers=0)
    pipelined, tracker = _run(runner, moving, tmp_path / "pipelined", workers=3)
    assert [o["status"] for o in serial] == ["restored"] * 5 + ["failed"] + ["restored"] * 3
    assert all(o["faces"] for o in serial if o["status"] == "restored")
    # the frames were tracked, not re-detected: at 0 and 4, at 6 after the failed frame 5, and not again
    assert serial_tracker.detections == tracker.detections == 3 and tracker.tracked == 5
    for a, b in zip(serial, pipelined):
        assert {**a, "output": None} == {**b, "output": None}
    for p in moving:
        if p.name != moving[5].name:
            assert (tmp_path / "serial" / p.name).read_bytes() == (tmp_path / "pipelined" / p.name).read_bytes()
    assert not (tmp_path / "pipelined" / moving[5].name).exists()


def test_frames_of_several_sequences_tracked_and_fused_at_once_match_serial(runner, moving, tmp_path):
    good = [p for p in moving if p != moving[5]]
    items = {}
    for workers in (0, 2):
        out = tmp_path / str(workers)
        both = _sequence(good[:4], out / "a") + _sequence(good[4:], out / "b")
        for item in both[4:]:
            item.sequence = "other"
        with closing(FramePipeline(runner, min_face=32, detect_every=3)) as pipeline:
            restore_items(pipeline, both, temporal=Sequences(), workers=workers)
        items[workers] = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.png")}
    assert len(items[0]) == 8 and items[0] == items[2]


class Recorder:
    """A pipeline double: frames pass through; it records how many are alive (prepared, not yet reported) and
    can be told to be slow or to fail at one step for one frame."""
    batch_size, provenance = 2, {}

    def __init__(self, slow_model=0.0, slow_finish=None, fail_at=None):
        self.lock, self.alive, self.most = threading.Lock(), 0, 0
        self.slow_model, self.slow_finish, self.fail_at = slow_model, slow_finish or {}, fail_at or {}
        self.tracker = None

    def prepare(self, image, mode, place=None, in_order=None):
        with self.lock:
            self.alive += 1
            self.most = max(self.most, self.alive)
        self._maybe_fail("prepare", image)
        return image

    def run_model(self, images):
        time.sleep(self.slow_model)
        for image in images:
            self._maybe_fail("model", image)
        return images

    def finish(self, image, output):
        time.sleep(self.slow_finish.get(int(image[0, 0, 0] * 255), 0.0))
        self._maybe_fail("finish", image)
        return FrameResult(output, "whole")

    def reported(self, outcome):
        with self.lock:
            self.alive -= 1

    def _maybe_fail(self, step, image):
        if self.fail_at.get(step) == int(image[0, 0, 0] * 255):
            raise KeyError(f"{step} fault")


def _numbered(folder: Path, count: int) -> list[Path]:
    return _folder(folder, [np.full((16, 16, 3), k / 255, np.float32) for k in range(count)])


def test_frames_in_flight_never_exceed_twice_the_batch_plus_the_workers(tmp_path):
    paths = _numbered(tmp_path / "in", 24)
    pipeline = Recorder(slow_model=0.02)
    outcomes = restore_items(pipeline, [Item(p, tmp_path / "out" / p.name) for p in paths],
                             on_outcome=pipeline.reported, workers=3)
    assert [o.status for o in outcomes] == ["restored"] * 24
    assert pipeline.batch_size < pipeline.most <= 2 * pipeline.batch_size + 3  # ahead of the model, and bounded
    assert FramePath(pipeline, workers=3).limit == 7


def test_outcomes_come_in_the_order_given_when_later_frames_finish_first(tmp_path):
    paths = _numbered(tmp_path / "in", 6)
    pipeline = Recorder(slow_finish={0: 0.3, 3: 0.2})
    outcomes = restore_items(pipeline, [Item(p, tmp_path / "out" / p.name) for p in paths], workers=4)
    assert [o.item.input for o in outcomes] == paths
    assert [read_image(tmp_path / "out" / p.name).rgb[0, 0, 0] for p in paths] == \
        [pytest.approx(k / 255) for k in range(6)]


@pytest.mark.parametrize("step", ["prepare", "model", "finish"])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_fault_in_one_frames_step_costs_that_frame_only(tmp_path, step, workers):
    paths = _numbered(tmp_path / "in", 5)
    pipeline = Recorder(fail_at={step: 2})
    outcomes = restore_items(pipeline, [Item(p, tmp_path / "out" / p.name) for p in paths], workers=workers)
    assert [o.status for o in outcomes] == ["restored", "restored", "failed", "restored", "restored"]
    assert outcomes[2].code == "engine_error" and f"{step} fault" in outcomes[2].reason
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in paths if p != paths[2]]


def test_face_detectors_are_made_per_concurrent_thread_kept_and_closed(runner, moving, tmp_path):
    pipeline = FramePipeline(runner, min_face=32)
    items = [Item(p, tmp_path / "out" / p.name) for p in moving if p != moving[5]]  # stills: detected at once
    restore_items(pipeline, items, workers=2)
    made = list(pipeline._made)
    assert 1 <= len(made) <= 2
    restore_items(pipeline, items, overwrite=True, workers=2)
    assert pipeline._made == made  # a second run reuses them
    pipeline.close()
    assert pipeline._made == [] and pipeline._idle == []


def test_workers_below_zero_are_a_usage_error(tiny_weights, tmp_path, capsys):
    from engine.cli import main

    with pytest.raises(SystemExit) as e:
        main(["restore", str(tmp_path), "-o", str(tmp_path / "o"), "--weights", str(tiny_weights),
              "--workers", "-1"])
    assert e.value.code == 2 and "--workers: must be at least 0" in capsys.readouterr().err


def test_bench_pipeline_reports_efficiency_end_to_end_rate_and_each_stage(tiny_weights, capsys):
    from engine.cli import main

    assert main(["bench-pipeline", "--weights", str(tiny_weights), "--device", "cpu", "--size", "480x270",
                 "--frames", "6", "--faces", "1", "--min-face", "32", "--temporal", "--workers", "2",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(r["stages"]) == {"decode", "faces", "model", "paste", "fuse", "encode"}
    assert all(rate > 0 for rate in r["stages"].values())
    assert r["efficiency"] == pytest.approx(r["end_to_end_fps"] / min(r["stages"].values()))
    assert 0 < r["shared_bound_fps"] < min(r["stages"].values())
    t = r["tracking"]
    assert t["tracked"]["detections"] < t["detect_every_frame"]["detections"] == 6
    assert t["tracked"]["jitter"]["centre_px"] >= 0 and t["tracked"]["flicker"] > 0
    assert t["tracked"]["flicker"] != t["detect_every_frame"]["flicker"]  # each measured on its own outputs


def test_timings_count_every_finished_frame_whole_or_faces(runner):
    pipeline = FramePipeline(runner, min_face=32)
    small = np.full((48, 48, 3), 0.5, np.float32)  # no larger than the model: restored whole, no detector needed
    pipeline.restore([small, small], ["auto", "off"])
    assert pipeline.timings.frames == 2 and pipeline.timings.model > 0
