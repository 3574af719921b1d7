"""The inference fast path: what a frame runs through once the model is loaded.

Merged LoRA (done at load), half precision on GPUs, channels_last convolutions, PyTorch's SDPA attention, and on CUDA
torch.compile with static shapes ("max-autotune" with CUDA graphs), compiled once per input shape and reused for every
later frame of that shape (the service keeps the compiled model warm; Inductor caches kernels on disk, so a restarted
engine compiles faster). The VAE decoder is about 75 % of the FLOPs at 512 px, so it is compiled as a whole with the
encoder and UNet rather than left eager.
"""
from __future__ import annotations

import os

import torch

from .model import SplatRestorer

COMPILE_MODES = ("auto", "off", "on")
# dense bf16/fp16 throughput reachable by large GEMMs, used only to print the fraction of the compute floor
PEAK_TFLOPS = {"H200": 790.0, "H100": 790.0, "A100": 280.0, "L40S": 330.0, "RTX 4090": 300.0}


def use_sdpa(model: SplatRestorer) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    for module in (getattr(model, "unet", None), getattr(model, "vae", None)):
        if hasattr(module, "set_attn_processor"):
            module.set_attn_processor(AttnProcessor2_0())


def optimize(model: SplatRestorer, device: torch.device, compile_mode: str = "auto") -> torch.nn.Module:
    """A callable (N, 3, H, W) -> (N, 3, H, W) running `model` as fast as this device allows. `model` must already
    be merged and on `device` in its inference dtype."""
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, not {compile_mode!r}")
    use_sdpa(model)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if compile_mode == "on" or (compile_mode == "auto" and device.type == "cuda"):
        os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
        mode = "max-autotune" if device.type == "cuda" else "default"
        return torch.compile(model, mode=mode, dynamic=False, fullgraph=False)
    return model


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
