"""Weights in Difix's published layout (`nvidia/difix`): a whole diffusers folder rather than a LoRA file.

    unet/       a fully fine-tuned UNet (no LoRA)
    vae/        config.json = AutoencoderKL's + lora_rank, gamma, ignore_skip; the weights hold peft-wrapped decoder
                modules (`...conv1.base_layer.weight`, `...conv1.lora_A.vae_skip.weight`) and skip_conv_1..4 (which
                carry LoRA too); the encoder is plain
    scheduler/, tokenizer/, text_encoder/   SD-Turbo's

Difix-ref (`nvidia/difix_ref`) is the same layout with a UNet whose self-attention spans the frame's and a reference
view's tokens. Its weights are a plain UNet2DConditionModel's; only the forward differs, and that is hub-side code
(`unet/unet_2d_condition.py`, named by model_index.json's `unet` entry) which the engine never runs: it recognises
the variant and gives the UNet model.CrossViewAttnProcessor instead (RestorerConfig.views = 2).

Its forward is ours with another recipe (nv-tlabs/Difix3D src/model.py): input in [-1, 1], one UNet call at t=199
with the prompt "remove degradation", DDPM's one-step x0, the skips at `gamma`. So this module only reads the
recipe from the configs and fills our Pix2PixTurbo with the folder's tensors; nothing else in the engine knows Difix.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from blender_addon.engine_link.licenses import NVIDIA_DIFIX

from .base import BaseModelError, encode_prompt, read_config
from .checkpoint import CheckpointError, CheckpointInfo
from ..model import LoraSpec, RestorerConfig, Pix2PixTurbo, add_lora, add_skip_convs, alpha_bar

VAE_RECIPE_KEYS = ("lora_rank", "gamma", "ignore_skip")
DIFIX_TIMESTEP = 199  # Difix3D's README and inference script: timesteps=[199]
DIFIX_PROMPT = "remove degradation"
DIFIX_ALPHA = 8.0  # peft's default; Difix never sets lora_alpha, so scale = 8 / lora_rank
REFERENCE_HUB_IDS = ("nvidia/difix_ref",)
NOTES = [
    "Difix samples the VAE posterior; this engine uses its mean (deterministic)",
    "x0 as Difix3D's one-step DDPMScheduler.step at t=199 computes it: (z - sqrt(1-a) eps) / sqrt(a)",
    "LoRA alpha is peft's default (8); Difix does not store it",
]
REFERENCE_NOTES = [
    "Difix-ref: each frame needs a reference photo; the UNet's self-attention spans the frame's and the reference's "
    "tokens (Difix3D's mv_unet.py, as an attention processor on this UNet)",
    "the reference is encoded once per size and never decoded: only the frame's view goes through the decoder",
]


def is_published_layout(folder: Path) -> bool:
    try:
        return "lora_rank" in json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def views_of(folder: Path, name: str) -> int:
    """2 for Difix-ref, known by its hub id or by its layout (model_index.json names hub-side code, not diffusers,
    for the UNet), 1 for Difix."""
    if name.strip().rstrip("/").lower() in REFERENCE_HUB_IDS:
        return 2
    try:
        entry = json.loads((folder / "model_index.json").read_text(encoding="utf-8")).get("unet")
    except (OSError, ValueError, AttributeError):
        return 1
    library = entry[0] if isinstance(entry, list) and entry else None
    return 2 if isinstance(library, str) and library != "diffusers" else 1


def read_recipe(folder: Path, name: str) -> CheckpointInfo:
    """The recipe from the folder's configs alone (no tensors read)."""
    vae_config = read_config(folder, "vae/config.json")
    if "lora_rank" not in vae_config:
        raise CheckpointError(f"weights folder {folder} is a diffusers model but not in Difix's published layout "
                              f"(vae/config.json has no lora_rank); pass a Splat Restore .safetensors checkpoint "
                              f"or a Difix folder")
    try:
        rank = int(vae_config["lora_rank"])
        gamma = 0.0 if vae_config.get("ignore_skip", False) else float(vae_config.get("gamma", 1.0))
        lora = LoraSpec(rank_unet=0, rank_vae=rank, alpha_vae=DIFIX_ALPHA, vae_scope="decoder", skip_lora=True)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"weights folder {folder}: vae/config.json has an unusable Difix recipe: {e}") from None
    scheduler = read_config(folder, "scheduler/scheduler_config.json")
    views = views_of(folder, name)
    restorer = RestorerConfig(timestep=DIFIX_TIMESTEP, alpha_bar=alpha_bar(scheduler, DIFIX_TIMESTEP),
                              input_range="-1,1", skip_gamma=gamma, unet_source="weights", views=views)
    variant, notes = ("Difix-ref", NOTES + REFERENCE_NOTES) if views == 2 else ("Difix", list(NOTES))
    return CheckpointInfo(lora=lora, restorer=restorer, base=name, base_fingerprint="", prompt=DIFIX_PROMPT,
                          source=f"{variant} published layout ({name})", notes=notes, license=NVIDIA_DIFIX.id)


def load_published(folder: Path, info: CheckpointInfo) -> Pix2PixTurbo:
    """Pix2PixTurbo with the folder's UNet and LoRA-wrapped VAE, LoRA not yet merged."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file

    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as e:
        raise BaseModelError(f"could not load the UNet of {folder}: {e}") from None
    vae_config = {k: v for k, v in read_config(folder, "vae/config.json").items() if k not in VAE_RECIPE_KEYS}
    vae = AutoencoderKL.from_config(vae_config)
    add_skip_convs(vae)
    add_lora(unet, vae, info.lora)
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    try:
        state = load_file(str(weights))
    except Exception as e:
        raise CheckpointError(f"weights file {weights} could not be read (missing or truncated?): {e}") from None
    expected = vae.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"weights file {weights} does not fit Difix's layout with LoRA rank "
                              f"{info.lora.rank_vae}: {len(missing)} missing tensors (e.g. {missing[:2]}), "
                              f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    bad = [k for k in expected if expected[k].shape != state[k].shape]
    if bad:
        raise CheckpointError(f"weights file {weights}: tensor {bad[0]} has shape {tuple(state[bad[0]].shape)}, "
                              f"the config gives {tuple(expected[bad[0]].shape)}")
    vae.load_state_dict({k: v.float() for k, v in state.items()})
    return Pix2PixTurbo(unet, vae, encode_prompt(folder, info.prompt), info.restorer)
