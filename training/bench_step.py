"""`python -m training bench-step`: ms per training step and peak memory at full size with random weights.

Builds the real architecture (SD-Turbo configs, random init: no download), the full recipe loss (L1 + LPIPS-VGG +
Gram) and AdamW, then times optimizer steps at each batch size, with and without gradient checkpointing. On a GPU it
reports peak CUDA memory; on CPU, use a small --size to check that it runs.
"""
from __future__ import annotations

import time

import torch

from engine.weights.base import build_base_from_configs, load_base
from engine.weights.loading import build_restorer
from engine.model import LoraSpec

from .memory_plan import needs_checkpointing
from .perceptual import PerceptualLoss
from .train import TrainConfig, recipe_loss


def bench_step(batches=(1, 4), size=512, steps=5, device="cuda", checkpointing=(False, True), base=None,
               mixed_precision="bf16") -> list[dict]:
    dev = torch.device(device)
    if base:
        base_model = load_base(base)
    else:
        base_model = build_base_from_configs("sd-turbo", device="cpu")
    model = build_restorer(base_model, LoraSpec()).to(dev)
    model.set_trainable()
    model.skip_dropout = 0.3
    model.train()
    perceptual = PerceptualLoss(random_init=True).to(dev)
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=5e-5)
    cfg = TrainConfig(pairs="", out="")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    rows = []
    for ckpt in checkpointing:
        model.gradient_checkpointing = ckpt
        if ckpt:
            model.unet.enable_gradient_checkpointing()
        else:
            model.unet.disable_gradient_checkpointing()
        for batch in batches:
            x = torch.rand(batch, 3, size, size, device=dev) * 2 - 1
            y = torch.rand(batch, 3, size, size, device=dev) * 2 - 1
            if dev.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            resident = torch.cuda.memory_allocated() / 2 ** 30 if dev.type == "cuda" else None
            try:
                times = []
                for i in range(steps + 1):
                    start = time.perf_counter()
                    with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                        loss, _ = recipe_loss(model(x), y, perceptual, cfg)
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    if i:  # the first step pays for allocation and kernel selection
                        times.append(time.perf_counter() - start)
                peak = torch.cuda.max_memory_allocated() / 2 ** 30 if dev.type == "cuda" else None
                rows.append({"batch": batch, "checkpointing": ckpt, "ms_per_step": 1000 * sum(times) / len(times),
                             "peak_gib": peak, "resident_gib": resident, "size": size, "device": str(dev)})
            except torch.OutOfMemoryError:
                rows.append({"batch": batch, "checkpointing": ckpt, "ms_per_step": None, "peak_gib": "OOM",
                             "size": size, "device": str(dev)})
    return rows


def print_rows(rows: list[dict], card_gib: float = 24.0) -> None:
    print(f"{'batch':>5} {'ckpt':>5} {'ms/step':>9} {'peak GiB':>9}  ({rows[0]['device']}, {rows[0]['size']} px, "
          f"full loss L1 + LPIPS-VGG + Gram, AdamW)")
    for r in rows:
        ms = f"{r['ms_per_step']:.0f}" if r["ms_per_step"] else "-"
        peak = r["peak_gib"] if isinstance(r["peak_gib"], str) else (f"{r['peak_gib']:.1f}" if r["peak_gib"] else "-")
        print(f"{r['batch']:>5} {str(r['checkpointing']):>5} {ms:>9} {peak:>9}")
    one = next((r for r in rows if r["batch"] == 1 and not r["checkpointing"] and isinstance(r["peak_gib"], float)),
               None)
    if one:  # what fit's memory plan would decide from this batch-1 step on a card of card_gib
        gib = 2 ** 30
        for batch in sorted({r["batch"] for r in rows}):
            on = needs_checkpointing(int(one["resident_gib"] * gib), int(one["peak_gib"] * gib), batch,
                                     int((card_gib - one["resident_gib"]) * gib))
            print(f"memory plan on a {card_gib:.0f} GB card, batch {batch}: gradient checkpointing "
                  f"{'on' if on else 'off'}")
