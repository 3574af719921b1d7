"""`python -m engine bench`: the reference recipe and the engine's fast path, timed in one process on the same inputs.

Reference = img2img-turbo's way of running the model: LoRA adapters unmerged, eager, fp16 on GPUs (fp32 on CPU).
Eager-fast = what the engine serves from the first frame: LoRA merged, SDPA, channels_last, fp16 on GPUs.
Compiled = eager-fast through torch.compile (CUDA graphs, mode reduce-overhead, on CUDA), once its compile is done.
One model is on the device at a time, so each peak memory is that model's own. Also prints the cold start (load plus
one eager frame: what an artist waits for), the compile time into an empty cache, and the compile time of a restarted
engine on that cache (measured in a fresh process by engine/benches/restart.py).
The FLOP count, the cards' peak rates and the `auto` batch size live here too: only the benchmark uses them.
"""
from __future__ import annotations

import copy
import gc
import tempfile
import time

import torch

from ..fastpath import FastForward
from ..model import LoraSpec, merge_lora
from ..runtime import pick_device, pick_dtype

# dense bf16/fp16 throughput reachable by large GEMMs, used only to print the fraction of the compute floor
PEAK_TFLOPS = {"H200": 790.0, "H100": 790.0, "A100": 280.0, "L40S": 330.0, "RTX 4090": 300.0}


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
                p.normal_(0, 1e-2)
    return model.eval().requires_grad_(False), f"random weights ({base or arch})"


def merged(model: torch.nn.Module) -> torch.nn.Module:
    merge_lora(model.unet)
    merge_lora(model.vae)
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _time(fn, x, repeats: int, device: torch.device) -> tuple[float, float | None]:
    with torch.inference_mode():
        for _ in range(3):  # warm-up: cuDNN's algorithm search, CUDA graphs recorded on their third call
            fn(x)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn(x)
        _sync(device)
    seconds = (time.perf_counter() - start) / repeats
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    return seconds, peak


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs of one forward on `x` (matmuls and convolutions, as torch's flop counter sees them)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def auto_batch_size(model: torch.nn.Module, size: int, device: torch.device, dtype: torch.dtype,
                    cap: int = 16, headroom: float = 0.8) -> int:
    """The largest batch (up to `cap`) whose activations fit in `headroom` of the free GPU memory, from one
    measured batch-1 forward; 1 on CPU and MPS."""
    if device.type != "cuda":
        return 1
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        model(torch.zeros(1, 3, size, size, device=device, dtype=dtype))
    per_frame = max(1, torch.cuda.max_memory_allocated(device) - base)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(cap, headroom * free // per_frame)))


@torch.inference_mode()  # inference tensors, as the engine passes: compiled code is guarded on it
def _inputs(batch: int, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    x = torch.rand(batch, 3, size, size, device=device, dtype=dtype) * 2 - 1
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def bench(weights=None, base=None, arch="sd-turbo", size=512, batches=(1,), device="auto", dtype="auto",
          compile_mode="auto", repeats=5, accept_license=False, warm_restart=True) -> dict:
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    started = time.perf_counter()
    model, label = build_models(weights, base, arch, dev, accept_license)
    load_s = time.perf_counter() - started

    reference = copy.deepcopy(model).to(dev, dt)
    batch_list = [b if b != "auto" else auto_batch_size(reference, size, dev, dt) for b in batches]
    rows = [{"batch": b} for b in batch_list]
    for row in rows:
        s, row["reference_peak_gib"] = _time(reference, _inputs(row["batch"], size, dev, dt), repeats, dev)
        row["reference_ms_per_frame"] = 1000 * s / row["batch"]
    del reference
    _free(dev)

    with tempfile.TemporaryDirectory() as cache:  # empty: the first compile is a cold one
        started = time.perf_counter()
        forward = FastForward(merged(model).to(dev, dt), dev, compile_mode, cache)
        shapes = [(b, 3, size, size) for b in sorted({1, *batch_list})]  # the engine warms batch 1 up too
        forward.compile_async(shapes)  # as the engine does, before its first frame
        with torch.inference_mode():
            forward(_inputs(1, size, dev, dt))
        _sync(dev)
        cold_start_s = load_s + time.perf_counter() - started
        first_frame_compiled = forward.compiled_calls > 0
        forward.wait()
        for row in rows:
            x = _inputs(row["batch"], size, dev, dt)
            s, row["eager_peak_gib"] = _time(forward.eager, x, repeats, dev)
            row["eager_ms_per_frame"] = 1000 * s / row["batch"]
            if forward.state == "ready":
                s, row["compiled_peak_gib"] = _time(forward.compiled, x, repeats, dev)
                row["compiled_ms_per_frame"] = 1000 * s / row["batch"]
        compile_warm_s = None
        if forward.state == "ready" and warm_restart:
            from .restart import measure_in_subprocess

            compile_warm_s = measure_in_subprocess(cache, weights, base, arch, size, [s[0] for s in shapes],
                                                   str(dev), dtype, compile_mode, accept_license)["seconds"]
    flops = count_flops(forward.eager, _inputs(1, size, dev, dt))
    peak = peak_tflops(dev)
    for row in rows:
        fast_ms = row.get("compiled_ms_per_frame", row["eager_ms_per_frame"])
        row.update(fast_ms_per_frame=fast_ms, fast_fps=1000 / fast_ms,
                   speedup=row["reference_ms_per_frame"] / fast_ms)
        if peak:
            row["floor_fraction"] = (flops / (peak * 1e12)) / (fast_ms / 1000)
    return {"model": label, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev),
            "dtype": str(dt).replace("torch.", ""), "size": size, "tflop_per_frame": flops / 1e12,
            "compile": forward.status(), "cold_start_s": cold_start_s, "load_s": load_s,
            "first_frame_compiled": first_frame_compiled, "compile_cold_s": forward.status()["seconds"] or None,
            "compile_warm_s": compile_warm_s, "rows": rows}


def check_outputs(weights=None, base=None, arch="sd-turbo", size=64, device="auto", dtype="auto") -> dict:
    """The eager fast path against the eager fp32 reference on one random frame (in [-1, 1] units): max and mean
    |error|, and the mean change the LoRA adapters themselves make, the scale an error must stay well below."""
    dev = pick_device(device)
    with torch.random.fork_rng(devices=[]):  # the same adapters and frame every time: a check, not a sample
        torch.manual_seed(0)
        reference, _ = build_models(weights, base, arch, dev)
        x = torch.rand(1, 3, size, size) * 2 - 1
    fast = FastForward(merged(copy.deepcopy(reference)).to(dev, pick_dtype(dtype, dev)), dev, "off")
    with torch.inference_mode():
        expected = reference.float()(x)
        got = fast(x.to(dev, pick_dtype(dtype, dev))).float().cpu()
        plain = copy.deepcopy(reference)
        for n, p in plain.named_parameters():
            if "lora_B" in n:
                p.zero_()
        without_lora = plain(x)
    error = (got - expected).abs()
    return {"max_error": float(error.max()), "mean_error": float(error.mean()),
            "lora_effect": float((without_lora - expected).abs().mean())}


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_report(r: dict) -> None:
    c = r["compile"]
    print(f"{r['model']} on {r['device']} ({r['dtype']}, {r['size']} px, compile {c['mode'] or 'off'}), "
          f"{r['tflop_per_frame']:.3f} TFLOP/frame")
    print(f"cold start {r['cold_start_s']:.1f} s (load {r['load_s']:.1f} s + one eager frame"
          f"{', compiled!' if r['first_frame_compiled'] else ''}); compile {_cell(r['compile_cold_s'], '.1f')} s "
          f"cold, {_cell(r['compile_warm_s'], '.1f')} s on a restart with the cache")
    print(f"{'batch':>5} {'ref ms/f':>9} {'eager ms/f':>11} {'comp ms/f':>10} {'fps':>8} {'speed-up':>9} "
          f"{'ref GiB':>8} {'eager GiB':>10} {'comp GiB':>9} {'floor':>6}")
    for row in r["rows"]:
        floor = f"{row['floor_fraction'] * 100:.0f}%" if "floor_fraction" in row else "-"
        print(f"{row['batch']:>5} {row['reference_ms_per_frame']:>9.1f} {row['eager_ms_per_frame']:>11.1f} "
              f"{_cell(row.get('compiled_ms_per_frame'), '.1f'):>10} {row['fast_fps']:>8.1f} "
              f"{row['speedup']:>8.2f}x {_cell(row['reference_peak_gib'], '.1f'):>8} "
              f"{_cell(row['eager_peak_gib'], '.1f'):>10} {_cell(row.get('compiled_peak_gib'), '.1f'):>9} "
              f"{floor:>6}")
