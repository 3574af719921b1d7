"""`python -m training ...`: degrade (synthetic pairs), check-pairs (real paired renders), bench-degrade.

Exit codes: 0 done, 1 some inputs failed (each named), 2 usage errors.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


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

    p = sub.add_parser("check-pairs", help="validate a degraded/ + clean/ pair folder")
    p.add_argument("pairs_dir")

    p = sub.add_parser("bench-degrade", help="images per second of the pair generator on bundled faces")
    p.add_argument("--count", type=int, default=24)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--size", type=int, default=512)
    return ap


def cmd_degrade(a) -> int:
    from tqdm import tqdm

    from .prepare import PrepareOptions, collect_sources, prepare

    options = PrepareOptions(size=a.size, seed=a.seed, parser=a.parser, segformer=a.segformer, no_face=a.no_face)
    total = len(collect_sources(Path(a.clean_dir)))
    with tqdm(total=total, unit="img", file=sys.stderr) as bar:
        def progress(record):
            if record["status"] == "failed":
                bar.write(f"failed: {record['reason']}", file=sys.stderr)
            bar.update(1)
        summary = prepare(Path(a.clean_dir), Path(a.output), options, a.test_count, a.workers, progress)
    print(f"parser: {summary['parser']}")
    print(f"{summary['pairs']} pairs ({summary['test']} test) -> {a.output}; {len(summary['no_face'])} without a "
          f"face{': ' + ', '.join(summary['no_face'][:10]) if summary['no_face'] else ''}; "
          f"{len(summary['failed'])} failed")
    return 1 if summary["failed"] else 0


def cmd_check_pairs(a) -> int:
    from .pairs import validate_pairs

    report = validate_pairs(a.pairs_dir)
    print(report.describe())
    return 0 if report.ok else 1


def cmd_bench(a) -> int:
    """Steady-state rate per worker (parser loaded) and the end-to-end rate of `degrade` with a pool."""
    import tempfile

    import cv2

    from .bundled_faces import bundled_faces
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


COMMANDS = {"degrade": cmd_degrade, "check-pairs": cmd_check_pairs, "bench-degrade": cmd_bench}


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return COMMANDS[a.command](a)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
