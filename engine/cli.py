"""`python -m engine ...`: the commands (restore, serve, demo, info, bench, bench-protocol, bench-faces, fetch,
import-pix2pix-turbo, import-photos, flicker, bench-temporal, bench-pipeline); their arguments are in arguments.py.

Exit codes: 0 all done, 1 something failed (each failure is named on stderr), 2 usage errors.
"""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import closing
from pathlib import Path

from blender_addon.engine_link.licenses import LicenseNotAccepted

from .arguments import build_parser
from .weights.base import BaseModelError
from .weights.checkpoint import CheckpointError
from .jobs import UsageError


def cmd_restore(a) -> int:
    from tqdm import tqdm

    from .faces.restore import FramePipeline
    from .jobs import collect_items
    from .pipeline.run import default_workers, restore_items
    from .weights.loading import check_license
    from .runtime import ModelRunner, warn_if_gpu_unused
    from .shards import rank_device, shard_from_env, shard_start, take_shard

    info = check_license(a.weights, a.accept_license)  # before anything is loaded or written
    reference = _load_reference(a.reference, info.restorer.views, a.weights)
    items = collect_items(a.inputs, a.output, a.recursive)
    for item in items:
        item.faces, item.overwrite = a.faces, a.overwrite
    temporal = None
    if a.temporal:
        from .temporal.sequences import Sequences, number_sequences, preroll

        items, temporal = number_sequences(items), Sequences()
    if not items:
        raise UsageError(f"no images found in {', '.join(a.inputs)}"
                         + ("" if a.recursive else " (subfolders need --recursive)"))
    shard = a.shard or shard_from_env(os.environ)
    if shard:
        every, items = items, take_shard(items, *shard)
        before = preroll(every, shard_start(len(every), *shard), temporal.memory) if temporal and items else []
        print(f"shard {shard[0]}/{shard[1]}: {len(items)} of {len(every)} frames"
              + (f", after the {len(before)} before them for --temporal's fusion (restored, not written)"
                 if before else ""), file=sys.stderr)
        if not items:
            return 0
        items = before + items
    outdir = Path(a.output)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: output folder {outdir} cannot be created: {e.strerror or e}", file=sys.stderr)
        return 1
    if a.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    started = time.perf_counter()
    import torch

    device = rank_device(a.device, os.environ, torch.cuda.is_available())
    restorer = ModelRunner.from_pretrained(a.weights, a.base, a.accept_license, device=device, dtype=a.dtype,
                                        batch_size=a.batch_size, tile=a.tile, compile=a.compile,
                                        compile_cache=a.compile_cache)
    warn_if_gpu_unused(a.device, restorer.device)
    pipeline = FramePipeline(restorer, a.min_face, detect_every=a.detect_every)
    workers = default_workers() if a.workers is None else a.workers
    missing = _faces_missing(pipeline, items, a.faces)
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 1
    if reference is not None:
        from .images import header_size

        pipeline.set_reference(reference)  # its face, when frames will be cut into faces, is found now, once
        pipeline.check_reference(any(pipeline.needs_faces(header_size(it.input), a.faces) for it in items))
    loaded = time.perf_counter()
    counts = {"restored": 0, "skipped": 0, "failed": 0}
    faces = no_face = 0
    own = sum(not it.preroll for it in items)
    with tqdm(total=own, unit="frame", file=sys.stderr, dynamic_ncols=True) as bar, closing(pipeline):
        def on_outcome(o):
            nonlocal faces, no_face
            counts[o.status] += 1
            faces += len(o.faces)
            if o.status == "failed":
                bar.write(f"failed: {o.reason}", file=sys.stderr)
            elif o.note:
                no_face += 1
                bar.write(f"{o.item.input}: {o.note}", file=sys.stderr)
            bar.update(1)
        restore_items(pipeline, items, a.skip_existing, a.overwrite, on_outcome=on_outcome, temporal=temporal,
                      workers=workers)
    took = time.perf_counter() - loaded
    per = took / counts["restored"] if counts["restored"] else 0.0
    found = f", {faces} faces ({no_face} frames without one)" if faces or no_face else ""
    print(f"restored {counts['restored']}, skipped {counts['skipped']}, failed {counts['failed']}{found} -> {outdir} "
          f"({took:.1f} s, {per * 1000:.0f} ms/frame, model load {loaded - started:.1f} s on {restorer.device}, "
          f"{workers} workers)")
    return 1 if counts["failed"] else 0


def _load_reference(path: str | None, views: int, weights: str):
    """The run's reference photo (faces.reference.Reference) or None; ReferenceError (exit 2) before anything loads
    when the weights cannot use it, need one and have none, or the photo cannot be read."""
    from .runtime import ReferenceError, reference_problem

    problem = reference_problem(views, path, f"the weights {weights}")
    if problem:
        raise ReferenceError(problem)
    if path is None:
        return None
    from .faces.reference import load_reference

    return load_reference(path)


def _faces_missing(pipeline, items: list, mode: str) -> str | None:
    """Once, before any frame: why frames of this run that need face detection cannot have it, or None."""
    from .faces.detect import faces_unavailable
    from .images import header_size

    if mode == "off":
        return None
    needing = [it.input for it in items if pipeline.needs_faces(header_size(it.input), mode)]
    problem = needing and faces_unavailable()  # frames no larger than the model are restored whole without it
    if not problem:
        return None
    return f"{len(needing)} of {len(items)} frames need face detection (first: {needing[0]}): {problem}"


def cmd_info(a) -> int:
    if a.devices:
        from .runtime import list_devices

        out = {"devices": list_devices()}
    elif a.arch:
        from .weights.loading import count_parameters
        from .model import LoraSpec

        out = count_parameters(a.arch, LoraSpec(rank_unet=a.rank_unet, rank_vae=a.rank_vae,
                                                vae_scope=a.vae_lora_scope))
    else:
        from dataclasses import asdict

        from blender_addon.engine_link.licenses import license_by_id
        from .weights.loading import read_recipe

        recipe = read_recipe(a.weights)
        lic = license_by_id(recipe.license)
        out = {**asdict(recipe), "license": lic.describe() if lic else None}
    print(json.dumps(out, indent=None if a.json else 2))
    return 0


def cmd_fetch(a) -> int:
    from .weights.fetch import run

    return run(a.base, a.json)


def cmd_import_photos(a) -> int:
    from .photos import UsageError as PhotoUsageError, run

    try:
        return run(a.photos, a.out, a.from_list, a.json, a.overwrite)
    except PhotoUsageError as e:
        raise UsageError(str(e)) from None


def cmd_import(a) -> int:
    from .weights.pix2pix_import import import_pix2pix_turbo

    print(json.dumps(import_pix2pix_turbo(a.pkl, a.output, a.base, a.prompt)))
    return 0


def cmd_bench(a) -> int:
    from .benches.speed import bench, print_report

    batches = [b if b == "auto" else int(b) for b in a.batch.split(",")]
    r = bench(a.weights, a.base, a.arch, a.size, batches, a.device, a.dtype, a.compile, a.repeats, a.accept_license)
    print(json.dumps(r)) if a.json else print_report(r)
    return 0


def cmd_bench_protocol(a) -> int:
    from .benches.protocol import print_table, run

    r = run(a.weights, a.base, a.frames, a.size, a.device)
    print(json.dumps(r)) if a.json else print_table(r)
    return 0


def _frame_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size must be WIDTHxHEIGHT, e.g. 1920x1080; got {text!r}") from None
    return width, height


def cmd_bench_faces(a) -> int:
    from .benches.faces import print_table, run

    width, height = _frame_size(a.size)
    if a.faces < 1 or a.repeats < 1:
        raise UsageError("--faces and --repeats must be at least 1")
    r = run(a.weights, a.base, width, height, a.faces, a.repeats, a.device, a.min_face)
    print(json.dumps(r)) if a.json else print_table(r)
    return 0


def cmd_bench_pipeline(a) -> int:
    from .benches.pipeline import print_table, run

    width, height = _frame_size(a.size)
    r = run(a, width, height)
    print(json.dumps(r)) if a.json else print_table(r)
    return 0


def cmd_flicker(a) -> int:
    from .images import ImageError
    from .temporal.flicker import measure_folders

    try:
        report = measure_folders(a.frames, a.reference)
    except ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(report.to_dict()))
        return 0
    print(f"{'frame':<32}{'error':>9}{'reference':>11}   (warping error against the frame before, 8-bit levels)")
    for name, error, ref in zip(report.names, report.frames, report.reference):
        print(f"{name:<32}{error:>9.3f}{ref:>11.3f}")
    print(f"mean {report.mean:.3f}, reference's own {report.reference_mean:.3f}, ratio {report.ratio:.2f} "
          f"(flow from {a.reference or a.frames})")
    return 0


def cmd_bench_temporal(a) -> int:
    from .temporal.bench import print_table, run

    width, height = _frame_size(a.size)
    if a.frames < 1:
        raise UsageError("--frames must be at least 1")
    r = run(a.weights, a.base, a.device, width, height, a.frames)
    print(json.dumps(r)) if a.json else print_table(r)
    return 0


def cmd_serve(a) -> int:
    from .service import serve

    code = serve(a)  # returns once its threads are joined, the face graphs closed and the last answer written
    sys.stderr.flush()
    # Nothing of ours is left to run, but C++ static destructors in native libraries (thread pools in mediapipe's
    # TFLite, torch) run at a normal exit and can std::terminate on a still-joinable thread (SIGABRT, reported in 6
    # of 20 runs under load). _exit skips them, so a clean shutdown exits with the code serve returned, every time.
    os._exit(code)


def cmd_demo(a) -> int:
    from .demo import run

    return run(a)


COMMANDS = {"restore": cmd_restore, "serve": cmd_serve, "demo": cmd_demo, "info": cmd_info, "bench": cmd_bench,
            "bench-protocol": cmd_bench_protocol, "bench-faces": cmd_bench_faces, "fetch": cmd_fetch,
            "import-pix2pix-turbo": cmd_import, "import-photos": cmd_import_photos, "flicker": cmd_flicker,
            "bench-temporal": cmd_bench_temporal, "bench-pipeline": cmd_bench_pipeline}


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return COMMANDS[a.command](a)
    except (UsageError, LicenseNotAccepted) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (BaseModelError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished outputs are complete, unfinished ones were not written", file=sys.stderr)
        return 130
