"""The base model (SD-Turbo or a compatible diffusers folder): finding it, loading it, recognising it."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from blender_addon.engine_link.weights import looks_like_hub_id

DEFAULT_BASE = "stabilityai/sd-turbo"
CONFIG_DIR = Path(__file__).parents[1] / "configs"
# What the engine needs of a base; the text encoder only for computing a prompt embedding (import, training).
FETCH_PATTERNS = ["model_index.json", "LICENSE*", "README.md", "scheduler/*.json", "tokenizer/*", "text_encoder/config.json",
                  "text_encoder/model.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                  "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]


class BaseModelError(RuntimeError):
    pass


def resolve_base(base: str | os.PathLike | None, role: str = "base model") -> Path:
    """A local diffusers folder, or a hub id found in the Hugging Face cache. Never downloads: see `fetch_base`.

    `role` names what is looked for in errors ("base model", "weights")."""
    base = str(base or DEFAULT_BASE)
    path = Path(base).expanduser()
    if path.exists():
        _check_layout(path, role)
        return path
    if not looks_like_hub_id(base):
        raise BaseModelError(f"{role} folder {base} does not exist (expected a diffusers folder with unet/ and "
                             f"vae/, or a hub id like {DEFAULT_BASE})")
    from huggingface_hub import snapshot_download

    from .fetch import refuse_interrupted

    refuse_interrupted(base, role)  # the hub's lookup may take a half-fetched snapshot for whole
    try:
        folder = Path(snapshot_download(base, allow_patterns=FETCH_PATTERNS, local_files_only=True))
    except Exception as e:  # the hub raises several types for "not cached"; all mean the same to a user
        raise BaseModelError(
            f"{role} {base!r} is not in the Hugging Face cache ({_cache_dir()}): {type(e).__name__}. "
            f"While online, run `python -m engine fetch {base}`, or pass a local diffusers folder") from None
    _check_layout(folder, role)
    return folder


def fetch_base(base: str = DEFAULT_BASE, emit=lambda event: None) -> Path:
    """Download what the engine needs of a hub model into the HF cache, continuing an interrupted download;
    `emit` hears its progress events (weights/fetch.py)."""
    from .fetch import fetch

    if not looks_like_hub_id(base):
        raise BaseModelError(f"{base!r} is not a hub id (org/name, like {DEFAULT_BASE}): fetch downloads from the "
                             f"Hugging Face hub; a local folder needs no fetch")
    return fetch(base, emit)


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _check_layout(folder: Path, role: str = "base model") -> None:
    missing = [s for s in ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json")
               if not (folder / s).is_file()]
    if missing:
        raise BaseModelError(f"{role} folder {folder} is incomplete: missing {', '.join(missing)}")


def read_config(folder: Path, name: str) -> dict:
    with open(folder / name, encoding="utf-8") as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


@dataclass
class BaseModel:
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler_config: dict
    name: str
    folder: Path | None
    fingerprint: str | None


def load_base(base: str | os.PathLike | None) -> BaseModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = resolve_base(base)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as e:
        raise BaseModelError(f"could not load the base model from {folder}: {e}") from None
    return BaseModel(unet, vae, read_config(folder, "scheduler/scheduler_config.json"),
                     str(base or DEFAULT_BASE), folder, fingerprint(unet, vae))


def build_base_from_configs(arch: str = "sd-turbo", device: str = "meta") -> BaseModel:
    """The full-size architecture without weights (meta device): for counting, never for restoring."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = CONFIG_DIR / arch
    if not folder.is_dir():
        known = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir())
        raise BaseModelError(f"unknown --arch {arch!r}; known: {', '.join(known)}")
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(read_config(folder, "unet_config.json"))
        vae = AutoencoderKL.from_config(read_config(folder, "vae_config.json"))
    return BaseModel(unet, vae, read_config(folder, "scheduler_config.json"), arch, None, None)


def fingerprint(unet: torch.nn.Module, vae: torch.nn.Module) -> str:
    """A short hash of a few base weights (as fp16, so fp16 and fp32 copies of one base agree).

    Call it on the untouched base, before LoRA is added or merged."""
    h = hashlib.sha256()
    for t in (unet.conv_in.weight, unet.conv_out.weight, vae.encoder.conv_in.weight, vae.decoder.conv_out.weight):
        h.update(t.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def encode_prompt(folder: Path, prompt: str) -> torch.Tensor:
    """The fixed text conditioning, computed once with the base's own tokenizer and text encoder: (1, 77, D)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise BaseModelError(f"base model {folder} has no usable tokenizer/text_encoder to embed the prompt: {e}") \
            from None
    ids = tokenizer(prompt, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids)[0].float()
