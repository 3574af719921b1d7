"""Gradient checkpointing when, and only when, the batch would not fit: decided from one measured step.

Activation memory grows linearly with the batch while the weights, gradients and AdamW state do not, so one step at
batch 1 gives both parts: peak(b) = resident + b * (peak(1) - resident). Checkpointing costs about a third more time
per step (recomputed forward), so it is switched on only when the prediction leaves less than `margin` of the free
memory. On a CPU (or MPS) there is nothing to measure and training runs as asked.
"""
from __future__ import annotations

import torch

MARGIN = 0.9  # fragmentation and the allocator's cache take the rest


def predicted_peak(resident: int, peak_batch1: int, batch: int, optimizer_state: int = 0) -> int:
    """Bytes a step at `batch` peaks at. `resident`: allocated before the step; `optimizer_state`: AdamW's two
    moments, which the measured step (taken without optimizer.step) has not allocated yet."""
    return resident + optimizer_state + batch * max(0, peak_batch1 - resident)


def needs_checkpointing(resident: int, peak_batch1: int, batch: int, free: int, optimizer_state: int = 0,
                        margin: float = MARGIN) -> bool:
    """Bytes in (see predicted_peak), decision out."""
    return predicted_peak(resident, peak_batch1, batch, optimizer_state) > margin * (resident + free)


def optimizer_state_bytes(params) -> int:
    """AdamW keeps two fp32 moments per trainable value (the master weights are fp32 under mixed precision too)."""
    return 2 * sum(p.numel() * 4 for p in params)


def measure_and_plan(model, step_loss, device: torch.device, batch: int, size: int, log=print) -> bool:
    """One forward + backward at batch 1 on random data (`step_loss(x)` runs the model and the loss as training does,
    autocast included); the RNG is put back so the run itself is unchanged."""
    if device.type != "cuda":
        return False
    params = model.trainable_parameters()
    with torch.random.fork_rng(devices=[device]):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
        x = torch.rand(1, 3, size, size, device=device) * 2 - 1
        step_loss(x).backward()
        peak = torch.cuda.max_memory_allocated(device)
    for p in params:
        p.grad = None
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    moments = optimizer_state_bytes(params)
    on = needs_checkpointing(resident, peak, batch, free, moments)
    gib = 2 ** 30
    log(f"memory plan: batch 1 peaks at {peak / gib:.1f} GiB ({resident / gib:.1f} resident), batch {batch} "
        f"predicted {predicted_peak(resident, peak, batch, moments) / gib:.1f} GiB of "
        f"{(resident + free) / gib:.1f} GiB free: gradient checkpointing {'on' if on else 'off'}")
    return on
