"""`python -m engine bench`: the reference recipe and the engine's fast path, timed in one process on the same inputs.

Reference = img2img-turbo's way of running the model: LoRA adapters unmerged, eager, fp16 on GPUs (fp32 on CPU).
Fast = what the engine runs: LoRA merged, fastpath.optimize (channels_last, SDPA, torch.compile with CUDA graphs on
CUDA). Prints ms per frame, frames/s, peak memory, fast/reference speed-up and the fraction of the compute floor.
"""
from __future__ import annotations

import copy
import time

import torch

from ..fastpath import auto_batch_size, count_flops, optimize, peak_tflops
from ..model import LoraSpec, merge_lora
from ..runtime import pick_device, pick_dtype


def build_models(weights: str | None, base: str | None, arch: str, device: torch.device,
                 accept_license: bool = False):
    """(unmerged reference model, label). Random weights at full size when no checkpoint is given."""
    if weights:
        from ..weights.loading import load_restorer

        model, _ = load_restorer(weights, base, merge=False, accept_license=accept_license)
        return model, f"weights {weights}"
    from ..weights.base import build_base_from_configs, load_base
    from ..weights.loading import build_restorer

    base_model = load_base(base) if base else build_base_from_configs(arch, device="cpu")
    model = build_restorer(base_model, LoraSpec())
    with torch.no_grad():  # trained-looking adapters: B = 0 would make merging look free of error
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1e-3)
    return model.eval().requires_grad_(False), f"random weights ({base or arch})"


def _time(fn, x, repeats: int, device: torch.device) -> tuple[float, float | None]:
    with torch.inference_mode():
        fn(x)  # warm-up (and compile)
        fn(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(repeats):
            fn(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeats
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None
    return seconds, peak


def bench(weights=None, base=None, arch="sd-turbo", size=512, batches=(1,), device="auto", dtype="auto",
          compile_mode="auto", repeats=5, accept_license=False) -> dict:
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    reference, label = build_models(weights, base, arch, dev, accept_license)
    fast_model = copy.deepcopy(reference)
    merge_lora(fast_model.unet)
    merge_lora(fast_model.vae)
    reference = reference.to(dev, dt)
    fast_model = fast_model.to(dev, dt)
    fast = optimize(fast_model, dev, compile_mode)
    flops = count_flops(fast_model, torch.zeros(1, 3, size, size, device=dev, dtype=dt))
    peak = peak_tflops(dev)
    rows = []
    batch_list = list(batches)
    if "auto" in batch_list:
        batch_list = [b if b != "auto" else auto_batch_size(fast_model, size, dev, dt) for b in batch_list]
    for batch in batch_list:
        x = torch.rand(batch, 3, size, size, device=dev, dtype=dt) * 2 - 1
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        ref_s, ref_peak = _time(reference, x, repeats, dev)
        fast_s, fast_peak = _time(fast, x, repeats, dev)
        row = {"batch": batch, "reference_ms_per_frame": 1000 * ref_s / batch,
               "fast_ms_per_frame": 1000 * fast_s / batch,
               "fast_fps": batch / fast_s, "speedup": ref_s / fast_s, "reference_peak_gib": ref_peak,
               "fast_peak_gib": fast_peak}
        if peak:
            row["floor_fraction"] = (flops / (peak * 1e12)) / (fast_s / batch)
        rows.append(row)
    return {"model": label, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev),
            "dtype": str(dt).replace("torch.", ""), "size": size, "tflop_per_frame": flops / 1e12,
            "compile": compile_mode, "rows": rows}


def check_outputs(weights=None, base=None, arch="sd-turbo", size=64, device="auto", dtype="auto") -> float:
    """Max |fast - eager fp32 reference| on one random frame (in [-1, 1] units)."""
    dev = pick_device(device)
    reference, _ = build_models(weights, base, arch, dev)
    fast_model = copy.deepcopy(reference)
    merge_lora(fast_model.unet)
    merge_lora(fast_model.vae)
    fast = optimize(fast_model.to(dev, pick_dtype(dtype, dev)), dev, "auto")
    x = torch.rand(1, 3, size, size) * 2 - 1
    with torch.inference_mode():
        expected = reference.float()(x)
        got = fast(x.to(dev, pick_dtype(dtype, dev))).float().cpu()
    return float((got - expected).abs().max())


def print_report(r: dict) -> None:
    print(f"{r['model']} on {r['device']} ({r['dtype']}, {r['size']} px, compile {r['compile']}), "
          f"{r['tflop_per_frame']:.3f} TFLOP/frame")
    print(f"{'batch':>5} {'ref ms/f':>9} {'fast ms/f':>10} {'fast fps':>9} {'speed-up':>9} {'peak GiB':>9} "
          f"{'floor':>7}")
    for row in r["rows"]:
        peak = f"{row['fast_peak_gib']:.1f}" if row["fast_peak_gib"] is not None else "-"
        floor = f"{row['floor_fraction'] * 100:.0f}%" if "floor_fraction" in row else "-"
        print(f"{row['batch']:>5} {row['reference_ms_per_frame']:>9.1f} {row['fast_ms_per_frame']:>10.1f} "
              f"{row['fast_fps']:>9.1f} {row['speedup']:>8.2f}x {peak:>9} {floor:>7}")
