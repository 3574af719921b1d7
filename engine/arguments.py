"""The engine's command line: every command and what it takes, checked by argparse before anything loads."""
from __future__ import annotations

import argparse

from blender_addon.engine_link.licenses import ACCEPT_ENV, ACCEPT_FLAG
from blender_addon.engine_link.protocol import FACE_MODES

from . import __version__
from .jobs import UsageError
from .weights.base import DEFAULT_BASE

WEIGHTS_HELP = ("a Splat Restore checkpoint (.safetensors), or weights in Difix's published layout: a folder, or "
                "the hub id nvidia/difix (or nvidia/difix_ref, which restores beside a --reference photo) from the "
                "HF cache (`python -m engine fetch nvidia/difix`)")


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


def _add_runtime_args(p: argparse.ArgumentParser, license_flag: bool = True) -> None:
    p.add_argument("--weights", required=True, help=WEIGHTS_HELP)
    if license_flag:
        _add_license_arg(p)
    p.add_argument("--base", default=None,
                   help=f"base model: diffusers folder or hub id (default: the one named in the weights, "
                        f"normally {DEFAULT_BASE}); for a fine-tune made with `training --init`: where its init "
                        f"restorer is now")
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
    p.add_argument("--tile", type=int, default=None,
                   help="tile size for frames larger than it (default: the model's size, 512 for SD-Turbo)")


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value
    return parse


def _add_frame_path_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=_count(0), default=None, metavar="N",
                   help="CPU worker threads that decode, find faces, paste, fuse and write frames while the model "
                        "runs (default: one per core; 0: every step on one thread, one frame after another). "
                        "Outputs are the same either way")
    p.add_argument("--detect-every", type=_count(1), default=12, metavar="N",
                   help="in animations (--temporal, or frames sent with a sequence), faces are tracked from the "
                        "frame before and detected afresh every N frames, or when tracking loses one (1: detect "
                        "every frame); the crop is smoothed over time either way")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m engine", description="Splat Restore engine")
    ap.add_argument("--version", action="version", version=f"splat-restore {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("restore", help="restore image files or folders into OUTDIR (same names)")
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    p.add_argument("-o", "--output", required=True, help="output folder")
    _add_runtime_args(p)
    p.add_argument("--recursive", action="store_true", help="descend into subfolders of input folders")
    p.add_argument("--reference", default=None, metavar="PHOTO",
                   help="a sharp photo of the same person, given beside every frame, for weights that take one "
                        "(nvidia/difix_ref, weights trained with --reference): the restored detail follows it. "
                        "Face-aware restore cuts its face like the frames' faces; whole and tiled frames get the "
                        "photo fitted to their size")
    p.add_argument("--faces", choices=list(FACE_MODES), default="auto",
                   help="auto: in frames larger than the model, restore each face and leave the rest untouched "
                        "(smaller frames are restored whole); off: the whole frame, tiled; only-crops: write each "
                        "restored face crop as NAME_face<k> instead of the frame")
    p.add_argument("--temporal", action="store_true",
                   help="each input folder's frames are one animation, in natural name order (f_2 before f_10): "
                        "each frame is fused with the one before along optical flow, so they do not flicker")
    _add_frame_path_args(p)
    p.add_argument("--shard", type=_shard, default=None, metavar="K/N",
                   help="restore only the K-th of N equal runs of the inputs (K from 0), e.g. one per farm node; "
                        "under accelerate launch or torchrun RANK/WORLD_SIZE pick it")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--skip-existing", action="store_true", help="leave outputs that already exist alone")
    g.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")

    p = sub.add_parser("serve", help="keep the restorer loaded and answer JSON lines on stdin/stdout "
                                      "(faces mode per request)")
    _add_runtime_args(p)
    _add_frame_path_args(p)

    p = sub.add_parser("demo", help="a web page to try the restorer: restore, degrade -> restore, sequences "
                                     "(needs the demo extra: pip install splat-restore[demo])")
    _add_runtime_args(p, license_flag=False)  # weights under a licence: the page asks each visitor to accept it
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only); 0.0.0.0 opens the page to "
                        "the network, with no login")
    p.add_argument("--share-folder", default=None, metavar="DIR",
                   help="also keep every result in DIR (never replacing a file there), e.g. a studio share")
    p.add_argument("--max-upload-mb", type=int, default=None, help="largest upload accepted (default 64)")

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

    p = sub.add_parser("bench-pipeline", help="end-to-end frames/s of a folder of frames against each stage's own "
                                               "rate: how close the pipelined frame path gets to its slowest stage")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help=WEIGHTS_HELP)
    src.add_argument("--random-weights", action="store_true", help="SD-Turbo-size random weights (no download)")
    p.add_argument("--base", default=None)
    _add_license_arg(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"])
    p.add_argument("--batch-size", type=_count(1), default=1)
    p.add_argument("--compile", choices=["auto", "off", "on"], default="auto")
    p.add_argument("--size", default="1920x1080", help="frame size WxH")
    p.add_argument("--faces", type=_count(0), default=1, help="moving faces in each frame (0: whole frames)")
    p.add_argument("--frames", type=_count(2), default=48)
    p.add_argument("--temporal", action="store_true", help="the frames are one animation, fused as restore does")
    p.add_argument("--min-face", type=_min_face, default=72)
    _add_frame_path_args(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("flicker", help="warping error of a frame sequence: how much it flickers")
    p.add_argument("frames", help="folder of frames, taken in natural name order")
    p.add_argument("--reference", default=None,
                   help="folder with the same names (the frames before restoring): flow is computed on these, and "
                        "the ratio is to their own warping error (default: the frames themselves)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("bench-temporal", help="temporal restore's flicker, kept change and fusion cost per frame")
    p.add_argument("--weights", default=None, help="the model for the moving-face sequence (without: cost only)")
    p.add_argument("--base", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--size", default="1920x1080", help="frame size WxH for the cost")
    p.add_argument("--frames", type=int, default=20, help="frames timed for the cost")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("fetch", help="download a base model or weights (nvidia/difix) into the Hugging Face cache; "
                                      "an interrupted fetch continues where it stopped")
    p.add_argument("base", nargs="?", default=DEFAULT_BASE)
    p.add_argument("--json", action="store_true",
                   help="progress as JSON lines on stdout, one per update (plan, progress, done, error)")

    p = sub.add_parser("import-photos", help="capture photos -> upright sRGB PNGs (the clean half of Blender pairs)")
    p.add_argument("photos", nargs="*", help="photo files, or folders whose images are taken")
    p.add_argument("--from-list", default=None, help="a text file naming one photo per line (UTF-8)")
    p.add_argument("--out", required=True, help="folder for NAME.png, one per photo stem")
    p.add_argument("--json", action="store_true", help="one JSON line per photo, printed as each is done")
    p.add_argument("--overwrite", action="store_true", help="replace PNGs already in --out")

    p = sub.add_parser("import-pix2pix-turbo", help="convert an img2img-turbo .pkl into a Splat Restore checkpoint")
    p.add_argument("pkl")
    p.add_argument("--base", default=DEFAULT_BASE)
    p.add_argument("--prompt", required=True, help="the prompt the model was trained with")
    p.add_argument("-o", "--output", required=True)
    return ap
