"""`python -m engine bench-pipeline`: how close the pipelined frame path gets to its slowest stage.

A folder of PNG frames (bundled faces drifting and zooming by sub-pixel steps, engine/benches/moving.py) is restored
end to end, pipelined and serially, in one process with one model. Then each stage runs alone over the same frames,
the way the pipeline runs it: decode, faces, paste and encode on the worker pool (the faces' tracking in order within
the sequence), the model on the calling thread in groups of the batch size, fusion in order. Its rate alone is
what that stage could sustain if everything else were free, so

    efficiency = end-to-end frames/s / the slowest stage's frames/s

is 1 when the pipeline hides every stage behind the slowest. Where all stages share the same few cores (this
project's 2-core CPU, model included) no pipeline can reach that: `shared_bound` is the rate if the stages' work
added up with nothing lost, 1 / sum(1 / rate), printed beside it.

The frames are one animation, so faces are tracked between frames (--detect-every); with --temporal they are also
fused. The tracking section compares tracking with detecting every frame unsmoothed (the old way): flicker of the
restored frames, crop jitter and the face stage's ms per frame.
"""
from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path




def _frames_folder(folder: Path, width: int, height: int, frames: int, faces: int) -> list[Path]:
    from ..images import Frame, write_image
    from .moving import moving_faces

    folder.mkdir(parents=True)
    paths = []
    for k, rgb in enumerate(moving_faces(width, height, frames, max(faces, 1))):
        paths.append(folder / f"frame_{k:04d}.png")
        write_image(paths[-1], Frame(rgb, None, 8, "PNG", False, None), rgb)
    return paths


def _items(paths: list[Path], out: Path, faces: int, sequence: str = "bench") -> list:
    """One animation: numbered as a sequence, so faces are tracked (and fused when fusion is on)."""
    from ..jobs import Item

    return [Item(p, out / p.name, "auto" if faces else "off", sequence=sequence, index=k)
            for k, p in enumerate(paths)]


def _end_to_end(pipeline, paths, out: Path, faces: int, temporal: bool, workers: int) -> float:
    """Frames per second of restoring the folder into `out` (fresh per run)."""
    from ..pipeline.run import restore_items
    from ..temporal.sequences import Sequences

    started = time.perf_counter()
    outcomes = restore_items(pipeline, _items(paths, out, faces), overwrite=True,
                             temporal=Sequences() if temporal else None, workers=workers)
    took = time.perf_counter() - started
    failed = [o.reason for o in outcomes if o.status != "restored"]
    if failed:
        raise RuntimeError(f"bench-pipeline: {len(failed)} frames failed; first: {failed[0]}")
    return len(paths) / took


def _rate(fn, items, pool=None) -> float:
    """Frames per second of fn over items, on the pool (in any order) or in order on this thread. Results are dropped
    as they come, as the pipeline drops a frame once written: holding all of them would time the allocator."""
    started = time.perf_counter()
    for _ in pool.map(fn, items) if pool else map(fn, items):
        pass
    return len(items) / (time.perf_counter() - started)


def stage_rates(pipeline, paths: list[Path], out: Path, faces: int, temporal: bool, workers: int) -> dict:
    """Each stage alone over the frames, as the pipelined path runs it (see the module's docstring). A stage's inputs
    are made beforehand, untimed."""
    from ..images import read_image, write_image
    from ..pipeline import steps
    from ..pipeline.steps import FrameState
    from ..temporal.sequences import Sequences

    rates = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        rates["decode"] = _rate(read_image, paths, pool)
        frames = list(pool.map(read_image, paths))
        sequence = f"stages-{time.perf_counter()}"  # tracked afresh from its first frame
        states = [FrameState(item, frames[k]) for k, item in enumerate(_items(paths, out, faces, sequence))]
        rates["faces"] = _rate(lambda k: steps.prepare(pipeline, states[k], states[k - 1] if k else None),
                               range(len(states)), pool)  # tracking in order, the rest on the pool
        prepared = [s.prepared for s in states]
        batch = pipeline.batch_size
        groups = [prepared[k:k + batch] for k in range(0, len(prepared), batch)]
        outputs = []
        rates["model"] = _rate(lambda group: outputs.extend(pipeline.run_model(group)), groups) * len(prepared) \
            / len(groups)
        rates["paste"] = _rate(lambda k: pipeline.finish(prepared[k], outputs[k]) and None, range(len(frames)), pool)
        restored = [r.rgb for r in pool.map(pipeline.finish, prepared, outputs)]
        if temporal:
            fusion = Sequences()
            rates["fuse"] = _rate(lambda k: fusion.fuse("stages", k, frames[k].rgb, restored[k]), range(len(frames)))
        rates["encode"] = _rate(lambda k: write_image(out / paths[k].name, frames[k], restored[k],
                                                      pipeline.provenance), range(len(frames)), pool)
    return rates


def tracking(pipeline, paths: list[Path], out: Path, faces: int, temporal: bool, workers: int,
             detect_every: int) -> dict:
    """Tracked (the run's setting) against detecting every frame unsmoothed: flicker of the restored frames against
    the input's own, the face stage's ms per frame, and crop jitter of the largest face."""
    from ..faces.restore import Timings
    from ..faces.track import UNSMOOTHED, FaceTracker
    from ..images import read_image
    from ..temporal.flicker import measure_many
    from .moving import tracking_bench

    report = {}
    for name, tracker in (("detect_every_frame", FaceTracker(1, smoothing=UNSMOOTHED)),
                          ("tracked", FaceTracker(detect_every))):
        pipeline.tracker, pipeline.timings = tracker, Timings()
        _end_to_end(pipeline, paths, out / name, faces, temporal, workers)
        t = pipeline.timings
        report[name] = {"faces_ms": (t.detect + t.align) / max(1, t.frames) * 1000,
                        "detections": tracker.detections, "tracked": tracker.tracked}
    def frames(folder: Path):
        return (read_image(folder / p.name).rgb for p in paths)
    flicker = measure_many({name: frames(out / name) for name in report}, (read_image(p).rgb for p in paths))
    for name, r in flicker.items():
        report[name]["flicker"] = r.mean
        report["input_flicker"] = r.reference_mean
    pipeline.tracker = FaceTracker(detect_every)
    with pipeline.detection() as detector:
        height, width = read_image(paths[0]).rgb.shape[:2]
        jitter = tracking_bench(detector, width, height, len(paths), faces, detect_every)
    for name, key in (("detect_every_frame", "detect"), ("tracked", "track")):
        report[name]["jitter"] = jitter[key].get("jitter")
    return report


def _runner(a):
    """The run's ModelRunner: the weights given, or SD-Turbo-size random weights (a GPU machine without the hub)."""
    from ..runtime import ModelRunner

    options = {"device": a.device, "dtype": a.dtype, "batch_size": a.batch_size, "compile": a.compile}
    if a.weights:
        return ModelRunner.from_pretrained(a.weights, a.base, a.accept_license, **options)
    from ..runtime import pick_device
    from .speed import build_models, merged

    model, _ = build_models(None, a.base, "sd-turbo", pick_device(a.device))
    return ModelRunner(merged(model), **options)


def run(a, width: int, height: int) -> dict:
    from ..faces.restore import FramePipeline
    from ..pipeline.run import default_workers

    workers = default_workers() if a.workers is None else a.workers
    runner = _runner(a)
    runner.forward.wait()  # compiled before anything is timed (frames are served eagerly until then)
    with tempfile.TemporaryDirectory() as tmp, \
            closing(FramePipeline(runner, a.min_face, detect_every=a.detect_every)) as pipeline:
        tmp = Path(tmp)
        paths = _frames_folder(tmp / "in", width, height, a.frames, a.faces)
        # warm: face graphs built, model shapes seen (and compiled, before anything is timed)
        _end_to_end(pipeline, paths[:2 * a.batch_size], tmp / "warm", a.faces, a.temporal, workers)
        runner.forward.wait()
        pipelined = _end_to_end(pipeline, paths, tmp / "pipelined", a.faces, a.temporal, workers)
        serial = _end_to_end(pipeline, paths, tmp / "serial", a.faces, a.temporal, 0)
        (tmp / "stages").mkdir()
        rates = stage_rates(pipeline, paths, tmp / "stages", a.faces, a.temporal, workers)
        slowest = min(rates, key=rates.get)
        report = {"size": [width, height], "frames": a.frames, "faces": a.faces, "temporal": a.temporal,
                  "workers": workers, "batch_size": a.batch_size, "device": str(runner.device),
                  "model": str(a.weights or "random weights, SD-Turbo size"), "end_to_end_fps": pipelined,
                  "serial_fps": serial, "speedup": pipelined / serial, "stages": rates, "slowest": slowest,
                  "efficiency": pipelined / rates[slowest],
                  "shared_bound_fps": 1 / sum(1 / r for r in rates.values())}
        if a.faces:
            report["tracking"] = tracking(pipeline, paths, tmp / "tracking", a.faces, a.temporal, workers,
                                          a.detect_every)
    return report


def print_table(r: dict) -> None:
    w, h = r["size"]
    print(f"{r['frames']} frames {w}x{h}, {r['faces']} moving face(s){', temporal' if r['temporal'] else ''}, "
          f"model {r['model']} on {r['device']}, batch {r['batch_size']}, {r['workers']} workers")
    print(f"{'stage alone':<22}{'frames/s':>10}{'ms/frame':>10}")
    for stage, rate in r["stages"].items():
        print(f"{stage:<22}{rate:>10.1f}{1000 / rate:>10.1f}{'   <- slowest' if stage == r['slowest'] else ''}")
    print(f"{'serial end to end':<22}{r['serial_fps']:>10.1f}{1000 / r['serial_fps']:>10.1f}")
    print(f"{'pipelined end to end':<22}{r['end_to_end_fps']:>10.1f}{1000 / r['end_to_end_fps']:>10.1f}"
          f"   ({r['speedup']:.2f}x serial)")
    print(f"pipeline efficiency {r['efficiency']:.2f} (end to end / slowest stage); stages sharing the same cores "
          f"could reach at most {r['shared_bound_fps']:.1f} frames/s, "
          f"{r['end_to_end_fps'] / r['shared_bound_fps']:.2f} of it reached")
    t = r.get("tracking")
    if t:
        print(f"faces tracked vs detected every frame (flicker: warping error in 8-bit levels, input's own "
              f"{t['input_flicker']:.2f})")
        print(f"{'':<22}{'flicker':>9}{'faces ms':>10}{'jitter px':>11}{'detections':>12}")
        for name in ("detect_every_frame", "tracked"):
            x = t[name]
            jitter = f"{x['jitter']['centre_px']:.2f}" if x.get("jitter") else "-"
            print(f"{name:<22}{x['flicker']:>9.2f}{x['faces_ms']:>10.1f}{jitter:>11}{x['detections']:>12}")
