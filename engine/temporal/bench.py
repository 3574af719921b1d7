"""`python -m engine bench-temporal`: the targets of temporal restore, measured on a moving face.

Quality: a face from the bundled photos drifting and zooming by sub-pixel steps (the case that flickers: the VAE's
8x downsampling sees each sub-pixel position as a different image), restored per frame and fused, both judged by
the flicker measure on the input's flow. Cost: fusion alone (flow, masks, blend; no model) per frame of a moving
1920x1080 frame, with the change confined to a face crop (faces mode) and over the whole frame (--faces off).
"""
from __future__ import annotations

import time

import cv2
import numpy as np

from .flicker import measure_many
from .fusion import FusionConfig, TemporalFusion

FACE_CENTRE = {"grace_hopper": (265.0, 215.0, 260.0), "astronaut": (190.0, 110.0, 150.0)}  # x, y; side fills the frame


def moving_face(frames: int = 24, size: int = 64, face: str = "grace_hopper", still: bool = False) -> list:
    """`frames` float32 (size, size, 3) frames of a bundled face drifting right and down while zooming in slowly.

    The photo is reduced to the frame's scale first (area averaging) and then moved by sub-pixel steps, as a render
    would draw it: sampling the full-size photo sparsely would alias and make the input itself shimmer."""
    from ..faces.bundled import bundled_faces

    cx, cy, side = FACE_CENTRE[face]
    k = size / side
    photo = cv2.resize(bundled_faces()[face], None, fx=k, fy=k, interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    out = []
    for t in range(1 if still else frames):
        s = 1 + 0.004 * t
        x, y = k * (cx + 1.7 * t), k * (cy + 0.9 * t)
        affine = np.float32([[s, 0, size / 2 - s * x], [0, s, size / 2 - s * y]])
        out.append(cv2.warpAffine(photo, affine, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return out * frames if still else out


def fuse_sequence(frames: list, restored: list, config: FusionConfig | None = None) -> list:
    """Per-frame restores fused in order (copies: fusion writes into the restore it is given)."""
    fusion = TemporalFusion(config)
    return [fusion.fuse(i, np.array(r, copy=True)) for i, r in zip(frames, restored)]


def kept_change(fused: list, restored: list, frames: list) -> float:
    """How much of the per-frame change from the input the fused output still makes (mean |out - input|, as a
    fraction of per-frame restore's): 0 would be passing the input through."""
    return float(np.mean([np.abs(o - i).mean() for o, i in zip(fused, frames)])
                 / np.mean([np.abs(r - i).mean() for r, i in zip(restored, frames)]))


def quality(restore, frames: list, config: FusionConfig | None = None) -> dict:
    """`restore`: list of frames -> list of per-frame restores (a runtime.ModelRunner's restore)."""
    restored = restore(frames)
    fused = fuse_sequence(frames, restored, config)
    reports = measure_many({"per_frame": restored, "temporal": fused}, frames)
    per_frame, temporal = reports["per_frame"], reports["temporal"]
    return {"frames": len(frames), "size": frames[0].shape[1], "input_error": per_frame.reference_mean,
            "per_frame_error": per_frame.mean, "temporal_error": temporal.mean,
            "per_frame_ratio": per_frame.ratio, "temporal_ratio": temporal.ratio,
            "temporal_vs_per_frame": temporal.mean / per_frame.mean, "kept_change": kept_change(fused, restored,
                                                                                                  frames)}


def moving_frame(width: int, height: int, frames: int) -> list:
    from ..benches.faces import compose_frame

    still = compose_frame(width + 64, height + 64, 1)
    shifts = [(32 + (t // 2) % 32, 32 + t % 32) for t in range(frames)]
    return [np.ascontiguousarray(still[y:y + height, x:x + width]) for y, x in shifts]


def synthetic_change(frame: np.ndarray, box: tuple[int, int, int, int] | None, seed: int) -> np.ndarray:
    """A restore-like change: fine random texture (new each frame, like flicker) feathered to zero at the box edge."""
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = box or (0, 0, w, h)
    noise = np.random.default_rng(seed).normal(0, 0.04, (y1 - y0, x1 - x0, 3)).astype(np.float32)
    feather = np.ones((y1 - y0, x1 - x0), np.float32)
    if box:
        ramp = min(32, (x1 - x0) // 4)
        feather = cv2.blur(np.pad(feather[ramp:-ramp, ramp:-ramp], ramp), (2 * ramp + 1, 2 * ramp + 1))
    out = np.array(frame, copy=True)
    out[y0:y1, x0:x1] = np.clip(frame[y0:y1, x0:x1] + noise * feather[..., None], 0, 1)
    return out


def cost(width: int, height: int, frames: int, faces: bool) -> dict:
    """Milliseconds of fusion per frame, model excluded (median: the machine is shared), on a moving frame whose
    change is a face-sized box or all of it."""
    inputs = moving_frame(width, height, frames + 1)
    side = int(0.5 * height)  # face-aware restore's crop of the bench-faces photo is about this size
    box = (width // 2 - side // 2, int(0.08 * height), width // 2 + side // 2, int(0.08 * height) + side) \
        if faces else None
    restored = [synthetic_change(f, box, k) for k, f in enumerate(inputs)]
    fusion = TemporalFusion()
    fusion.fuse(inputs[0], restored[0])  # the first frame only starts the sequence
    took = []
    for image, out in zip(inputs[1:], restored[1:]):
        started = time.perf_counter()
        fusion.fuse(image, out)
        took.append(time.perf_counter() - started)
    return {"mode": "faces" if faces else "whole", "width": width, "height": height,
            "changed": f"{box[2] - box[0]}x{box[3] - box[1]}" if box else f"{width}x{height}",
            "ms_per_frame": float(np.median(took)) * 1000, "carried": fusion.carried}


def run(weights: str | None, base: str | None, device: str, width: int, height: int, frames: int) -> dict:
    report = {"cost": [cost(width, height, frames, faces=True), cost(width, height, frames, faces=False)]}
    if weights:
        from ..runtime import ModelRunner

        restorer = ModelRunner.from_pretrained(weights, base, device=device)
        report["quality"] = quality(restorer.restore, moving_face(24, restorer.model_size))
    return report


def print_table(report: dict) -> None:
    q = report.get("quality")
    if q:
        print(f"moving face, {q['frames']} frames at {q['size']} px (warping error in 8-bit levels, input's own: "
              f"{q['input_error']:.2f})")
        print(f"{'':<12}{'error':>8}{'x input':>9}")
        print(f"{'per-frame':<12}{q['per_frame_error']:>8.2f}{q['per_frame_ratio']:>9.2f}")
        print(f"{'temporal':<12}{q['temporal_error']:>8.2f}{q['temporal_ratio']:>9.2f}")
        print(f"temporal / per-frame: {q['temporal_vs_per_frame']:.2f} (target <= 0.6); change kept: "
              f"{q['kept_change']:.0%} (target >= 70%)")
    else:
        print("(quality needs a model: --weights)")
    print(f"{'fusion cost':<14}{'frame':>11}{'changed':>11}{'ms/frame':>10}")
    for c in report["cost"]:
        print(f"{c['mode']:<14}{c['width']}x{c['height']:<6}{c['changed']:>11}{c['ms_per_frame']:>10.1f}")
    print("target: <= 30 ms per 1920x1080 frame (model excluded)")
