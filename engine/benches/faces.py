"""`python -m engine bench-faces`: what face-aware restore costs per frame, stage by stage, on a composed frame.

The frame is a bundled real face photo (and, with --faces 2 or more, further ones) on a plain canvas of the asked
size. Without --weights the model is the identity, so the table is the face pipeline alone (detection, alignment and
mask, paste-back); with --weights the model's share and whole-frame tiled restore (--faces off, what the frame would
cost without face-aware restore) are timed in the same process for the ratio.
"""
from __future__ import annotations

import time
from contextlib import closing

import cv2
import numpy as np

from ..faces.restore import FramePipeline, Timings


class IdentityModel:
    batch_size = 8
    provenance = {"Splat Restore model": "identity (bench-faces)"}

    def __init__(self, size: int = 512):
        self.model_size = size

    def restore(self, images, tiled=True):
        return [np.array(i, copy=True) for i in images]

    def describe(self):
        return {"model": "identity"}


def compose_frame(width: int, height: int, faces: int) -> np.ndarray:
    from ..faces.bundled import bundled_faces

    photos = list(bundled_faces().values())
    canvas = np.full((height, width, 3), 0.35, np.float32)
    for k in range(faces):
        photo = photos[k % len(photos)]
        scale = min(1.0, 0.45 * height / photo.shape[0])
        photo = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ph, pw = photo.shape[:2]
        x = int((k + 0.5) * width / faces - pw / 2)
        y = int(height * (0.1 + 0.4 * (k % 2)))
        x0, y0 = max(0, x), max(0, y)
        canvas[y0:y0 + ph, x0:x0 + pw] = photo[:height - y0, :width - x0] / 255.0
    return canvas


def run(weights: str | None, base: str | None, width: int, height: int, faces: int, repeats: int, device: str,
        min_face: int) -> dict:
    if weights:
        from ..runtime import ModelRunner

        restorer = ModelRunner.from_pretrained(weights, base, device=device)
    else:
        restorer = IdentityModel()
    frame = compose_frame(width, height, faces)
    with closing(FramePipeline(restorer, min_face)) as pipeline:  # graphs closed: no native thread left at exit
        return _time_stages(pipeline, frame, weights, faces, repeats, restorer)


def _time_stages(pipeline, frame, weights, faces: int, repeats: int, restorer) -> dict:
    height, width = frame.shape[:2]
    found = pipeline.restore([frame], ["auto"])[0].faces  # warm-up: graphs, compile, caches
    pipeline.timings = Timings()
    t = time.perf_counter()
    for _ in range(repeats):
        pipeline.restore([frame], ["auto"])
    total = (time.perf_counter() - t) / repeats
    per = {k: v / repeats * 1000 for k, v in vars(pipeline.timings).items() if k != "frames"}
    out = {"size": [width, height], "faces_placed": faces, "faces_found": len(found),
           "scales": [round(f.scale, 2) for f in found], "model": "identity" if not weights else str(weights),
           "device": str(getattr(restorer, "device", "cpu")), "repeats": repeats, "total_ms": total * 1000,
           **{f"{k}_ms": v for k, v in per.items()},
           "pipeline_ms": per["detect"] + per["align"] + per["paste"]}
    if weights:
        pipeline.restore([frame], ["off"])
        t = time.perf_counter()
        for _ in range(repeats):
            pipeline.restore([frame], ["off"])
        out["whole_frame_ms"] = (time.perf_counter() - t) / repeats * 1000
    return out


def print_table(r: dict) -> None:
    w, h = r["size"]
    print(f"{w}x{h} frame, {r['faces_found']} of {r['faces_placed']} faces found (scales {r['scales']}), "
          f"model: {r['model']} on {r['device']}, mean of {r['repeats']}")
    print(f"{'stage':<34}{'ms/frame':>10}")
    for stage in ("detect", "align", "paste"):
        print(f"{stage:<34}{r[stage + '_ms']:>10.1f}")
    print(f"{'face pipeline (model excluded)':<34}{r['pipeline_ms']:>10.1f}")
    print(f"{'model':<34}{r['model_ms']:>10.1f}")
    print(f"{'total, faces':<34}{r['total_ms']:>10.1f}")
    if "whole_frame_ms" in r:
        print(f"{'whole frame, tiled (--faces off)':<34}{r['whole_frame_ms']:>10.1f}"
              f"   (faces / whole: {r['total_ms'] / r['whole_frame_ms']:.2f}x)")
