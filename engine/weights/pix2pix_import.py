"""Converting img2img-turbo's pix2pix-turbo `.pkl` checkpoints into Splat Restore checkpoints.

Their file is a torch pickle of {unet_lora_target_modules, vae_lora_target_modules, rank_unet, rank_vae,
state_dict_unet, state_dict_vae}. It is read with `weights_only=True`, so no pickled code can run.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from .base import encode_prompt, load_base
from .checkpoint import CheckpointError, CheckpointInfo, canonical_key, load_trainable_state, save_checkpoint
from .loading import build_restorer
from ..model import LoraSpec, RestorerConfig, alpha_bar

REQUIRED_KEYS = ("unet_lora_target_modules", "vae_lora_target_modules", "rank_unet", "rank_vae",
                 "state_dict_unet", "state_dict_vae")
QUIRKS = [
    "img2img-turbo feeds the condition image to the VAE encoder in [0, 1]: input_range is '0,1'",
    "LoRA alpha is peft's default (8); img2img-turbo does not store it",
    "UNet target 'conv' also wraps the UNet's up/down-sampler convs (peft suffix matching)",
    "img2img-turbo samples the VAE posterior; this engine uses its mean (deterministic)",
]


def read_pix2pix_pkl(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"pix2pix-turbo checkpoint {path} does not exist")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} holds objects other than tensors and plain values, which are not loaded "
                              f"(weights_only): {str(e).splitlines()[0]}") from None
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable torch checkpoint (truncated or another format?): "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(sd, dict) or any(k not in sd for k in REQUIRED_KEYS):
        have = sorted(sd) if isinstance(sd, dict) else type(sd).__name__
        raise CheckpointError(f"{path} is not a pix2pix-turbo checkpoint: expected keys {list(REQUIRED_KEYS)}, "
                              f"found {have}")
    return sd


def import_pix2pix_turbo(pkl: str | os.PathLike, out: str | os.PathLike, base: str | None, prompt: str) -> dict:
    pkl = Path(pkl)
    sd = read_pix2pix_pkl(pkl)
    lora = LoraSpec(rank_unet=int(sd["rank_unet"]), rank_vae=int(sd["rank_vae"]),
                    unet_targets=tuple(sd["unet_lora_target_modules"]),
                    vae_targets=tuple(sd["vae_lora_target_modules"]), vae_scope="encoder+decoder")
    base_model = load_base(base)
    fp = base_model.fingerprint
    config = RestorerConfig(timestep=999, alpha_bar=alpha_bar(base_model.scheduler_config, 999), input_range="0,1")
    model = build_restorer(base_model, lora, config, encode_prompt(base_model.folder, prompt))
    tensors = {canonical_key("unet." + k): v for k, v in sd["state_dict_unet"].items()}
    tensors.update({canonical_key("vae." + k): v for k, v in sd["state_dict_vae"].items()})
    load_trainable_state(model, tensors, f"pix2pix-turbo checkpoint {pkl}")
    info = CheckpointInfo(lora=lora, restorer=config, base=base_model.name, base_fingerprint=fp, prompt=prompt,
                          source=f"pix2pix-turbo import of {pkl.name}", notes=QUIRKS)
    save_checkpoint(out, model, info)
    return {"output": str(out), "rank_unet": lora.rank_unet, "rank_vae": lora.rank_vae, "tensors": len(tensors)}
