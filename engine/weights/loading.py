"""Assembling a Pix2PixTurbo from what `--weights` names: a Splat Restore checkpoint on a base model, or a folder
(or hub id) in Difix's published layout."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from blender_addon.engine_link.licenses import require_acceptance

from . import lineage, published
from .base import BaseModel, build_base_from_configs, load_base, resolve_base
from .checkpoint import CheckpointError, CheckpointInfo, load_trainable_state, read_checkpoint, read_info
from ..model import LoraSpec, RestorerConfig, Pix2PixTurbo, add_lora, add_skip_convs, alpha_bar, merge_lora

CHECKPOINT_SUFFIXES = (".safetensors", ".pkl", ".pt", ".pth", ".ckpt", ".bin")


def build_restorer(base: BaseModel, lora: LoraSpec, config: RestorerConfig | None = None,
                   prompt_embeds: torch.Tensor | None = None) -> Pix2PixTurbo:
    """Skip convs + LoRA on the base, untrained (LoRA B = 0, skips = 1e-5): the starting point of training."""
    if config is None:
        config = RestorerConfig(timestep=999, alpha_bar=alpha_bar(base.scheduler_config, 999))
    if prompt_embeds is None:
        device = base.unet.conv_in.weight.device
        prompt_embeds = torch.zeros(1, 77, base.unet.config.cross_attention_dim, device=device)
    add_skip_convs(base.vae)
    add_lora(base.unet, base.vae, lora)
    return Pix2PixTurbo(base.unet, base.vae, prompt_embeds, config)


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


def is_checkpoint_file(weights: str | os.PathLike) -> bool:
    path = Path(weights)
    return path.is_file() or path.suffix.lower() in CHECKPOINT_SUFFIXES


def read_recipe(weights: str | os.PathLike) -> CheckpointInfo:
    """The recipe behind `weights` from metadata and configs alone: cheap, loads no tensors."""
    if is_checkpoint_file(weights):
        return read_info(weights)
    return published.read_recipe(resolve_base(weights, role="weights"), str(weights))


def check_license(weights: str | os.PathLike, accepted: bool) -> CheckpointInfo:
    """The recipe, if its licence (if any) was accepted; licenses.LicenseNotAccepted otherwise."""
    info = read_recipe(weights)
    require_acceptance(info.license, str(weights), accepted)
    return info


def load_restorer(weights: str | os.PathLike, base: str | None = None, merge: bool = True,
                  check_base: bool = True, accept_license: bool = False) -> tuple[Pix2PixTurbo, CheckpointInfo]:
    """The restorer `weights` describe (on `base`, else the checkpoint's own; for a fine-tune of another restorer,
    `base` names that init), LoRA merged unless `merge=False`.
    Weights under a licence load only when it was accepted (`accept_license` or the environment)."""
    info = check_license(weights, accept_license)
    if is_checkpoint_file(weights) and info.init:  # a fine-tune of another restorer: `base` names that init
        model = lineage.load_finetuned(weights, info, base, check_base, accept_license)
    elif is_checkpoint_file(weights):
        model, info = _load_checkpoint(weights, base, check_base)
    else:
        if base:
            raise CheckpointError(f"weights {weights} carry their own base model (Difix's published layout); "
                                  f"--base {base} does not apply to them")
        model = published.load_published(resolve_base(weights, role="weights"), info)
    if merge:
        merge_lora(model.unet)
        merge_lora(model.vae)
    return model.eval().requires_grad_(False), info


def _load_checkpoint(weights, base: str | None, check_base: bool) -> tuple[Pix2PixTurbo, CheckpointInfo]:
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
    return model, info
