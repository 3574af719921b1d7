"""Assembling a SplatRestorer from a base model and (optionally) a checkpoint."""
from __future__ import annotations

import os

import torch

from .base import BaseModel, build_base_from_configs, load_base
from .checkpoint import CheckpointError, CheckpointInfo, load_trainable_state, read_checkpoint, read_info
from .model import LoraSpec, RestorerConfig, SplatRestorer, add_lora, add_skip_convs, alpha_bar, merge_lora


def build_restorer(base: BaseModel, lora: LoraSpec, config: RestorerConfig | None = None,
                   prompt_embeds: torch.Tensor | None = None) -> SplatRestorer:
    """Skip convs + LoRA on the base, untrained (LoRA B = 0, skips = 1e-5): the starting point of training."""
    if config is None:
        config = RestorerConfig(timestep=999, alpha_bar=alpha_bar(base.scheduler_config, 999))
    if prompt_embeds is None:
        device = base.unet.conv_in.weight.device
        prompt_embeds = torch.zeros(1, 77, base.unet.config.cross_attention_dim, device=device)
    add_skip_convs(base.vae)
    add_lora(base.unet, base.vae, lora)
    return SplatRestorer(base.unet, base.vae, prompt_embeds, config)


def count_parameters(arch: str = "sd-turbo", lora: LoraSpec | None = None) -> dict:
    """Exact counts at full size, built on the meta device from the shipped configs (no weights, no memory)."""
    lora = lora or LoraSpec()
    model = build_restorer(build_base_from_configs(arch), lora)
    trainable = model.trainable_parameters()
    unique = {id(p): p for p in model.parameters()}
    return {"arch": arch, "trainable_params": sum(p.numel() for p in trainable),
            "total_params": sum(p.numel() for p in unique.values()),
            "lora_params": sum(p.numel() for n, p in model.named_parameters() if "lora_" in n),
            "rank_unet": lora.rank_unet, "rank_vae": lora.rank_vae, "vae_lora_scope": lora.vae_scope}


def load_restorer(weights: str | os.PathLike, base: str | None = None, merge: bool = True,
                  check_base: bool = True) -> tuple[SplatRestorer, CheckpointInfo]:
    """Base (`base`, else the one named in the checkpoint) + checkpoint, LoRA merged unless `merge=False`."""
    info = read_info(weights)
    base_model = load_base(base or info.base)
    if check_base and base_model.fingerprint != info.base_fingerprint:
        raise CheckpointError(
            f"weights file {weights} was made for base {info.base!r} (fingerprint {info.base_fingerprint}), but "
            f"the base loaded from {base_model.folder} has fingerprint {base_model.fingerprint}: pass the right "
            f"--base")
    info, tensors = read_checkpoint(weights)
    model = build_restorer(base_model, info.lora, info.restorer, tensors.pop("prompt_embeds"))
    load_trainable_state(model, tensors, f"weights file {weights}")
    if merge:
        merge_lora(model.unet)
        merge_lora(model.vae)
    return model.eval().requires_grad_(False), info
