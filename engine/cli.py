"""`python -m engine ...`: restore, serve, info, bench, bench-protocol, bench-faces, fetch, import-pix2pix-turbo.

Exit codes: 0 all done, 1 something failed (each failure is named on stderr), 2 usage errors.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import closing
from pathlib import Path

from blender_addon.engine_link.licenses import ACCEPT_ENV, ACCEPT_FLAG, LicenseNotAccepted
from blender_addon.engine_link.protocol import FACE_MODES

from . import __version__
from .weights.base import DEFAULT_BASE, BaseModelError
from .weights.checkpoint import CheckpointError
from .jobs import UsageError

WEIGHTS_HELP = ("a Splat Restore checkpoint (.safetensors), or weights in Difix's published layout: a folder, or "
                "the hub id nvidia/difix from the HF cache (`python -m engine fetch nvidia/difix`)")


def _add_license_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(ACCEPT_FLAG, dest="accept_license", action="store_true",
                   help=f"accept the licence of third-party weights (NVIDIA Difix: non-commercial use only); "
                        f"{ACCEPT_ENV}=1 does the same")


def _min_face(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of pixels") from None
    if value < 8:  # below this the tile scan would run thousands of detector calls per frame for no usable face
        raise argparse.ArgumentTypeError("must be at least 8 pixels")
    return value


def _shard(text: str) -> tuple[int, int]:
    from .shards import parse_shard

    try:
        return parse_shard(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help=WEIGHTS_HELP)
    _add_license_arg(p)
    p.add_argument("--base", default=None,
                   help=f"base model: diffusers folder or hub id (default: the one named in the weights, "
                        f"normally {DEFAULT_BASE})")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"],
                   help="auto: fp16 on GPUs, fp32 on CPU")
    p.add_argument("--batch-size", type=int, default=1, help="frames (or tiles) per model call")
    p.add_argument("--compile", choices=["auto", "off", "on"], default="auto",
                   help="torch.compile the model in the background (auto: on CUDA only); frames run eagerly until "
                        "the compiled code for their shape is ready")
    p.add_argument("--compile-cache", default=None, metavar="DIR",
                   help="where compiled kernels are kept between runs (default: $TORCHINDUCTOR_CACHE_DIR, else "
                        "splat-restore/compile in the user's cache folder)")
    p.add_argument("--min-face", type=_min_face, default=72,
                   help="smallest face side in pixels that face-aware restore looks for (smaller: slower search)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m engine", description="Splat Restore engine")
    ap.add_argument("--version", action="version", version=f"splat-restore {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("restore", help="restore image files or folders into OUTDIR (same names)")
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    p.add_argument("-o", "--output", required=True, help="output folder")
    _add_runtime_args(p)
    p.add_argument("--tile", type=int, default=None,
                   help="tile size for frames larger than it (default: the model's size, 512 for SD-Turbo)")
    p.add_argument("--recursive", action="store_true", help="descend into subfolders of input folders")
    p.add_argument("--faces", choices=list(FACE_MODES), default="auto",
                   help="auto: in frames larger than the model, restore each face and leave the rest untouched "
                        "(smaller frames are restored whole); off: the whole frame, tiled; only-crops: write each "
                        "restored face crop as NAME_face<k> instead of the frame")
    p.add_argument("--shard", type=_shard, default=None, metavar="K/N",
                   help="restore only the K-th of N equal runs of the inputs (K from 0), e.g. one per farm node; "
                        "under accelerate launch or torchrun RANK/WORLD_SIZE pick it")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--skip-existing", action="store_true", help="leave outputs that already exist alone")
    g.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")

    p = sub.add_parser("serve", help="keep the restorer loaded and answer JSON lines on stdin/stdout "
                                      "(faces mode per request)")
    _add_runtime_args(p)
    p.add_argument("--tile", type=int, default=None, help="tile size for frames larger than it")

    p = sub.add_parser("info", help="describe a checkpoint, the full-size architecture or the devices here")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--arch", help="count parameters of a shipped architecture without weights (sd-turbo)")
    src.add_argument("--weights", help="show the recipe and licence of a checkpoint, Difix folder or nvidia/difix")
    src.add_argument("--devices", action="store_true", help="list the devices --device takes, with GPU memory")
    p.add_argument("--vae-lora-scope", choices=["encoder+decoder", "decoder"], default="encoder+decoder",
                   help="VAE LoRA on encoder and decoder (the recipe) or the decoder only")
    p.add_argument("--rank-unet", type=int, default=16)
    p.add_argument("--rank-vae", type=int, default=8)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("bench", help="reference recipe vs the engine's fast path, same process, same inputs")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    src.add_argument("--random-weights", action="store_true", help="random weights at full size (the default)")
    _add_license_arg(p)
    p.add_argument("--arch", default="sd-turbo")
    p.add_argument("--base", default=None, help="a diffusers folder instead of --arch (random LoRA on it)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", default="1,4,8", help="comma-separated batch sizes; 'auto' picks from free memory")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"])
    p.add_argument("--compile", choices=["auto", "off", "on"], default="auto")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("bench-protocol", help="time the stdio service's overhead per frame against in-process")
    p.add_argument("--weights", required=True)
    p.add_argument("--base", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("bench-faces", help="face-aware restore's cost per frame, stage by stage")
    p.add_argument("--weights", default=None, help="time this model too (default: the identity, pipeline only)")
    p.add_argument("--base", default=None)
    p.add_argument("--size", default="1920x1080", help="frame size WxH")
    p.add_argument("--faces", type=int, default=1, help="bundled face photos placed in the frame")
    p.add_argument("--min-face", type=_min_face, default=72)
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("fetch", help="download a base model into the Hugging Face cache")
    p.add_argument("base", nargs="?", default=DEFAULT_BASE)

    p = sub.add_parser("import-pix2pix-turbo", help="convert an img2img-turbo .pkl into a Splat Restore checkpoint")
    p.add_argument("pkl")
    p.add_argument("--base", default=DEFAULT_BASE)
    p.add_argument("--prompt", required=True, help="the prompt the model was trained with")
    p.add_argument("-o", "--output", required=True)
    return ap


def cmd_restore(a) -> int:
    from tqdm import tqdm

    from .faces.restore import FrameRestorer
    from .jobs import collect_items, restore_items
    from .weights.loading import check_license
    from .runtime import Restorer, warn_if_gpu_unused
    from .shards import rank_device, shard_from_env, take_shard

    check_license(a.weights, a.accept_license)  # before anything is loaded or written
    items = collect_items(a.inputs, a.output, a.recursive)
    for item in items:
        item.faces, item.overwrite = a.faces, a.overwrite
    if not items:
        raise UsageError(f"no images found in {', '.join(a.inputs)}"
                         + ("" if a.recursive else " (subfolders need --recursive)"))
    shard = a.shard or shard_from_env(os.environ)
    if shard:
        total, items = len(items), take_shard(items, *shard)
        print(f"shard {shard[0]}/{shard[1]}: {len(items)} of {total} frames", file=sys.stderr)
        if not items:
            return 0
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
    restorer = Restorer.from_pretrained(a.weights, a.base, a.accept_license, device=device, dtype=a.dtype,
                                        batch_size=a.batch_size, tile=a.tile, compile=a.compile,
                                        compile_cache=a.compile_cache)
    warn_if_gpu_unused(a.device, restorer.device)
    frames = FrameRestorer(restorer, a.min_face)
    missing = _faces_missing(frames, items, a.faces)
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 1
    loaded = time.perf_counter()
    counts = {"restored": 0, "skipped": 0, "failed": 0}
    faces = no_face = 0
    with tqdm(total=len(items), unit="frame", file=sys.stderr, dynamic_ncols=True) as bar, closing(frames):
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
        restore_items(frames, items, a.skip_existing, a.overwrite, on_outcome=on_outcome)
    took = time.perf_counter() - loaded
    per = took / counts["restored"] if counts["restored"] else 0.0
    found = f", {faces} faces ({no_face} frames without one)" if faces or no_face else ""
    print(f"restored {counts['restored']}, skipped {counts['skipped']}, failed {counts['failed']}{found} -> {outdir} "
          f"({took:.1f} s, {per * 1000:.0f} ms/frame, model load {loaded - started:.1f} s on {restorer.device})")
    return 1 if counts["failed"] else 0


def _faces_missing(frames, items: list, mode: str) -> str | None:
    """Once, before any frame: why frames of this run that need face detection cannot have it, or None."""
    from .faces.detect import faces_unavailable
    from .images import header_size

    if mode == "off":
        return None
    needing = [it.input for it in items if frames.needs_faces(header_size(it.input), mode)]
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
    from .weights.base import fetch_base

    folder = fetch_base(a.base)
    print(f"{a.base} -> {folder}")
    from .weights.loading import read_recipe
    from blender_addon.engine_link.licenses import license_by_id

    try:
        lic = license_by_id(read_recipe(folder).license)
    except (BaseModelError, CheckpointError):  # a base model, not weights: nothing to accept
        lic = None
    if lic:
        print(f"these weights are under the {lic.describe()}; restoring with them needs {ACCEPT_FLAG}")
    return 0


def cmd_import(a) -> int:
    from .weights.pix2pix_import import import_pix2pix_turbo

    print(json.dumps(import_pix2pix_turbo(a.pkl, a.output, a.base, a.prompt)))
    return 0


def cmd_bench(a) -> int:
    from .benches.speed import bench, print_report

    batches = [b if b == "auto" else int(b) for b in a.batch.split(",")]
    if a.weights:
        from .weights.loading import check_license

        check_license(a.weights, a.accept_license)
    r = bench(a.weights, a.base, a.arch, a.size, batches, a.device, a.dtype, a.compile, a.repeats, a.accept_license)
    print(json.dumps(r)) if a.json else print_report(r)
    return 0


def cmd_bench_protocol(a) -> int:
    from .benches.protocol import print_table, run

    r = run(a.weights, a.base, a.frames, a.size, a.device)
    print(json.dumps(r)) if a.json else print_table(r)
    return 0


def cmd_bench_faces(a) -> int:
    from .benches.faces import print_table, run

    try:
        width, height = (int(v) for v in a.size.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size must be WIDTHxHEIGHT, e.g. 1920x1080; got {a.size!r}") from None
    if a.faces < 1 or a.repeats < 1:
        raise UsageError("--faces and --repeats must be at least 1")
    r = run(a.weights, a.base, width, height, a.faces, a.repeats, a.device, a.min_face)
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


COMMANDS = {"restore": cmd_restore, "serve": cmd_serve, "info": cmd_info, "bench": cmd_bench,
            "bench-protocol": cmd_bench_protocol, "bench-faces": cmd_bench_faces, "fetch": cmd_fetch,
            "import-pix2pix-turbo": cmd_import}


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
